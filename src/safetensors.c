/* safetensors.c: safetensors reader (strict header validation, read-only mmap, CRC32 checks) and
 * writer (atomic, streaming sources, CRC32 per tensor in the metadata). Format: safetensors.h. */
#include "safetensors.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#include <zlib.h>

#define ST_META_KEY "__metadata__"
#define ST_CHECKSUM_PREFIX "checksum."
#define ST_MAX_HEADER ((uint64_t)100000000)   /* same bound as the reference implementation */
#define ST_MAX_EXACT ((double)(1ull << 53))    /* JSON numbers are doubles: exact up to 2^53 */
#define ST_DEFAULT_CHUNK ((size_t)64 << 20)
#define ST_CRC_CHUNK ((size_t)1 << 30)         /* zlib's crc32 takes a 32-bit length */

/* ---- dtypes ---- */

typedef struct st_dtype {
  const char *name;
  size_t size;
} st_dtype;

static const st_dtype st_dtypes[] = {
  {"F64", 8}, {"I64", 8}, {"U64", 8}, {"F32", 4}, {"I32", 4}, {"U32", 4},
  {"F16", 2}, {"BF16", 2}, {"I16", 2}, {"U16", 2},
  {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I8", 1}, {"U8", 1}, {"BOOL", 1},
};

size_t elmo_st_dtype_size(const char *dtype) {
  if (!dtype) return 0;
  for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
    if (!strcmp(st_dtypes[i].name, dtype)) return st_dtypes[i].size;
  return 0;
}

/* nbytes of a tensor = prod(shape) * elem; 0 on overflow or negative dims (sets *ok = 0). */
static size_t st_shape_bytes(int ndim, const int64_t *shape, size_t elem, int *ok) {
  uint64_t n = elem;
  *ok = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) { *ok = 0; return 0; }
    uint64_t d = (uint64_t)shape[i];
    if (d && n > UINT64_MAX / d) { *ok = 0; return 0; }
    n *= d;
  }
  if (n > (uint64_t)SIZE_MAX) { *ok = 0; return 0; }
  return (size_t)n;
}

static void st_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
  size_t k = (size_t)snprintf(buf, cap, "[");
  for (int i = 0; i < ndim && k < cap; i++)
    k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
  if (k < cap) snprintf(buf + k, cap - k, "]");
}

static uint32_t st_crc_serial(uint32_t crc, const unsigned char *p, size_t n) {
  while (n > 0) {
    size_t m = n < ST_CRC_CHUNK ? n : ST_CRC_CHUNK;
    crc = (uint32_t)crc32(crc, p, (uInt)m);
    p += m;
    n -= m;
  }
  return crc;
}

enum { ST_CRC_MAX_THREADS = 16 };
#define ST_CRC_PART ((size_t)32 << 20) /* bytes a thread at least */

typedef struct st_crc_part {
  const unsigned char *p;
  size_t n;
  uint32_t crc;
} st_crc_part;

static void *st_crc_part_run(void *arg) {
  st_crc_part *c = arg;
  c->crc = st_crc_serial((uint32_t)crc32(0L, Z_NULL, 0), c->p, c->n);
  return NULL;
}

/* CRC32 (zlib's) of n bytes continuing crc. A large buffer is cut into contiguous parts, one a thread (up to
 * the online cores, 16, and one per 32 MB), each part's CRC taken from scratch and the parts joined in order
 * by crc32_combine: the same value as one serial pass. A checkpoint's weights (38 GB at 5 x 10^7 labels) took
 * ~15 s of zlib's ~2-3 GB/s on one core, on save and again on load. */
uint32_t elmo_st_crc32(uint32_t crc, const void *data, size_t n) {
  const unsigned char *p = data;
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  size_t T = n / ST_CRC_PART;
  if (cores > 0 && T > (size_t)cores) T = (size_t)cores;
  if (T > ST_CRC_MAX_THREADS) T = ST_CRC_MAX_THREADS;
  if (T < 2) return st_crc_serial(crc, p, n);
  st_crc_part part[ST_CRC_MAX_THREADS];
  pthread_t th[ST_CRC_MAX_THREADS];
  int started[ST_CRC_MAX_THREADS] = {0};
  const size_t per = n / T;
  for (size_t i = 0; i < T; i++) {
    part[i].p = p + i * per;
    part[i].n = i + 1 < T ? per : n - i * per;
    /* part 0 runs on this thread; a part whose thread cannot start runs here too */
    if (i > 0) started[i] = pthread_create(&th[i], NULL, st_crc_part_run, &part[i]) == 0;
  }
  st_crc_part_run(&part[0]);
  for (size_t i = 1; i < T; i++) {
    if (started[i]) pthread_join(th[i], NULL);
    else st_crc_part_run(&part[i]);
  }
  for (size_t i = 0; i < T; i++) crc = (uint32_t)crc32_combine(crc, part[i].crc, (z_off_t)part[i].n);
  return crc;
}

