/* testutil.c: temp files, shared data paths and a deterministic RNG for tests. */
#include "testutil.h"
#include "common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

char *tu_shared(const char *rel) {
  const char *base = getenv("ELMO_SHARED_DATA");
  if (!base) base = "../shared/data";
  size_t n = strlen(base) + strlen(rel) + 2;
  char *p = malloc(n);
  snprintf(p, n, "%s/%s", base, rel);
  return p;
}

char *tu_write_temp(const char *text, const char *suffix) {
  char tmpl[] = "/tmp/elmo-test-XXXXXX";
  int fd = mkstemp(tmpl);
  assert_true(fd >= 0);
  close(fd);
  unlink(tmpl);
  size_t n = strlen(tmpl) + strlen(suffix) + 1;
  char *path = malloc(n);
  snprintf(path, n, "%s%s", tmpl, suffix);
  size_t len = strlen(text);
  if (strstr(suffix, ".gz")) {
    gzFile g = gzopen(path, "wb");
    assert_non_null(g);
    if (len) assert_int_equal(gzwrite(g, text, (unsigned)len), (int)len);
    gzclose(g);
  } else {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    fclose(f);
  }
  return path;
}

char *tu_temp_dir(void) {
  char tmpl[] = "/tmp/elmo-test-dir-XXXXXX";
  assert_non_null(mkdtemp(tmpl));
  return strdup(tmpl);
}

uint64_t tu_rand_u64(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

float tu_rand_uniform(uint64_t *s) { return (float)(tu_rand_u64(s) >> 40) * (1.0f / 16777216.0f); }

float tu_rand_normal(uint64_t *s) {
  float u1 = tu_rand_uniform(s), u2 = tu_rand_uniform(s);
  if (u1 < 1e-7f) u1 = 1e-7f;
  return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

void tu_check_input_error(int rc, const elmo_err *err, const char *path, int line, const char *needle) {
  char where[64];
  snprintf(where, sizeof where, ":%d: ", line);
  assert_int_equal(rc, ELMO_EINPUT);
  assert_int_equal(err->code, ELMO_EINPUT);
  tu_assert_contains(err->msg, path);
  tu_assert_contains(err->msg, where);
  tu_assert_contains(err->msg, needle);
}

long tu_file_size(const char *path) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fclose(f);
  return n;
}
