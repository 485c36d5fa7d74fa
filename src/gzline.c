/* gzline.c: streaming line reader over plain or gzip files.
 *
 * zlib's gzread decompresses (or copies, for plain files) into one buffer; lines are split in
 * place with memchr and returned as pointers into that buffer, NUL-terminated. A line longer
 * than the buffer grows it, so the buffer is also the "one growable line buffer". A gzip stream
 * that ends before its trailer is reported as truncated rather than read as a short file. */
#include "gzline.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

enum { GZL_CHUNK = 1 << 20,      /* bytes asked of gzread per refill */
       GZL_ZBUF = 256 << 10 };   /* zlib's own input buffer */

struct elmo_lines {
  gzFile gz;
  char *path;
  char *buf;        /* [cap] raw bytes; lines are split in place */
  size_t cap;
  size_t pos, end;  /* unread bytes are buf[pos, end) */
  int eof;          /* gzread has reported end of input */
  int64_t lineno;   /* 1-based number of the last line returned */
};

int elmo_lines_open(elmo_lines **out, const char *path, elmo_err *err) {
  *out = NULL;
  struct stat st;
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
    return elmo_fail(err, ELMO_EINPUT, "%s: is a directory (expected a data file)", path);
  gzFile gz = gzopen(path, "rb");
  if (!gz) {
    int e = errno;
    return elmo_fail(err, ELMO_EINPUT, "%s: cannot open for reading: %s", path,
                     e ? strerror(e) : "out of memory");
  }
  gzbuffer(gz, GZL_ZBUF);
  elmo_lines *r = elmo_calloc(1, sizeof *r);
  r->gz = gz;
  r->path = elmo_strdup(path);
  r->cap = GZL_CHUNK + 1;
  r->buf = elmo_malloc(r->cap);
  *out = r;
  return ELMO_OK;
}

/* Turns the stream's error state after a short or failed read into an elmo error. */
static int read_error(elmo_lines *r, int got, elmo_err *err) {
  int zcode = Z_OK;
  const char *zmsg = gzerror(r->gz, &zcode);
  int64_t line = r->lineno + 1;
  if (zcode == Z_BUF_ERROR)
    return elmo_fail(err, ELMO_EINPUT,
                     "%s:%lld: truncated gzip stream (the file ends before the gzip trailer; "
                     "expected a complete .gz file, re-download or re-compress it)",
                     r->path, (long long)line);
  if (zcode == Z_ERRNO)
    return elmo_fail(err, ELMO_ERUNTIME, "%s:%lld: read failed: %s", r->path, (long long)line,
                     strerror(errno));
  if (got < 0 || zcode != Z_OK)
    return elmo_fail(err, ELMO_EINPUT, "%s:%lld: corrupt gzip stream: %s (expected valid gzip data)",
                     r->path, (long long)line, zmsg ? zmsg : "unknown zlib error");
  return ELMO_OK;
}

/* Moves unread bytes to the front, grows the buffer if it is full, and reads more.
 * Returns ELMO_OK (possibly setting eof) or an error code. */
static int refill(elmo_lines *r, elmo_err *err) {
  size_t left = r->end - r->pos;
  if (r->pos > 0 && left > 0) memmove(r->buf, r->buf + r->pos, left);
  r->pos = 0;
  r->end = left;
  if (r->cap - 1 - r->end < GZL_CHUNK / 2) {
    r->cap = r->cap * 2;
    r->buf = elmo_realloc(r->buf, r->cap);
  }
  size_t want = r->cap - 1 - r->end;   /* keep one byte for the final NUL */
  if (want > (size_t)1 << 30) want = (size_t)1 << 30;
  int got = gzread(r->gz, r->buf + r->end, (unsigned)want);
  if (got > 0) {
    r->end += (size_t)got;
    return ELMO_OK;
  }
  int rc = read_error(r, got, err);
  if (rc == ELMO_OK) r->eof = 1;
  return rc;
}

/* Cuts the line buf[pos, stop) out of the buffer, drops a trailing '\r' and, on line 1, a
 * UTF-8 byte-order mark. */
static void take_line(elmo_lines *r, size_t stop, size_t next, char **line, size_t *len) {
  char *s = r->buf + r->pos;
  size_t n = stop - r->pos;
  r->buf[stop] = '\0';
  if (n > 0 && s[n - 1] == '\r') s[--n] = '\0';
  r->pos = next;
  r->lineno++;
  if (r->lineno == 1 && n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) {
    s += 3;
    n -= 3;
  }
  *line = s;
  *len = n;
}

int elmo_lines_next(elmo_lines *r, char **line, size_t *len, elmo_err *err) {
  size_t scanned = r->pos;   /* bytes before this offset hold no '\n' */
  for (;;) {
    char *nl = memchr(r->buf + scanned, '\n', r->end - scanned);
    if (nl) {
      size_t stop = (size_t)(nl - r->buf);
      take_line(r, stop, stop + 1, line, len);
      return 1;
    }
    if (r->eof) {
      if (r->pos == r->end) return 0;
      take_line(r, r->end, r->end, line, len);   /* last line without '\n' */
      return 1;
    }
    size_t done = r->end - r->pos;
    int rc = refill(r, err);
    if (rc != ELMO_OK) return -rc;
    scanned = done;
  }
}

int64_t elmo_lines_lineno(const elmo_lines *r) { return r->lineno; }

const char *elmo_lines_path(const elmo_lines *r) { return r->path; }

void elmo_lines_close(elmo_lines **r) {
  if (!*r) return;
  gzclose((*r)->gz);
  free((*r)->path);
  free((*r)->buf);
  ELMO_FREE(*r);
}