/* ---- writer ---- */

typedef struct st_kv {
  char *key, *val;
} st_kv;

typedef struct st_wtensor {
  char *name;
  char *dtype;
  int ndim;
  int64_t shape[ELMO_ST_MAX_DIMS];
  const void *data;       /* [nbytes] borrowed, or NULL when streamed */
  elmo_st_fill_fn fill;   /* streaming source, or NULL */
  void *ctx;
  size_t nbytes;
  size_t begin;           /* offset in the data buffer, set by the layout */
  uint32_t crc;
} st_wtensor;

struct elmo_st_writer {
  st_wtensor *t;          /* [n] in the order added */
  size_t n, cap;
  st_kv *meta;            /* [n_meta] in the order added */
  size_t n_meta, cap_meta;
  size_t chunk;
  int bad_ndim;           /* an add had ndim outside 0..ELMO_ST_MAX_DIMS: name reported at save */
  char *bad_name;
};

elmo_st_writer *elmo_st_writer_new(void) {
  elmo_st_writer *w = elmo_calloc(1, sizeof *w);
  w->chunk = ST_DEFAULT_CHUNK;
  return w;
}

void elmo_st_set_chunk_bytes(elmo_st_writer *w, size_t bytes) { w->chunk = bytes ? bytes : 1; }

static st_wtensor *st_push(elmo_st_writer *w, const char *name, const char *dtype, int ndim,
                           const int64_t *shape, size_t nbytes) {
  if (ndim < 0 || ndim > ELMO_ST_MAX_DIMS) {
    if (!w->bad_name) w->bad_name = elmo_strdup(name ? name : "");
    w->bad_ndim = ndim;
    return NULL;
  }
  elmo_grow((void **)&w->t, &w->cap, w->n + 1, sizeof *w->t);
  st_wtensor *t = &w->t[w->n++];
  memset(t, 0, sizeof *t);
  t->name = elmo_strdup(name ? name : "");
  t->dtype = elmo_strdup(dtype ? dtype : "");
  t->ndim = ndim;
  for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
  t->nbytes = nbytes;
  return t;
}

void elmo_st_add(elmo_st_writer *w, const char *name, const char *dtype, int ndim,
                 const int64_t *shape, const void *data, size_t nbytes) {
  st_wtensor *t = st_push(w, name, dtype, ndim, shape, nbytes);
  if (t) t->data = data;
}

void elmo_st_add_stream(elmo_st_writer *w, const char *name, const char *dtype, int ndim,
                        const int64_t *shape, size_t nbytes, elmo_st_fill_fn fill, void *ctx) {
  st_wtensor *t = st_push(w, name, dtype, ndim, shape, nbytes);
  if (t) { t->fill = fill; t->ctx = ctx; }
}

void elmo_st_add_meta(elmo_st_writer *w, const char *key, const char *value) {
  for (size_t i = 0; i < w->n_meta; i++) {
    if (!strcmp(w->meta[i].key, key)) {
      free(w->meta[i].val);
      w->meta[i].val = elmo_strdup(value);
      return;
    }
  }
  elmo_grow((void **)&w->meta, &w->cap_meta, w->n_meta + 1, sizeof *w->meta);
  w->meta[w->n_meta].key = elmo_strdup(key);
  w->meta[w->n_meta++].val = elmo_strdup(value);
}

void elmo_st_writer_free(elmo_st_writer **pw) {
  elmo_st_writer *w = *pw;
  if (!w) return;
  for (size_t i = 0; i < w->n; i++) { free(w->t[i].name); free(w->t[i].dtype); }
  for (size_t i = 0; i < w->n_meta; i++) { free(w->meta[i].key); free(w->meta[i].val); }
  free(w->t);
  free(w->meta);
  free(w->bad_name);
  free(w);
  *pw = NULL;
}

