/* common.h: error reporting, checked allocation and atomic file output shared by all host code.
 *
 * Error convention (library code never exits): a function that can fail returns an int status
 * (ELMO_OK, ELMO_EINPUT for bad usage/config/data = exit code 2, ELMO_ERUNTIME = exit code 1)
 * and fills an elmo_err with a one-line message. Messages name the place and what was expected:
 *   "data/trn_X_Y.txt:17: label 131075 >= 131073 declared in header (expected 0 <= label < 131073)"
 *   "config.json: training.lr: unknown key (did you mean training.encoder.lr?)"
 */
#ifndef ELMO_COMMON_H
#define ELMO_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif


enum { ELMO_OK = 0, ELMO_ERUNTIME = 1, ELMO_EINPUT = 2 };

typedef struct elmo_err {
  int code;          /* ELMO_OK, ELMO_ERUNTIME or ELMO_EINPUT */
  char msg[1024];    /* "path:line: what is wrong (what was expected)" */
} elmo_err;

/* Sets err (if not NULL) and returns code. printf-style. */
int elmo_fail(elmo_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prints "prog: msg" to stderr and returns err->code (use as exit status). */
int elmo_report(const char *prog, const elmo_err *err);

/* Allocation that aborts with a message on out-of-memory (host memory exhaustion is fatal). */
void *elmo_malloc(size_t n);
void *elmo_calloc(size_t n, size_t size);
void *elmo_realloc(void *p, size_t n);
char *elmo_strdup(const char *s);
#define ELMO_FREE(p) do { free(p); (p) = NULL; } while (0)

/* Growable array helper: ensures capacity for `need` elements of size `elem`. */
void elmo_grow(void **ptr, size_t *cap, size_t need, size_t elem);

/* Atomic output: open "path.tmp.<pid>", write, then elmo_commit renames it over path.
 * elmo_abort_file removes the temp file. Nothing half-written is ever visible under path. */
typedef struct elmo_outfile {
  void *fp;          /* FILE* */
  char *path;        /* final path */
  char *tmp;         /* temporary path */
} elmo_outfile;
int elmo_open_out(elmo_outfile *o, const char *path, elmo_err *err);
int elmo_commit(elmo_outfile *o, elmo_err *err);
void elmo_abort_file(elmo_outfile *o);

/* Path join into a malloc'd string: dir + "/" + name (name returned as-is if absolute). */
char *elmo_path_join(const char *dir, const char *name);
int elmo_file_exists(const char *path);
/* mkdir -p */
int elmo_mkdirs(const char *path, elmo_err *err);
/* Recursively remove a directory tree (used for temp checkpoint dirs). */
int elmo_rmtree(const char *path);

/* Monotonic wall clock in seconds. */
double elmo_now(void);

#ifdef __cplusplus
}
#endif

#endif
