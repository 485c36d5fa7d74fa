/* text.h: raw-text inputs: one text per line (trn_X.txt, Y.txt) and JSON lines
 * (uid, title, content, target_ind). Streaming; .gz transparently. */
#ifndef ELMO_TEXT_H
#define ELMO_TEXT_H

#include <stdint.h>
#include "common.h"
#include "csr.h"

#ifdef __cplusplus
extern "C" {
#endif


typedef struct elmo_texts {
  int64_t n;
  char **text;   /* [n] NUL-terminated UTF-8 strings */
} elmo_texts;

void elmo_texts_free(elmo_texts *t);
/* One text per line; every line (also an empty one) is one text. */
int elmo_read_lines(const char *path, elmo_texts *out, elmo_err *err);
/* JSON lines. The text is title, or title + " " + content when with_content is set.
 * Labels from target_ind go to Y (num_labels columns; -1 = infer max+1). Missing or mistyped
 * fields are errors naming path:line and the field. */
int elmo_read_jsonl(const char *path, int with_content, int64_t num_labels, elmo_texts *out, elmo_csr *Y,
                    elmo_err *err);

#ifdef __cplusplus
}
#endif

#endif