/* Checks one tensor as added: name, dtype, shape, byte count, data source. */
static int st_check_wtensor(const st_wtensor *t, const char *path, elmo_err *err) {
  if (!t->name[0] || !strcmp(t->name, ST_META_KEY))
    return elmo_fail(err, ELMO_EINPUT, "%s: tensor name '%s' is reserved or empty (expected a "
                     "non-empty name other than %s)", path, t->name, ST_META_KEY);
  size_t elem = elmo_st_dtype_size(t->dtype);
  if (!elem)
    return elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s': unknown dtype '%s' (expected F32, BF16, "
                     "F8_E4M3, F16, I64, I32, U8, ...)", path, t->name, t->dtype);
  int ok;
  size_t want = st_shape_bytes(t->ndim, t->shape, elem, &ok);
  char shp[256];
  st_shape_str(shp, sizeof shp, t->ndim, t->shape);
  if (!ok)
    return elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s': invalid shape %s (expected "
                     "non-negative dims)", path, t->name, shp);
  if (want != t->nbytes)
    return elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s': %zu bytes given for %s %s (expected %zu)",
                     path, t->name, t->nbytes, t->dtype, shp, want);
  if (!t->fill && !t->data && t->nbytes)
    return elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s': no data", path, t->name);
  return ELMO_OK;
}

static int st_cmp_wname(const void *a, const void *b) {
  const st_wtensor *x = *(const st_wtensor *const *)a, *y = *(const st_wtensor *const *)b;
  return strcmp(x->name, y->name);
}

/* Layout order: element size descending (keeps each tensor aligned), then name. */
static int st_cmp_wlayout(const void *a, const void *b) {
  const st_wtensor *x = *(const st_wtensor *const *)a, *y = *(const st_wtensor *const *)b;
  size_t sx = elmo_st_dtype_size(x->dtype), sy = elmo_st_dtype_size(y->dtype);
  if (sx != sy) return sx > sy ? -1 : 1;
  return strcmp(x->name, y->name);
}

/* Validates everything added; fills order[n] with the layout order and sets offsets. */
static int st_plan(elmo_st_writer *w, st_wtensor **order, const char *path, elmo_err *err) {
  if (w->bad_name)
    return elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s': %d dims (expected 0..%d)", path,
                     w->bad_name, w->bad_ndim, ELMO_ST_MAX_DIMS);
  for (size_t i = 0; i < w->n; i++) {
    int rc = st_check_wtensor(&w->t[i], path, err);
    if (rc) return rc;
    order[i] = &w->t[i];
  }
  for (size_t i = 0; i < w->n_meta; i++)
    if (!strncmp(w->meta[i].key, ST_CHECKSUM_PREFIX, strlen(ST_CHECKSUM_PREFIX)))
      return elmo_fail(err, ELMO_EINPUT, "%s: metadata key '%s' is reserved for checksums",
                       path, w->meta[i].key);
  qsort(order, w->n, sizeof *order, st_cmp_wname);
  for (size_t i = 1; i < w->n; i++)
    if (!strcmp(order[i - 1]->name, order[i]->name))
      return elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s' added twice (expected unique names)",
                       path, order[i]->name);
  qsort(order, w->n, sizeof *order, st_cmp_wlayout);
  size_t off = 0;
  for (size_t i = 0; i < w->n; i++) {
    order[i]->begin = off;
    off += order[i]->nbytes;
  }
  return ELMO_OK;
}

static cJSON *st_json_int(uint64_t v) {
  char buf[32];
  snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
  return cJSON_CreateRaw(buf);
}

static cJSON *st_json_tensor(const st_wtensor *t) {
  cJSON *o = cJSON_CreateObject(), *shape = cJSON_CreateArray(), *offs = cJSON_CreateArray();
  cJSON_AddStringToObject(o, "dtype", t->dtype);
  for (int i = 0; i < t->ndim; i++) cJSON_AddItemToArray(shape, st_json_int((uint64_t)t->shape[i]));
  cJSON_AddItemToObject(o, "shape", shape);
  cJSON_AddItemToArray(offs, st_json_int(t->begin));
  cJSON_AddItemToArray(offs, st_json_int(t->begin + t->nbytes));
  cJSON_AddItemToObject(o, "data_offsets", offs);
  return o;
}

/* Header JSON padded with spaces to a multiple of 8; the checksums are fixed-width, so the
 * length does not depend on their values (the header is rewritten once they are known). */
static char *st_header_text(const elmo_st_writer *w, st_wtensor *const *order, size_t *len) {
  cJSON *root = cJSON_CreateObject(), *meta = cJSON_CreateObject();
  for (size_t i = 0; i < w->n_meta; i++) cJSON_AddStringToObject(meta, w->meta[i].key, w->meta[i].val);
  for (size_t i = 0; i < w->n; i++) {
    char *key = elmo_malloc(strlen(ST_CHECKSUM_PREFIX) + strlen(order[i]->name) + 1), hex[16];
    strcpy(key, ST_CHECKSUM_PREFIX);
    strcat(key, order[i]->name);
    snprintf(hex, sizeof hex, "%08x", (unsigned)order[i]->crc);
    cJSON_AddStringToObject(meta, key, hex);
    free(key);
  }
  cJSON_AddItemToObject(root, ST_META_KEY, meta);
  for (size_t i = 0; i < w->n; i++) cJSON_AddItemToObject(root, order[i]->name, st_json_tensor(order[i]));
  char *json = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  if (!json) return NULL;
  size_t n = strlen(json), padded = (n + 7) / 8 * 8;
  char *text = elmo_malloc(padded + 1);
  memcpy(text, json, n);
  memset(text + n, ' ', padded - n);
  text[padded] = '\0';
  cJSON_free(json);
  *len = padded;
  return text;
}

