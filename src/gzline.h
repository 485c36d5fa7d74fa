/* gzline.h: streaming line reader over plain or gzip files (zlib reads both transparently).
 * Memory is one line buffer; tens of GB stream through. Truncated gzip is an error. */
#ifndef ELMO_GZLINE_H
#define ELMO_GZLINE_H

#include <stddef.h>
#include <stdint.h>
#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif


typedef struct elmo_lines elmo_lines;

int elmo_lines_open(elmo_lines **out, const char *path, elmo_err *err);
/* Next line, NUL-terminated, without its '\n' and a trailing '\r' (a UTF-8 byte-order mark
 * opening line 1 is dropped too). Returns 1 with *line and *len set, 0 at end of file, or
 * -ELMO_EINPUT / -ELMO_ERUNTIME on error (err filled, naming path:line; a truncated or corrupt
 * gzip stream is -ELMO_EINPUT). The line stays valid until the next call and may be modified
 * by the caller. */
int elmo_lines_next(elmo_lines *r, char **line, size_t *len, elmo_err *err);
int64_t elmo_lines_lineno(const elmo_lines *r);  /* 1-based number of the last line returned */
const char *elmo_lines_path(const elmo_lines *r);
void elmo_lines_close(elmo_lines **r);

#ifdef __cplusplus
}
#endif

#endif
