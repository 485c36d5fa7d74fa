/* test_safetensors.c: safetensors round trips (every dtype, metadata, streamed tensors), checksum
 * and header validation errors, atomic saves, and interop with the Python safetensors package. */
#include "testutil.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "safetensors.h"

/* ---- helpers ---- */

static void rand_bytes(uint64_t seed, void *buf, size_t n) {
  unsigned char *p = buf;
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(tu_rand_u64(&seed) >> 56);
}

static void crc_hex(const void *data, size_t n, char out[9]) {
  uLong c = crc32(0L, Z_NULL, 0);
  if (n) c = crc32(c, data, (uInt)n);
  snprintf(out, 9, "%08lx", (unsigned long)c);
}

/* dir + "/" + name, malloc'd. */
static char *join(const char *dir, const char *name) { return elmo_path_join(dir, name); }

/* Writes [u64 len][header][data] as given (no padding, no checks): hand-made files. */
static void write_raw(const char *path, const char *header, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  uint64_t len = strlen(header);
  unsigned char le[8];
  for (int i = 0; i < 8; i++) le[i] = (unsigned char)(len >> (8 * i));
  assert_int_equal(fwrite(le, 1, 8, f), 8);
  assert_int_equal(fwrite(header, 1, len, f), len);
  if (n) assert_int_equal(fwrite(data, 1, n, f), n);
  fclose(f);
}

static void expect_open_fails(const char *path, const char *needle) {
  elmo_st_file *f = (elmo_st_file *)0x1;
  elmo_err err = {0};
  int rc = elmo_st_open(&f, path, &err);
  if (rc != ELMO_EINPUT) fail_msg("%s: rc %d (expected ELMO_EINPUT) for '%s'", path, rc, needle);
  assert_null(f);
  assert_int_equal(err.code, ELMO_EINPUT);
  tu_assert_contains(err.msg, path);
  tu_assert_contains(err.msg, needle);
}

static int count_dir_entries(const char *dir) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
  closedir(d);
  return n;
}

static uint64_t header_len(const char *path) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  unsigned char le[8];
  assert_int_equal(fread(le, 1, 8, f), 8);
  fclose(f);
  uint64_t n = 0;
  for (int i = 0; i < 8; i++) n |= (uint64_t)le[i] << (8 * i);
  return n;
}

/* ---- round trip of every dtype ---- */

typedef struct spec {
  const char *name, *dtype;
  int ndim;
  int64_t shape[3];
  size_t nbytes;
} spec;

static const spec SPECS[] = {
  {"f32", "F32", 2, {3, 5}, 60},          {"bf16", "BF16", 2, {4, 4}, 32},
  {"fp8", "F8_E4M3", 2, {48, 16}, 768},   {"f16", "F16", 1, {7}, 14},
  {"i64", "I64", 1, {7}, 56},             {"i32", "I32", 3, {2, 3, 2}, 48},
  {"u8", "U8", 1, {11}, 11},              {"empty", "F32", 2, {0, 16}, 0},
  {"scalar", "I64", 0, {0}, 8},           {"a.odd_fp8", "F8_E4M3", 1, {3}, 3},
};
#define NSPECS ((int)(sizeof SPECS / sizeof SPECS[0]))

static void check_tensor(const elmo_st_file *f, const spec *s, const void *want) {
  const char *dtype = NULL;
  int ndim = -1;
  int64_t shape[ELMO_ST_MAX_DIMS];
  const void *data = NULL;
  size_t nbytes = 1234;
  if (!elmo_st_find(f, s->name, &dtype, &ndim, shape, &data, &nbytes)) fail_msg("%s missing", s->name);
  assert_string_equal(dtype, s->dtype);
  assert_int_equal(ndim, s->ndim);
  for (int d = 0; d < ndim; d++) assert_int_equal(shape[d], s->shape[d]);
  assert_int_equal(nbytes, s->nbytes);
  if (nbytes) assert_memory_equal(data, want, nbytes);
  assert_int_equal((uintptr_t)data % elmo_st_dtype_size(dtype), 0); /* aligned to element size */
  char key[64], hex[9];
  snprintf(key, sizeof key, "checksum.%s", s->name);
  crc_hex(want, nbytes, hex);
  assert_non_null(elmo_st_meta(f, key));
  assert_string_equal(elmo_st_meta(f, key), hex);
}

