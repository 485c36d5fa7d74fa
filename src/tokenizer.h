/* tokenizer.h: BERT WordPiece tokenizer over a vocab.txt (one token per line, id = line index).
 *
 * Text goes through BERT's basic tokenizer (drop control characters, U+0000, U+FFFD and invalid
 * UTF-8; whitespace split; spaces around CJK ideographs; when lowercasing also strip accents
 * (NFD, drop nonspacing marks) and lower-case; punctuation split off as single tokens), then
 * greedy longest-match-first WordPiece with "##" continuation pieces. A word longer than 100
 * characters, or one that no sequence of pieces covers, becomes [UNK]. The output matches
 * Hugging Face's BertWordPieceTokenizer (bert-base-uncased) except in the cases listed at the top
 * of tokenizer.c.
 *
 * Ownership: elmo_tokenizer_load allocates; elmo_tokenizer_free releases and NULLs the pointer.
 * A loaded tokenizer is read-only: any number of threads may encode with it at once. Encoding
 * allocates nothing and stops reading the text once max_len tokens are produced. */
#ifndef ELMO_TOKENIZER_H
#define ELMO_TOKENIZER_H

#include <stdint.h>
#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif


/* Bumped whenever the ids produced for some text change; part of elmo_tokenizer_hash. */
#define ELMO_TOKENIZER_VERSION 1

typedef struct elmo_tokenizer elmo_tokenizer;

/* Reads vocab_path (plain or .gz). lowercase = 1 for uncased models (lower-case and strip
 * accents), 0 for cased ones (neither). Fails with ELMO_EINPUT naming the file when it cannot be
 * read, is empty, or lacks one of [PAD], [UNK], [CLS], [SEP]. */
int elmo_tokenizer_load(elmo_tokenizer **out, const char *vocab_path, int lowercase, elmo_err *err);
void elmo_tokenizer_free(elmo_tokenizer **t);

int64_t elmo_tokenizer_vocab_size(const elmo_tokenizer *t);   /* number of lines in vocab.txt */
/* Id of an exact token string ("[PAD]", "##ing"), or -1 if absent. When a token appears on
 * several lines, the last one wins (as in Hugging Face). */
int32_t elmo_tokenizer_id(const elmo_tokenizer *t, const char *token);
/* The token string of an id (as in vocab.txt), or NULL if id is out of range. */
const char *elmo_tokenizer_token(const elmo_tokenizer *t, int32_t id);
/* Digest of the vocabulary, the lowercase flag and ELMO_TOKENIZER_VERSION: a cache key part. */
uint64_t elmo_tokenizer_hash(const elmo_tokenizer *t);

/* Encodes text (UTF-8, NUL-terminated; NULL = "") as [CLS] pieces... [SEP] into ids[max_len],
 * truncating the pieces so that [SEP] stays last, and pads with [PAD]. mask[max_len] (may be
 * NULL) gets 1 for real tokens, 0 for padding. Returns the number of real tokens (2..max_len),
 * or -1 when max_len < 2. */
int elmo_tokenize(const elmo_tokenizer *t, const char *text, int max_len, int32_t *ids, uint8_t *mask);
/* The WordPiece ids of text without [CLS]/[SEP]/padding: writes at most cap ids and returns how
 * many were written (tokenizing stops there). */
int elmo_tokenize_pieces(const elmo_tokenizer *t, const char *text, int32_t *ids, int cap);

#ifdef __cplusplus
}
#endif

#endif