static int st_write(FILE *fp, const void *p, size_t n, const char *path, elmo_err *err) {
  if (n && fwrite(p, 1, n, fp) != n)
    return elmo_fail(err, ELMO_ERUNTIME, "%s: write failed: %s", path, strerror(errno));
  return ELMO_OK;
}

/* One chunk's CRC and write, on a thread of its own while the next chunk is filled. */
typedef struct st_wjob {
  FILE *fp;
  const void *src;
  size_t n;
  uint32_t crc;           /* in: the tensor's CRC so far; out: with this chunk */
  int rc;
  const char *path;
  elmo_err err;
} st_wjob;

static void *st_wjob_run(void *arg) {
  st_wjob *j = arg;
  j->crc = elmo_st_crc32(j->crc, j->src, j->n);
  j->rc = st_write(j->fp, j->src, j->n, j->path, &j->err);
  return NULL;
}

/* A job's end (joined first when th is given): the tensor's CRC goes on from the job's; its rc, err set on a
 * failure. */
static int st_wjob_end(pthread_t *th, st_wjob *job, uint32_t *crc, elmo_err *err) {
  if (th) pthread_join(*th, NULL);
  *crc = job->crc;
  if (job->rc) *err = job->err;
  return job->rc;
}

/* An in-memory tensor's bytes in chunks, its CRC on the way. */
static int st_write_held(FILE *fp, st_wtensor *t, size_t chunk, const char *path, elmo_err *err) {
  uint32_t crc = (uint32_t)crc32(0L, Z_NULL, 0);
  for (size_t off = 0; off < t->nbytes; ) {
    size_t n = t->nbytes - off < chunk ? t->nbytes - off : chunk;
    const void *src = (const unsigned char *)t->data + off;
    crc = elmo_st_crc32(crc, src, n);
    int rc = st_write(fp, src, n, path, err);
    if (rc) return rc;
    off += n;
  }
  t->crc = crc;
  return ELMO_OK;
}

/* A streamed tensor: chunk k + 1 is filled (into the other of the two buffers; a device-to-host copy for the
 * CUDA backend) while a second thread checksums and writes chunk k; the chunks still reach the file and the
 * CRC in order. */
static int st_write_streamed(FILE *fp, st_wtensor *t, size_t chunk, void *buf[2], const char *path,
                             elmo_err *err) {
  uint32_t crc = (uint32_t)crc32(0L, Z_NULL, 0);
  st_wjob job;
  pthread_t th;
  int running = 0, rc = ELMO_OK;
  for (size_t off = 0, k = 0; off < t->nbytes && !rc; k++) {
    size_t n = t->nbytes - off < chunk ? t->nbytes - off : chunk;
    void *b = buf[k & 1];
    elmo_err e = {0};
    const int frc = t->fill(t->ctx, off, b, n, &e);
    if (running) { /* chunk k - 1's write, which ran beside this fill */
      running = 0;
      if ((rc = st_wjob_end(&th, &job, &crc, err))) break;
    }
    if (frc != ELMO_OK) {
      rc = elmo_fail(err, e.code ? e.code : ELMO_ERUNTIME, "%s: tensor '%s': %s", path, t->name,
                     e.msg[0] ? e.msg : "data source failed");
      break;
    }
    job = (st_wjob){fp, b, n, crc, ELMO_OK, path, {0, {0}}};
    running = pthread_create(&th, NULL, st_wjob_run, &job) == 0;
    if (!running) { /* no thread: this one does it */
      st_wjob_run(&job);
      rc = st_wjob_end(NULL, &job, &crc, err);
    }
    off += n;
  }
  if (running) rc = st_wjob_end(&th, &job, &crc, err); /* the last chunk's (rc is still 0 here) */
  t->crc = crc;
  return rc;
}

/* Writes one tensor's bytes in chunks, computing its CRC on the way. */
static int st_write_tensor(FILE *fp, st_wtensor *t, size_t chunk, void *buf[2], const char *path,
                           elmo_err *err) {
  return t->fill ? st_write_streamed(fp, t, chunk, buf, path, err) : st_write_held(fp, t, chunk, path, err);
}