static void test_roundtrip_dtypes(void **state) {
  char *dir = tu_temp_dir(), *path = join(dir, "all.safetensors");
  void *bufs[NSPECS];
  size_t total = 0;
  elmo_st_writer *w = elmo_st_writer_new();
  for (int i = NSPECS - 1; i >= 0; i--) {   /* added out of name order on purpose */
    bufs[i] = malloc(SPECS[i].nbytes + 1);
    rand_bytes(100 + (uint64_t)i, bufs[i], SPECS[i].nbytes);
    elmo_st_add(w, SPECS[i].name, SPECS[i].dtype, SPECS[i].ndim, SPECS[i].shape, bufs[i], SPECS[i].nbytes);
    total += SPECS[i].nbytes;
  }
  elmo_err err = {0};
  if (elmo_st_save(w, path, &err)) fail_msg("%s", err.msg);
  elmo_st_writer_free(&w);
  assert_null(w);

  uint64_t hlen = header_len(path);
  assert_int_equal(hlen % 8, 0);
  assert_int_equal(tu_file_size(path), (long)(8 + hlen + total));
  elmo_st_file *f = NULL;
  if (elmo_st_open(&f, path, &err)) fail_msg("%s", err.msg);
  assert_string_equal(elmo_st_path(f), path);
  assert_int_equal(elmo_st_count(f), NSPECS);
  for (int i = 1; i < NSPECS; i++) assert_true(strcmp(elmo_st_name(f, i - 1), elmo_st_name(f, i)) < 0);
  assert_null(elmo_st_name(f, NSPECS));
  for (int i = 0; i < NSPECS; i++) check_tensor(f, &SPECS[i], bufs[i]);
  assert_int_equal(elmo_st_find(f, "nope", NULL, NULL, NULL, NULL, NULL), 0);

  const void *data = NULL;
  int64_t good[2] = {48, 16}, bad[2] = {16, 48};
  assert_int_equal(elmo_st_expect(f, "fp8", "F8_E4M3", 2, good, &data, &err), ELMO_OK);
  assert_memory_equal(data, bufs[2], 768);
  assert_int_equal(elmo_st_expect(f, "fp8", "F8_E4M3", 2, bad, &data, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, "'fp8' has shape [48, 16] (expected [16, 48])");
  assert_int_equal(elmo_st_expect(f, "fp8", "BF16", 2, good, &data, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, "dtype F8_E4M3 (expected BF16)");
  assert_int_equal(elmo_st_expect(f, "nope", "BF16", 0, NULL, &data, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, "'nope' missing");
  assert_int_equal(elmo_st_expect(f, "bf16", "BF16", 0, NULL, NULL, &err), ELMO_OK); /* any shape */
  elmo_st_close(&f);
  assert_null(f);
  for (int i = 0; i < NSPECS; i++) free(bufs[i]);
  elmo_rmtree(dir);
  free(path);
  free(dir);
}

/* ---- metadata ---- */

static void test_metadata_roundtrip(void **state) {
  char *dir = tu_temp_dir(), *path = join(dir, "meta.safetensors");
  elmo_st_writer *w = elmo_st_writer_new();
  elmo_st_add_meta(w, "labels", "131073");
  elmo_st_add_meta(w, "odd \"key\"", "tab\tnewline\nquote\" utf8 \xc3\xbc");
  elmo_st_add_meta(w, "labels", "42");       /* replaces */
  elmo_st_add_meta(w, "empty", "");
  elmo_err err = {0};
  if (elmo_st_save(w, path, &err)) fail_msg("%s", err.msg);   /* no tensors: metadata only */
  elmo_st_writer_free(&w);

  elmo_st_file *f = NULL;
  if (elmo_st_open(&f, path, &err)) fail_msg("%s", err.msg);
  assert_int_equal(elmo_st_count(f), 0);
  assert_int_equal(elmo_st_meta_count(f), 3);
  assert_string_equal(elmo_st_meta_key(f, 0), "labels");
  assert_string_equal(elmo_st_meta_key(f, 1), "odd \"key\"");
  assert_string_equal(elmo_st_meta_key(f, 2), "empty");
  assert_null(elmo_st_meta_key(f, 3));
  assert_string_equal(elmo_st_meta(f, "labels"), "42");
  assert_string_equal(elmo_st_meta(f, "odd \"key\""), "tab\tnewline\nquote\" utf8 \xc3\xbc");
  assert_string_equal(elmo_st_meta(f, "empty"), "");
  assert_null(elmo_st_meta(f, "missing"));
  elmo_st_close(&f);
  elmo_rmtree(dir);
  free(path);
  free(dir);
}

/* ---- streamed tensors ---- */

typedef struct stream_ctx {
  size_t next;        /* offset expected in the next call */
  size_t max_n;       /* largest chunk requested */
  int calls;
  int fail_call;      /* call number that fails (0 = never) */
} stream_ctx;

static unsigned char stream_byte(size_t pos) { return (unsigned char)((pos * 131u) ^ (pos >> 7)); }

static int stream_fill(void *vctx, size_t offset, void *buf, size_t n, elmo_err *err) {
  stream_ctx *c = vctx;
  c->calls++;
  if (offset != c->next) return elmo_fail(err, ELMO_ERUNTIME, "offset %zu, expected %zu", offset, c->next);
  if (c->calls == c->fail_call) return elmo_fail(err, ELMO_ERUNTIME, "device copy failed");
  unsigned char *p = buf;
  for (size_t i = 0; i < n; i++) p[i] = stream_byte(offset + i);
  c->next = offset + n;
  if (n > c->max_n) c->max_n = n;
  return ELMO_OK;
}

static void test_stream_add(void **state) {
  char *dir = tu_temp_dir(), *path = join(dir, "stream.safetensors");
  const int64_t shape[2] = {37, 101};
  const size_t nbytes = 37 * 101 * 2;
  unsigned char *copy = malloc(nbytes);
  for (size_t i = 0; i < nbytes; i++) copy[i] = stream_byte(i);
  stream_ctx ctx = {0};
  elmo_st_writer *w = elmo_st_writer_new();
  elmo_st_set_chunk_bytes(w, 1000);
  elmo_st_add_stream(w, "classifier.weight", "BF16", 2, shape, nbytes, stream_fill, &ctx);
  elmo_st_add(w, "copy", "BF16", 2, shape, copy, nbytes);
  elmo_err err = {0};
  if (elmo_st_save(w, path, &err)) fail_msg("%s", err.msg);
  elmo_st_writer_free(&w);
  assert_int_equal(ctx.calls, (int)((nbytes + 999) / 1000));
  assert_int_equal(ctx.max_n, 1000);
  assert_int_equal(ctx.next, nbytes);

  elmo_st_file *f = NULL;
  if (elmo_st_open(&f, path, &err)) fail_msg("%s", err.msg);
  const void *a = NULL, *b = NULL;
  assert_int_equal(elmo_st_expect(f, "classifier.weight", "BF16", 2, shape, &a, &err), ELMO_OK);
  assert_int_equal(elmo_st_expect(f, "copy", "BF16", 2, shape, &b, &err), ELMO_OK);
  assert_memory_equal(a, copy, nbytes);
  assert_memory_equal(b, copy, nbytes);
  char hex[9];
  crc_hex(copy, nbytes, hex);
  assert_string_equal(elmo_st_meta(f, "checksum.classifier.weight"), hex);
  elmo_st_close(&f);
  free(copy);
  elmo_rmtree(dir);
  free(path);
  free(dir);
}

/* A failing source leaves the previous file untouched and no temp file behind. */
static void test_stream_failure_is_atomic(void **state) {
  char *dir = tu_temp_dir(), *path = join(dir, "model.safetensors");
  const int64_t old_shape[1] = {4}, shape[1] = {5000};
  const float old[4] = {1, 2, 3, 4};
  elmo_err err = {0};
  elmo_st_writer *w = elmo_st_writer_new();
  elmo_st_add(w, "old", "F32", 1, old_shape, old, sizeof old);
  if (elmo_st_save(w, path, &err)) fail_msg("%s", err.msg);
  elmo_st_writer_free(&w);

  stream_ctx ctx = {.fail_call = 2};
  w = elmo_st_writer_new();
  elmo_st_set_chunk_bytes(w, 1024);
  elmo_st_add_stream(w, "w", "U8", 1, shape, 5000, stream_fill, &ctx);
  assert_int_equal(elmo_st_save(w, path, &err), ELMO_ERUNTIME);
  tu_assert_contains(err.msg, "device copy failed");
  tu_assert_contains(err.msg, "'w'");
  tu_assert_contains(err.msg, path);
  elmo_st_writer_free(&w);
  assert_int_equal(count_dir_entries(dir), 1);

  elmo_st_file *f = NULL;
  if (elmo_st_open(&f, path, &err)) fail_msg("%s", err.msg);
  assert_int_equal(elmo_st_count(f), 1);
  assert_int_equal(elmo_st_expect(f, "old", "F32", 1, old_shape, NULL, &err), ELMO_OK);
  elmo_st_close(&f);
  elmo_rmtree(dir);
  free(path);
  free(dir);
}

static void test_save_into_missing_dir(void **state) {
  char *dir = tu_temp_dir(), *path = join(dir, "no/such/dir/x.safetensors");
  const int64_t shape[1] = {2};
  const int32_t v[2] = {1, 2};
  elmo_st_writer *w = elmo_st_writer_new();
  elmo_st_add(w, "v", "I32", 1, shape, v, sizeof v);
  elmo_err err = {0};
  assert_int_not_equal(elmo_st_save(w, path, &err), ELMO_OK);
  assert_int_not_equal(err.code, ELMO_OK);
  tu_assert_contains(err.msg, path);
  assert_false(elmo_file_exists(path));
  assert_int_equal(count_dir_entries(dir), 0);
  elmo_st_writer_free(&w);
  elmo_rmtree(dir);
  free(path);
  free(dir);
}

/* ---- writer input errors ---- */

static void expect_save_fails(elmo_st_writer *w, const char *dir, const char *needle) {
  char *path = join(dir, "bad.safetensors");
  elmo_err err = {0};
  assert_int_equal(elmo_st_save(w, path, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, path);
  tu_assert_contains(err.msg, needle);
  assert_false(elmo_file_exists(path));
  elmo_st_writer_free(&w);
  free(path);
}

static void test_writer_rejects_bad_input(void **state) {
  char *dir = tu_temp_dir();
  const int64_t s3[1] = {3}, s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  const float v[3] = {0};
  elmo_st_writer *w = elmo_st_writer_new();
  elmo_st_add(w, "x", "F7", 1, s3, v, sizeof v);
  expect_save_fails(w, dir, "'x': unknown dtype 'F7'");
  w = elmo_st_writer_new();
  elmo_st_add(w, "x", "F32", 1, s3, v, 8);
  expect_save_fails(w, dir, "'x': 8 bytes given for F32 [3] (expected 12)");
  w = elmo_st_writer_new();
  elmo_st_add(w, "x", "F32", 1, s3, v, 12);
  elmo_st_add(w, "x", "F32", 1, s3, v, 12);
  expect_save_fails(w, dir, "'x' added twice");
  w = elmo_st_writer_new();
  elmo_st_add(w, "__metadata__", "F32", 1, s3, v, 12);
  expect_save_fails(w, dir, "reserved");
  w = elmo_st_writer_new();
  elmo_st_add_meta(w, "checksum.x", "00000000");
  expect_save_fails(w, dir, "'checksum.x' is reserved");
  w = elmo_st_writer_new();
  elmo_st_add(w, "deep", "U8", 9, s9, v, 1);
  expect_save_fails(w, dir, "'deep': 9 dims");
  assert_int_equal(count_dir_entries(dir), 0);
  elmo_rmtree(dir);
  free(dir);
}

/* ---- reader validation ---- */

static void test_corrupted_byte_detected(void **state) {
  char *dir = tu_temp_dir(), *path = join(dir, "c.safetensors");
  unsigned char fp8[48 * 16];
  float f32[6];
  rand_bytes(7, fp8, sizeof fp8);
  for (int i = 0; i < 6; i++) f32[i] = (float)i * 0.5f;
  const int64_t s1[2] = {48, 16}, s2[1] = {6};
  elmo_st_writer *w = elmo_st_writer_new();
  elmo_st_add(w, "classifier.weight", "F8_E4M3", 2, s1, fp8, sizeof fp8);
  elmo_st_add(w, "bias", "F32", 1, s2, f32, sizeof f32);
  elmo_err err = {0};
  if (elmo_st_save(w, path, &err)) fail_msg("%s", err.msg);
  elmo_st_writer_free(&w);

  /* the F8 tensor is laid out last (smallest element size): flip a bit in its last byte */
  FILE *fp = fopen(path, "r+b");
  assert_non_null(fp);
  fseek(fp, -1, SEEK_END);
  int c = fgetc(fp);
  fseek(fp, -1, SEEK_END);
  fputc(c ^ 0x10, fp);
  fclose(fp);
  expect_open_fails(path, "tensor 'classifier.weight' checksum mismatch (file corrupted?)");

  elmo_st_file *f = NULL;
  if (elmo_st_open_unverified(&f, path, &err)) fail_msg("%s", err.msg);
  assert_int_equal(elmo_st_verify(f, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, "'classifier.weight' checksum mismatch");
  elmo_st_close(&f);
  elmo_rmtree(dir);
  free(path);
  free(dir);
}

static void test_truncated_file_rejected(void **state) {
  char *dir = tu_temp_dir(), *path = join(dir, "t.safetensors");
  unsigned char bytes[100];
  rand_bytes(3, bytes, sizeof bytes);
  const int64_t shape[2] = {10, 10};
  elmo_st_writer *w = elmo_st_writer_new();
  elmo_st_add(w, "u", "U8", 2, shape, bytes, sizeof bytes);
  elmo_err err = {0};
  if (elmo_st_save(w, path, &err)) fail_msg("%s", err.msg);
  elmo_st_writer_free(&w);
  long size = tu_file_size(path);
  assert_int_equal(truncate(path, size - 1), 0);
  expect_open_fails(path, "tensor 'u': data_offsets [0, 100] outside the data buffer of 99 bytes");
  assert_int_equal(truncate(path, 40), 0);   /* inside the header */
  expect_open_fails(path, "exceeds");
  assert_int_equal(truncate(path, 5), 0);
  expect_open_fails(path, "too short");
  char *missing = join(dir, "missing.safetensors");
  expect_open_fails(missing, "cannot open");
  free(missing);
  elmo_rmtree(dir);
  free(path);
  free(dir);
}

typedef struct bad_case {
  const char *header;
  size_t data_bytes;
  const char *needle;
} bad_case;

static const bad_case BAD[] = {
  {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "outside the data buffer"},
  {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
   "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlaps"},
  {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
   "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12, "4 unused bytes before tensor 'b'"},
  {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, "4 bytes after the last tensor"},
  {"{\"a\":{\"dtype\":\"F7\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype 'F7'"},
  {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "span 8 bytes but F32 [3] needs 12"},
  {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "shape[0] is not a non-negative"},
  {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0.5,4]}}", 4, "data_offsets must be"},
  {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, "data_offsets must be"},
  {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "shape missing"},
  {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
   "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "'a' appears twice"},
  {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]", 4, "not valid JSON"},
  {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x", 4, "unexpected bytes"},
  {"[1, 2]", 0, "invalid header"},
  {"{\"__metadata__\":{\"n\":3}}", 0, "value of 'n' is not a string"},
  {"{\"__metadata__\":{\"checksum.b\":\"00000000\"},"
   "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "'checksum.b' names no tensor"},
  {"{\"__metadata__\":{\"checksum.a\":\"xyz\"},"
   "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "(expected 8 hex digits)"},
  {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1, "9 dims"},
};

static void test_bad_headers_rejected(void **state) {
  char *dir = tu_temp_dir(), *path = join(dir, "bad.safetensors");
  unsigned char zeros[64] = {0};
  for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
    write_raw(path, BAD[i].header, zeros, BAD[i].data_bytes);
    expect_open_fails(path, BAD[i].needle);
  }
  /* header length 0 and one far beyond the file */
  FILE *fp = fopen(path, "wb");
  assert_non_null(fp);
  fwrite("\0\0\0\0\0\0\0\0{}      ", 1, 16, fp);
  fclose(fp);
  expect_open_fails(path, "invalid header (length 0");
  fp = fopen(path, "wb");
  fwrite("\0\0\0\0\0\1\0\0{}      ", 1, 16, fp);
  fclose(fp);
  expect_open_fails(path, "header length 1099511627776 exceeds the 8 bytes after it");
  elmo_rmtree(dir);
  free(path);
  free(dir);
}

/* Files from other writers: unpadded header, no checksums, unknown keys, null metadata. */
static void test_foreign_file_accepted(void **state) {
  char *dir = tu_temp_dir(), *path = join(dir, "hf.safetensors");
  const float vals[3] = {1.5f, -2.0f, 0.25f};
  write_raw(path, "{\"__metadata__\":null,\"w\":{\"dtype\":\"F32\",\"shape\":[3],"
            "\"data_offsets\":[0,12],\"extra\":1}}", vals, sizeof vals);
  elmo_st_file *f = NULL;
  elmo_err err = {0};
  if (elmo_st_open(&f, path, &err)) fail_msg("%s", err.msg);
  const void *data = NULL;
  const int64_t shape[1] = {3};
  assert_int_equal(elmo_st_expect(f, "w", "F32", 1, shape, &data, &err), ELMO_OK);
  assert_memory_equal(data, vals, sizeof vals);
  assert_int_equal(elmo_st_meta_count(f), 0);
  elmo_st_close(&f);
  elmo_rmtree(dir);
  free(path);
  free(dir);
}

/* ---- interop with the Python safetensors package ---- */

static int run_shell(const char *cmd) {
  int st = system(cmd);
  return st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
}

static void check_python_reads_ours(const char *script, const char *dir) {
  char *path = join(dir, "ours.safetensors");
  unsigned char fp8[48 * 16], bf16[5 * 7 * 2];
  float f32[12];
  const int64_t s_fp8[2] = {48, 16}, s_bf16[2] = {5, 7}, s_f32[2] = {4, 3}, s_empty[1] = {0};
  const int64_t scalar = -12345678901234LL;
  rand_bytes(11, fp8, sizeof fp8);
  rand_bytes(12, bf16, sizeof bf16);
  for (int i = 0; i < 12; i++) f32[i] = (float)i / 3.0f - 1.0f;
  elmo_st_writer *w = elmo_st_writer_new();
  elmo_st_add(w, "classifier.weight", "F8_E4M3", 2, s_fp8, fp8, sizeof fp8);
  elmo_st_add(w, "encoder.bf16", "BF16", 2, s_bf16, bf16, sizeof bf16);
  elmo_st_add(w, "f32", "F32", 2, s_f32, f32, sizeof f32);
  elmo_st_add(w, "empty", "U8", 1, s_empty, NULL, 0);
  elmo_st_add(w, "scalar", "I64", 0, NULL, &scalar, sizeof scalar);
  elmo_st_add_meta(w, "labels", "48");
  elmo_err err = {0};
  if (elmo_st_save(w, path, &err)) fail_msg("%s", err.msg);
  elmo_st_writer_free(&w);

  char cmd[4096];
  snprintf(cmd, sizeof cmd, "python3 '%s' read '%s' classifier.weight:F8_E4M3:48x16 "
           "encoder.bf16:BF16:5x7 f32:F32:4x3 empty:U8:0 scalar:I64:-", script, path);
  assert_int_equal(run_shell(cmd), 0);
  /* the check can fail: a wrong dtype or shape expectation is reported */
  snprintf(cmd, sizeof cmd, "python3 '%s' read '%s' classifier.weight:BF16:48x16 2>/dev/null",
           script, path);
  assert_int_equal(run_shell(cmd), 1);
  snprintf(cmd, sizeof cmd, "python3 '%s' read '%s' classifier.weight:F8_E4M3:16x48 2>/dev/null",
           script, path);
  assert_int_equal(run_shell(cmd), 1);
  free(path);
}

/* Values written by safetensors_check.py write (see its cmd_write). */
static void check_we_read_python(const char *script, const char *dir) {
  char *path = join(dir, "theirs.safetensors"), cmd[4096];
  snprintf(cmd, sizeof cmd, "python3 '%s' write '%s'", script, path);
  assert_int_equal(run_shell(cmd), 0);
  elmo_st_file *f = NULL;
  elmo_err err = {0};
  if (elmo_st_open(&f, path, &err)) fail_msg("%s", err.msg);
  assert_int_equal(elmo_st_count(f), 5);
  assert_string_equal(elmo_st_meta(f, "source"), "python");
  const void *p = NULL;
  const int64_t sa[2] = {3, 4}, sb[1] = {5}, sc[1] = {7}, sd[2] = {2, 3}, se[2] = {0, 4};
  assert_int_equal(elmo_st_expect(f, "a", "F32", 2, sa, &p, &err), ELMO_OK);
  for (int i = 0; i < 12; i++) assert_true(((const float *)p)[i] == (float)i / 4.0f);
  assert_int_equal(elmo_st_expect(f, "b", "I64", 1, sb, &p, &err), ELMO_OK);
  for (int i = 0; i < 5; i++) assert_int_equal(((const int64_t *)p)[i], (int64_t)(i - 2) * 1000000000000LL);
  assert_int_equal(elmo_st_expect(f, "c", "U8", 1, sc, &p, &err), ELMO_OK);
  for (int i = 0; i < 7; i++) assert_int_equal(((const uint8_t *)p)[i], (250 + i) % 256);
  assert_int_equal(elmo_st_expect(f, "d", "F16", 2, sd, &p, &err), ELMO_OK);
  assert_int_equal(((const uint16_t *)p)[0], 0xC100);   /* -2.5 in binary16 */
  assert_int_equal(((const uint16_t *)p)[5], 0x4100);   /*  2.5 */
  assert_int_equal(elmo_st_expect(f, "e", "I32", 2, se, &p, &err), ELMO_OK);
  elmo_st_close(&f);
  free(path);
}

static void test_python_interop(void **state) {
  if (run_shell("python3 -c 'import safetensors, numpy' >/dev/null 2>&1") != 0) {
    printf("# skipping Python interop: python3 with the 'safetensors' and 'numpy' packages is not "
           "available (pip install safetensors numpy)\n");
    skip();
  }
  const char *root = getenv("ELMO_SOURCE_ROOT");
  if (!root) fail_msg("ELMO_SOURCE_ROOT is not set (run through meson test)");
  char *script = join(root, "tests/safetensors_check.py"), *dir = tu_temp_dir();
  assert_true(elmo_file_exists(script));
  check_python_reads_ours(script, dir);
  check_we_read_python(script, dir);
  elmo_rmtree(dir);
  free(dir);
  free(script);
}

/* The threaded CRC equals zlib's serial pass: empty, small, and buffers cut into parts (sizes not multiples
 * of anything, a running CRC carried in), on random bytes. */
static void test_crc_parallel_matches_zlib(void **state) {
  (void)state;
  const size_t sizes[] = {0, 1, 4095, ((size_t)32 << 20) * 2 + 13, ((size_t)200 << 20) + 7};
  const size_t big = sizes[4];
  unsigned char *b = malloc(big);
  assert_non_null(b);
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (size_t i = 0; i < big; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    b[i] = (unsigned char)x;
  }
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    for (int carry = 0; carry < 2; carry++) {
      const size_t off = carry ? 3 : 0; /* carry: the CRC of 3 bytes before continues */
      const size_t n = sizes[k] > big - off ? big - off : sizes[k];
      uLong want = crc32(0L, Z_NULL, 0);
      if (off) want = crc32(want, b, (uInt)off);
      const uLong start = want;
      for (size_t o = 0; o < n;) {
        const size_t m = n - o < ((size_t)1 << 30) ? n - o : ((size_t)1 << 30);
        want = crc32(want, b + off + o, (uInt)m);
        o += m;
      }
      const uint32_t got = elmo_st_crc32((uint32_t)start, b + off, n);
      if (got != (uint32_t)want)
        fail_msg("%zu bytes (carry %d): threaded CRC %08x, zlib %08lx", n, carry, (unsigned)got, want);
    }
  }
  free(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_roundtrip_dtypes),
    cmocka_unit_test(test_metadata_roundtrip),
    cmocka_unit_test(test_stream_add),
    cmocka_unit_test(test_stream_failure_is_atomic),
    cmocka_unit_test(test_save_into_missing_dir),
    cmocka_unit_test(test_writer_rejects_bad_input),
    cmocka_unit_test(test_corrupted_byte_detected),
    cmocka_unit_test(test_truncated_file_rejected),
    cmocka_unit_test(test_bad_headers_rejected),
    cmocka_unit_test(test_foreign_file_accepted),
    cmocka_unit_test(test_python_interop),
    cmocka_unit_test(test_crc_parallel_matches_zlib),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
