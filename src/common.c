/* common.c: error reporting, checked allocation, atomic file output. */
#include "common.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int elmo_fail(elmo_err *err, int code, const char *fmt, ...) {
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    err->code = code;
  }
  return code;
}

int elmo_report(const char *prog, const elmo_err *err) {
  fprintf(stderr, "%s: %s\n", prog, err->msg);
  return err->code ? err->code : ELMO_ERUNTIME;
}

static void oom(size_t n) {
  fprintf(stderr, "elmo: out of host memory allocating %zu bytes\n", n);
  abort();
}

void *elmo_malloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) oom(n);
  return p;
}

void *elmo_calloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) oom(n * size);
  return p;
}

void *elmo_realloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) oom(n);
  return q;
}

char *elmo_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = elmo_malloc(n);
  memcpy(d, s, n);
  return d;
}

void elmo_grow(void **ptr, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return;
  size_t c = *cap ? *cap : 16;
  while (c < need) c += c / 2 + 16;
  *ptr = elmo_realloc(*ptr, c * elem);
  *cap = c;
}

int elmo_open_out(elmo_outfile *o, const char *path, elmo_err *err) {
  o->path = elmo_strdup(path);
  size_t n = strlen(path) + 32;
  o->tmp = elmo_malloc(n);
  snprintf(o->tmp, n, "%s.tmp.%ld", path, (long)getpid());
  o->fp = fopen(o->tmp, "wb");
  if (!o->fp) {
    int e = errno;
    ELMO_FREE(o->path);
    ELMO_FREE(o->tmp);
    return elmo_fail(err, ELMO_EINPUT, "%s: cannot open for writing: %s", path, strerror(e));
  }
  return ELMO_OK;
}

int elmo_commit(elmo_outfile *o, elmo_err *err) {
  int rc = ELMO_OK;
  FILE *fp = o->fp;
  if (ferror(fp) | (fflush(fp) != 0) | (fsync(fileno(fp)) != 0 && errno != EINVAL)) {
    rc = elmo_fail(err, ELMO_ERUNTIME, "%s: write failed: %s", o->path, strerror(errno));
  }
  if (fclose(fp) != 0 && rc == ELMO_OK)
    rc = elmo_fail(err, ELMO_ERUNTIME, "%s: close failed: %s", o->path, strerror(errno));
  o->fp = NULL;
  if (rc == ELMO_OK && rename(o->tmp, o->path) != 0)
    rc = elmo_fail(err, ELMO_ERUNTIME, "%s: rename from %s failed: %s", o->path, o->tmp, strerror(errno));
  if (rc != ELMO_OK) remove(o->tmp);
  ELMO_FREE(o->path);
  ELMO_FREE(o->tmp);
  return rc;
}

void elmo_abort_file(elmo_outfile *o) {
  if (o->fp) fclose(o->fp);
  o->fp = NULL;
  if (o->tmp) remove(o->tmp);
  ELMO_FREE(o->path);
  ELMO_FREE(o->tmp);
}

char *elmo_path_join(const char *dir, const char *name) {
  if (name[0] == '/' || !dir || !dir[0]) return elmo_strdup(name);
  size_t n = strlen(dir) + strlen(name) + 2;
  char *p = elmo_malloc(n);
  snprintf(p, n, "%s/%s", dir, name);
  return p;
}

int elmo_file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

int elmo_mkdirs(const char *path, elmo_err *err) {
  char *p = elmo_strdup(path);
  for (char *s = p + 1; ; s++) {
    if (*s == '/' || *s == '\0') {
      char c = *s;
      *s = '\0';
      if (mkdir(p, 0777) != 0 && errno != EEXIST) {
        int e = errno;
        free(p);
        return elmo_fail(err, ELMO_EINPUT, "%s: cannot create directory: %s", path, strerror(e));
      }
      *s = c;
      if (!c) break;
    }
  }
  free(p);
  return ELMO_OK;
}

int elmo_rmtree(const char *path) {
  DIR *d = opendir(path);
  if (!d) return remove(path);
  struct dirent *e;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    char *c = elmo_path_join(path, e->d_name);
    elmo_rmtree(c);
    free(c);
  }
  closedir(d);
  return rmdir(path);
}

double elmo_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