static int st_write_header(FILE *fp, const elmo_st_writer *w, st_wtensor *const *order,
                           size_t expect_len, const char *path, elmo_err *err) {
  size_t len = 0;
  char *text = st_header_text(w, order, &len);
  if (!text) return elmo_fail(err, ELMO_ERUNTIME, "%s: cannot format the header", path);
  if (expect_len && len != expect_len) {
    free(text);
    return elmo_fail(err, ELMO_ERUNTIME, "%s: header length changed while saving", path);
  }
  unsigned char le[8];
  for (int i = 0; i < 8; i++) le[i] = (unsigned char)((uint64_t)len >> (8 * i));
  int rc = st_write(fp, le, 8, path, err);
  if (!rc) rc = st_write(fp, text, len, path, err);
  free(text);
  return rc;
}

/* Header (placeholder checksums), data, then the header again with the real checksums. */
static int st_write_all(FILE *fp, elmo_st_writer *w, st_wtensor **order, const char *path,
                        elmo_err *err) {
  size_t len = 0;
  char *probe = st_header_text(w, order, &len);
  free(probe);
  int rc = st_write_header(fp, w, order, len, path, err);
  size_t max_stream = 0;
  for (size_t i = 0; i < w->n; i++)
    if (w->t[i].fill && w->t[i].nbytes > max_stream) max_stream = w->t[i].nbytes;
  size_t chunk = max_stream < w->chunk ? max_stream : w->chunk;
  void *buf[2] = {chunk ? elmo_malloc(chunk) : NULL, chunk ? elmo_malloc(chunk) : NULL};
  for (size_t i = 0; i < w->n && !rc; i++) rc = st_write_tensor(fp, order[i], w->chunk, buf, path, err);
  free(buf[0]);
  free(buf[1]);
  if (!rc && fseeko(fp, 0, SEEK_SET) != 0)
    rc = elmo_fail(err, ELMO_ERUNTIME, "%s: seek failed: %s", path, strerror(errno));
  if (!rc) rc = st_write_header(fp, w, order, len, path, err);
  return rc;
}

int elmo_st_save(elmo_st_writer *w, const char *path, elmo_err *err) {
  st_wtensor **order = elmo_malloc((w->n ? w->n : 1) * sizeof *order);
  int rc = st_plan(w, order, path, err);
  elmo_outfile out = {0};
  if (!rc) rc = elmo_open_out(&out, path, err);
  if (rc) { free(order); return rc; }
  rc = st_write_all(out.fp, w, order, path, err);
  free(order);
  if (rc) {
    elmo_abort_file(&out);
    return rc;
  }
  return elmo_commit(&out, err);
}

/* ---- reader ---- */

typedef struct st_rtensor {
  char *name;
  const char *dtype;      /* points into st_dtypes */
  int ndim;
  int64_t shape[ELMO_ST_MAX_DIMS];
  size_t begin, end;      /* offsets in the data buffer */
} st_rtensor;

struct elmo_st_file {
  char *path;
  unsigned char *map;     /* [map_size] read-only mapping of the whole file */
  size_t map_size;
  const unsigned char *buf;   /* [buf_size] data buffer inside the mapping */
  size_t buf_size;
  st_rtensor *t;          /* [n] sorted by name */
  int n;
  st_kv *meta;            /* [n_meta] in file order */
  int n_meta;
};

static int st_map(elmo_st_file *f, elmo_err *err) {
  int fd = open(f->path, O_RDONLY);
  if (fd < 0) return elmo_fail(err, ELMO_EINPUT, "%s: cannot open: %s", f->path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return elmo_fail(err, ELMO_EINPUT, "%s: not a regular file", f->path);
  }
  if (st.st_size < 8) {
    close(fd);
    return elmo_fail(err, ELMO_EINPUT, "%s: file of %lld bytes is too short for a safetensors "
                     "header (file truncated?)", f->path, (long long)st.st_size);
  }
  f->map_size = (size_t)st.st_size;
  void *p = mmap(NULL, f->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int e = errno;
  close(fd);
  if (p == MAP_FAILED) {
    f->map_size = 0;
    return elmo_fail(err, ELMO_ERUNTIME, "%s: mmap failed: %s", f->path, strerror(e));
  }
  f->map = p;
  return ELMO_OK;
}

/* A JSON number that is a non-negative integer exactly representable (<= 2^53). */
static int st_json_uint(const cJSON *v, uint64_t *out) {
  if (!cJSON_IsNumber(v)) return 0;
  double d = v->valuedouble;
  if (!(d >= 0 && d <= ST_MAX_EXACT) || d != (double)(uint64_t)d) return 0;
  *out = (uint64_t)d;
  return 1;
}

static int st_parse_shape(elmo_st_file *f, st_rtensor *t, const cJSON *shape, elmo_err *err) {
  if (!cJSON_IsArray(shape))
    return elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s': shape missing or not an array", f->path, t->name);
  int nd = cJSON_GetArraySize(shape);
  if (nd > ELMO_ST_MAX_DIMS)
    return elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s': %d dims (expected at most %d)", f->path,
                     t->name, nd, ELMO_ST_MAX_DIMS);
  t->ndim = nd;
  int i = 0;
  for (const cJSON *d = shape->child; d; d = d->next, i++) {
    uint64_t v;
    if (!st_json_uint(d, &v))
      return elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s': shape[%d] is not a non-negative "
                       "integer", f->path, t->name, i);
    t->shape[i] = (int64_t)v;
  }
  return ELMO_OK;
}

