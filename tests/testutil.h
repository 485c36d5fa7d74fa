/* testutil.h: helpers shared by the cmocka tests. */
#ifndef ELMO_TESTUTIL_H
#define ELMO_TESTUTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

/* Path under ../shared/data (env ELMO_SHARED_DATA); malloc'd. */
char *tu_shared(const char *rel);
/* Writes `text` to a fresh temp file with the given suffix (".txt", ".gz" gzips it); malloc'd path. */
char *tu_write_temp(const char *text, const char *suffix);
/* A fresh temp directory; malloc'd path. */
char *tu_temp_dir(void);
/* Deterministic test RNG (splitmix64). */
uint64_t tu_rand_u64(uint64_t *state);
float tu_rand_uniform(uint64_t *state);   /* [0,1) */
float tu_rand_normal(uint64_t *state);
/* Asserts rc and err say bad input (ELMO_EINPUT) at "path:line: " and mention `needle`. */
struct elmo_err;
void tu_check_input_error(int rc, const struct elmo_err *err, const char *path, int line, const char *needle);
/* Size of a file in bytes (asserts it exists). */
long tu_file_size(const char *path);
/* Asserts err message contains `needle`. */
#define tu_assert_contains(hay, needle) \
  do { if (!strstr((hay), (needle))) fail_msg("expected \"%s\" in \"%s\"", (needle), (hay)); } while (0)

#endif