static int st_parse_offsets(elmo_st_file *f, st_rtensor *t, const cJSON *offs, elmo_err *err) {
  uint64_t b, e;
  if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || !st_json_uint(offs->child, &b) ||
      !st_json_uint(offs->child->next, &e) || b > e)
    return elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s': data_offsets must be [begin, end] with "
                     "0 <= begin <= end", f->path, t->name);
  if (e > f->buf_size)
    return elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s': data_offsets [%llu, %llu] outside the "
                     "data buffer of %zu bytes (file truncated?)", f->path, t->name,
                     (unsigned long long)b, (unsigned long long)e, f->buf_size);
  t->begin = (size_t)b;
  t->end = (size_t)e;
  return ELMO_OK;
}

static int st_parse_tensor(elmo_st_file *f, st_rtensor *t, const cJSON *o, elmo_err *err) {
  if (!cJSON_IsObject(o))
    return elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s': entry is not an object", f->path, t->name);
  const cJSON *dt = cJSON_GetObjectItemCaseSensitive(o, "dtype");
  if (!cJSON_IsString(dt))
    return elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s': dtype missing", f->path, t->name);
  size_t elem = elmo_st_dtype_size(dt->valuestring);
  if (!elem)
    return elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s': unknown dtype '%s' (expected one of F64, "
                     "F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, I16, I8, U64, U32, U16, U8, BOOL)",
                     f->path, t->name, dt->valuestring);
  for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
    if (!strcmp(st_dtypes[i].name, dt->valuestring)) t->dtype = st_dtypes[i].name;
  int rc = st_parse_shape(f, t, cJSON_GetObjectItemCaseSensitive(o, "shape"), err);
  if (!rc) rc = st_parse_offsets(f, t, cJSON_GetObjectItemCaseSensitive(o, "data_offsets"), err);
  if (rc) return rc;
  int ok;
  size_t want = st_shape_bytes(t->ndim, t->shape, elem, &ok);
  if (!ok || want != t->end - t->begin) {
    char shp[256];
    st_shape_str(shp, sizeof shp, t->ndim, t->shape);
    return elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s': data_offsets span %zu bytes but %s %s "
                     "needs %zu", f->path, t->name, t->end - t->begin, t->dtype, shp, want);
  }
  return ELMO_OK;
}

static int st_parse_meta(elmo_st_file *f, const cJSON *meta, elmo_err *err) {
  if (cJSON_IsNull(meta)) return ELMO_OK;
  if (!cJSON_IsObject(meta) || f->meta)
    return elmo_fail(err, ELMO_EINPUT, "%s: %s must appear once, as an object of strings",
                     f->path, ST_META_KEY);
  int n = cJSON_GetArraySize(meta);
  f->meta = elmo_calloc((size_t)n + 1, sizeof *f->meta);
  for (const cJSON *m = meta->child; m; m = m->next) {
    if (!cJSON_IsString(m))
      return elmo_fail(err, ELMO_EINPUT, "%s: %s: value of '%s' is not a string", f->path,
                       ST_META_KEY, m->string);
    if (elmo_st_meta(f, m->string))
      return elmo_fail(err, ELMO_EINPUT, "%s: %s: key '%s' appears twice", f->path,
                       ST_META_KEY, m->string);
    f->meta[f->n_meta].key = elmo_strdup(m->string);
    f->meta[f->n_meta++].val = elmo_strdup(m->valuestring);
  }
  return ELMO_OK;
}

static int st_cmp_rname(const void *a, const void *b) {
  return strcmp(((const st_rtensor *)a)->name, ((const st_rtensor *)b)->name);
}

static int st_cmp_roffset(const void *a, const void *b) {
  const st_rtensor *x = *(const st_rtensor *const *)a, *y = *(const st_rtensor *const *)b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : x->end > y->end;
}

/* The tensors must tile the data buffer exactly: no overlap, no gap, nothing after the last. */
static int st_check_tiling(elmo_st_file *f, elmo_err *err) {
  const st_rtensor **by_off = elmo_malloc(((size_t)f->n + 1) * sizeof *by_off);
  for (int i = 0; i < f->n; i++) by_off[i] = &f->t[i];
  qsort(by_off, (size_t)f->n, sizeof *by_off, st_cmp_roffset);
  size_t pos = 0;
  int rc = ELMO_OK;
  for (int i = 0; i < f->n && !rc; i++) {
    const st_rtensor *t = by_off[i];
    if (t->begin < pos)
      rc = elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s' overlaps tensor '%s' (data_offsets must "
                     "not overlap)", f->path, t->name, by_off[i - 1]->name);
    else if (t->begin > pos)
      rc = elmo_fail(err, ELMO_EINPUT, "%s: %zu unused bytes before tensor '%s' (expected "
                     "contiguous data_offsets)", f->path, t->begin - pos, t->name);
    pos = t->end;
  }
  if (!rc && pos != f->buf_size)
    rc = elmo_fail(err, ELMO_EINPUT, "%s: %zu bytes after the last tensor (expected the data "
                   "buffer to end at %zu)", f->path, f->buf_size - pos, pos);
  free(by_off);
  return rc;
}

static int st_parse_entries(elmo_st_file *f, const cJSON *root, elmo_err *err) {
  int n = cJSON_GetArraySize(root);
  f->t = elmo_calloc((size_t)n + 1, sizeof *f->t);
  for (const cJSON *c = root->child; c; c = c->next) {
    if (!strcmp(c->string, ST_META_KEY)) {
      int rc = st_parse_meta(f, c, err);
      if (rc) return rc;
      continue;
    }
    st_rtensor *t = &f->t[f->n++];
    t->name = elmo_strdup(c->string);
    int rc = st_parse_tensor(f, t, c, err);
    if (rc) return rc;
  }
  qsort(f->t, (size_t)f->n, sizeof *f->t, st_cmp_rname);
  for (int i = 1; i < f->n; i++)
    if (!strcmp(f->t[i - 1].name, f->t[i].name))
      return elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s' appears twice in the header", f->path,
                       f->t[i].name);
  return st_check_tiling(f, err);
}

static int st_parse_header(elmo_st_file *f, elmo_err *err) {
  uint64_t hlen = 0;
  for (int i = 0; i < 8; i++) hlen |= (uint64_t)f->map[i] << (8 * i);
  if (hlen > f->map_size - 8)
    return elmo_fail(err, ELMO_EINPUT, "%s: header length %llu exceeds the %zu bytes after it "
                     "(file truncated or not safetensors?)", f->path, (unsigned long long)hlen,
                     f->map_size - 8);
  if (hlen < 2 || hlen > ST_MAX_HEADER || f->map[8] != '{')
    return elmo_fail(err, ELMO_EINPUT, "%s: invalid header (length %llu; expected a JSON object "
                     "of at most %llu bytes)", f->path, (unsigned long long)hlen,
                     (unsigned long long)ST_MAX_HEADER);
  const char *text = (const char *)f->map + 8, *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(text, (size_t)hlen, &end, 0);
  if (!root)
    return elmo_fail(err, ELMO_EINPUT, "%s: header is not valid JSON (near byte %lld)", f->path,
                     (long long)(cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - text + 8 : 8));
  for (const char *p = end; p < text + hlen; p++) {
    if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
      cJSON_Delete(root);
      return elmo_fail(err, ELMO_EINPUT, "%s: unexpected bytes after the header JSON (expected "
                       "space padding)", f->path);
    }
  }
  f->buf = f->map + 8 + hlen;
  f->buf_size = f->map_size - 8 - (size_t)hlen;
  int rc = cJSON_IsObject(root) ? st_parse_entries(f, root, err)
         : elmo_fail(err, ELMO_EINPUT, "%s: header is not a JSON object", f->path);
  cJSON_Delete(root);
  return rc;
}

static const st_rtensor *st_lookup(const elmo_st_file *f, const char *name) {
  int lo = 0, hi = f->n - 1;
  while (lo <= hi) {
    int mid = lo + (hi - lo) / 2, c = strcmp(f->t[mid].name, name);
    if (!c) return &f->t[mid];
    if (c < 0) lo = mid + 1; else hi = mid - 1;
  }
  return NULL;
}

static int st_hex32(const char *s, uint32_t *out) {
  if (strlen(s) != 8) return 0;
  uint32_t v = 0;
  for (int i = 0; i < 8; i++) {
    char c = s[i];
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
          : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) return 0;
    v = v << 4 | (uint32_t)d;
  }
  *out = v;
  return 1;
}

int elmo_st_verify(const elmo_st_file *f, elmo_err *err) {
  size_t plen = strlen(ST_CHECKSUM_PREFIX);
  for (int i = 0; i < f->n_meta; i++) {
    const char *key = f->meta[i].key;
    if (strncmp(key, ST_CHECKSUM_PREFIX, plen)) continue;
    const st_rtensor *t = st_lookup(f, key + plen);
    uint32_t want;
    if (!t)
      return elmo_fail(err, ELMO_EINPUT, "%s: metadata '%s' names no tensor in the file",
                       f->path, key);
    if (!st_hex32(f->meta[i].val, &want))
      return elmo_fail(err, ELMO_EINPUT, "%s: metadata '%s' = '%s' (expected 8 hex digits)",
                       f->path, key, f->meta[i].val);
    uint32_t got = elmo_st_crc32((uint32_t)crc32(0L, Z_NULL, 0), f->buf + t->begin, t->end - t->begin);
    if (got != want)
      return elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s' checksum mismatch (file corrupted?): "
                       "crc32 %08x, metadata says %08x", f->path, t->name, (unsigned)got,
                       (unsigned)want);
  }
  return ELMO_OK;
}

static int st_open(elmo_st_file **out, const char *path, int verify, elmo_err *err) {
  *out = NULL;
  elmo_st_file *f = elmo_calloc(1, sizeof *f);
  f->path = elmo_strdup(path);
  int rc = st_map(f, err);
  if (!rc) rc = st_parse_header(f, err);
  if (!rc && verify) rc = elmo_st_verify(f, err);
  if (rc) {
    elmo_st_close(&f);
    return rc;
  }
  *out = f;
  return ELMO_OK;
}

int elmo_st_open(elmo_st_file **out, const char *path, elmo_err *err) {
  return st_open(out, path, 1, err);
}

int elmo_st_open_unverified(elmo_st_file **out, const char *path, elmo_err *err) {
  return st_open(out, path, 0, err);
}

void elmo_st_close(elmo_st_file **pf) {
  elmo_st_file *f = *pf;
  if (!f) return;
  if (f->map) munmap(f->map, f->map_size);
  for (int i = 0; i < f->n; i++) free(f->t[i].name);
  for (int i = 0; i < f->n_meta; i++) { free(f->meta[i].key); free(f->meta[i].val); }
  free(f->t);
  free(f->meta);
  free(f->path);
  free(f);
  *pf = NULL;
}

const char *elmo_st_path(const elmo_st_file *f) { return f->path; }
int elmo_st_count(const elmo_st_file *f) { return f->n; }

const char *elmo_st_name(const elmo_st_file *f, int i) {
  return i >= 0 && i < f->n ? f->t[i].name : NULL;
}

int elmo_st_find(const elmo_st_file *f, const char *name, const char **dtype, int *ndim,
                 int64_t shape[ELMO_ST_MAX_DIMS], const void **data, size_t *nbytes) {
  const st_rtensor *t = st_lookup(f, name);
  if (!t) return 0;
  if (dtype) *dtype = t->dtype;
  if (ndim) *ndim = t->ndim;
  if (shape) for (int i = 0; i < t->ndim; i++) shape[i] = t->shape[i];
  if (data) *data = f->buf + t->begin;
  if (nbytes) *nbytes = t->end - t->begin;
  return 1;
}

int elmo_st_expect(const elmo_st_file *f, const char *name, const char *dtype, int ndim,
                   const int64_t *shape, const void **data, elmo_err *err) {
  const st_rtensor *t = st_lookup(f, name);
  if (!t) return elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s' missing", f->path, name);
  if (strcmp(t->dtype, dtype))
    return elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s' has dtype %s (expected %s)", f->path,
                     name, t->dtype, dtype);
  int same = !shape || t->ndim == ndim;
  for (int i = 0; same && shape && i < ndim; i++) same = t->shape[i] == shape[i];
  if (!same) {
    char got[256], want[256];
    st_shape_str(got, sizeof got, t->ndim, t->shape);
    st_shape_str(want, sizeof want, ndim, shape);
    return elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s' has shape %s (expected %s)", f->path,
                     name, got, want);
  }
  if (data) *data = f->buf + t->begin;
  return ELMO_OK;
}

const char *elmo_st_meta(const elmo_st_file *f, const char *key) {
  for (int i = 0; i < f->n_meta; i++)
    if (!strcmp(f->meta[i].key, key)) return f->meta[i].val;
  return NULL;
}

int elmo_st_meta_count(const elmo_st_file *f) { return f->n_meta; }

const char *elmo_st_meta_key(const elmo_st_file *f, int i) {
  return i >= 0 && i < f->n_meta ? f->meta[i].key : NULL;
}
