/* dataset.c: dataset loading (per config), validation split, tokenisation, batch gathering. */
#include "dataset.h"
#include "numerics.h"
#include "pretrained.h"
#include "model.h"
#include "reader.h"
#include "text.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *elmo_data_path(const char *dir, const char *name) {
  char *p = elmo_path_join(dir, name);
  if (elmo_file_exists(p)) return p;
  size_t n = strlen(p) + 4;
  char *gz = elmo_malloc(n);
  snprintf(gz, n, "%s.gz", p);
  if (elmo_file_exists(gz)) {
    free(p);
    return gz;
  }
  free(gz);
  return p; /* the reader reports it missing */
}

static void split_free(elmo_split *s) {
  elmo_csr_free(&s->X);
  elmo_csr_free(&s->Y);
  ELMO_FREE(s->ids);
  ELMO_FREE(s->mask);
  s->n = 0;
}

void elmo_dataset_free(elmo_dataset *ds) {
  split_free(&ds->train);
  split_free(&ds->val);
  split_free(&ds->test);
  elmo_csr_free(&ds->filter);
  elmo_csr_free(&ds->train_Y_all);
  ELMO_FREE(ds->label_freq);
  ELMO_FREE(ds->vocab_path);
}

/* Pseudo-text of a BoW row: its feature words joined by spaces. */
static char *bow_text(const elmo_csr *X, int64_t r, const elmo_texts *words) {
  size_t len = 1;
  for (int64_t i = X->indptr[r]; i < X->indptr[r + 1]; i++) len += strlen(words->text[X->indices[i]]) + 1;
  char *s = elmo_malloc(len), *p = s;
  for (int64_t i = X->indptr[r]; i < X->indptr[r + 1]; i++) {
    const char *w = words->text[X->indices[i]];
    size_t n = strlen(w);
    if (p != s) *p++ = ' ';
    memcpy(p, w, n);
    p += n;
  }
  *p = '\0';
  return s;
}

/* FNV-1a over the texts, the tokenizer and max_len: the key of the token cache. */
static uint64_t token_key(const elmo_tokenizer *tok, int64_t T, char **texts, int64_t n) {
  uint64_t h = 1469598103934665603ull ^ elmo_tokenizer_hash(tok);
  h = (h ^ (uint64_t)T) * 1099511628211ull;
  for (int64_t i = 0; i < n; i++) {
    for (const unsigned char *p = (const unsigned char *)texts[i]; *p; p++) h = (h ^ *p) * 1099511628211ull;
    h = (h ^ 0x0a) * 1099511628211ull;
  }
  return h;
}

/* Token cache file: "ELMOTOK1", n, T, ids [n*T] int32, mask [n*T] uint8. */
static int cache_read(const char *path, elmo_split *s, int64_t T) {
  FILE *fp = fopen(path, "rb");
  if (!fp) return 0;
  char magic[8];
  int64_t hdr[2];
  int ok = fread(magic, 1, 8, fp) == 8 && !memcmp(magic, "ELMOTOK1", 8) && fread(hdr, sizeof hdr, 1, fp) == 1 &&
           hdr[0] == s->n && hdr[1] == T;
  if (ok) {
    s->ids = elmo_malloc(sizeof(int32_t) * (size_t)(s->n * T));
    s->mask = elmo_malloc((size_t)(s->n * T));
    ok = fread(s->ids, sizeof(int32_t), (size_t)(s->n * T), fp) == (size_t)(s->n * T) &&
         fread(s->mask, 1, (size_t)(s->n * T), fp) == (size_t)(s->n * T);
    if (!ok) { ELMO_FREE(s->ids); ELMO_FREE(s->mask); }
  }
  fclose(fp);
  return ok;
}

static void cache_write(const char *path, const elmo_split *s, int64_t T) {
  elmo_outfile o;
  elmo_err e;
  if (elmo_open_out(&o, path, &e)) return; /* the cache is an optimisation: never fatal */
  int64_t hdr[2] = {s->n, T};
  fwrite("ELMOTOK1", 1, 8, o.fp);
  fwrite(hdr, sizeof hdr, 1, o.fp);
  fwrite(s->ids, sizeof(int32_t), (size_t)(s->n * T), o.fp);
  fwrite(s->mask, 1, (size_t)(s->n * T), o.fp);
  elmo_commit(&o, &e);
}

/* Tokenizes a split, or reads the ids from the cache in cache_dir (NULL: no cache) when the
 * same texts were tokenized with the same vocab and max_len before. */
static int tokenize_all(elmo_split *s, const elmo_tokenizer *tok, int64_t T, char **texts, const char *cache_dir) {
  s->T = T;
  char *path = NULL;
  if (cache_dir && cache_dir[0]) {
    char name[64];
    snprintf(name, sizeof name, "tokens-%016llx.bin", (unsigned long long)token_key(tok, T, texts, s->n));
    path = elmo_path_join(cache_dir, name);
    if (cache_read(path, s, T)) {
      free(path);
      return 1;
    }
  }
  s->ids = elmo_malloc(sizeof(int32_t) * (size_t)(s->n * T));
  s->mask = elmo_malloc((size_t)(s->n * T));
  for (int64_t i = 0; i < s->n; i++) elmo_tokenize(tok, texts[i], (int)T, s->ids + i * T, s->mask + i * T);
  if (path) {
    elmo_err e;
    if (elmo_mkdirs(cache_dir, &e) == ELMO_OK) cache_write(path, s, T);
    free(path);
  }
  return 0;
}

/* Reads one split's inputs and labels. texts_out receives raw texts (transformer) or NULL. */
static int load_split(const elmo_config *cfg, const char *file, const char *labels, elmo_split *s,
                      elmo_texts *texts, elmo_err *err) {
  int rc = ELMO_OK;
  char *path = elmo_data_path(cfg->data_dir, file);
  if (!strcmp(cfg->data_format, "bow")) {
    rc = elmo_read_bow(path, &s->X, &s->Y, err);
  } else if (!strcmp(cfg->data_format, "text")) {
    rc = elmo_read_lines(path, texts, err);
    if (rc == ELMO_OK) {
      char *lp = elmo_data_path(cfg->data_dir, labels);
      rc = elmo_read_sparse(lp, &s->Y, err);
      if (rc == ELMO_OK && s->Y.rows != texts->n)
        rc = elmo_fail(err, ELMO_EINPUT, "%s: %lld label rows but %s has %lld texts (expected equal counts)", lp,
                       (long long)s->Y.rows, path, (long long)texts->n);
      free(lp);
    }
  } else {
    rc = elmo_read_jsonl(path, 0, -1, texts, &s->Y, err);
  }
  s->n = s->Y.rows;
  free(path);
  return rc;
}

/* Moves a random val_fraction of train rows (fixed by seed) into val. */
static void carve_validation(elmo_dataset *ds, const elmo_config *cfg) {
  int64_t n = ds->train.n, nv = (int64_t)(cfg->val_fraction * (double)n);
  if (nv <= 0 || nv >= n) return;
  uint8_t *is_val = elmo_calloc((size_t)n, 1);
  int64_t *perm = elmo_malloc(sizeof(int64_t) * (size_t)n);
  for (int64_t i = 0; i < n; i++) perm[i] = i;
  for (int64_t i = n - 1; i > 0; i--) { /* Fisher-Yates with counter-based bits */
    int64_t j = (int64_t)(elmo_rand_u32(cfg->seed, 0, ELMO_RNG_SPLIT, (uint64_t)i) % (uint64_t)(i + 1));
    int64_t t = perm[i]; perm[i] = perm[j]; perm[j] = t;
  }
  for (int64_t i = 0; i < nv; i++) is_val[perm[i]] = 1;
  int64_t *tr = elmo_malloc(sizeof(int64_t) * (size_t)n), *va = elmo_malloc(sizeof(int64_t) * (size_t)nv);
  int64_t nt = 0, nvv = 0;
  for (int64_t i = 0; i < n; i++) {
    if (is_val[i]) va[nvv++] = i;
    else tr[nt++] = i;
  }
  elmo_split old = ds->train, t = {0}, v = {0};
  elmo_csr_select_rows(&old.Y, tr, nt, &t.Y);
  elmo_csr_select_rows(&old.Y, va, nvv, &v.Y);
  if (old.X.indptr) {
    elmo_csr_select_rows(&old.X, tr, nt, &t.X);
    elmo_csr_select_rows(&old.X, va, nvv, &v.X);
  }
  if (old.ids) {
    int64_t T = ds->T;
    t.ids = elmo_malloc(sizeof(int32_t) * (size_t)(nt * T));
    t.mask = elmo_malloc((size_t)(nt * T));
    v.ids = elmo_malloc(sizeof(int32_t) * (size_t)(nvv * T));
    v.mask = elmo_malloc((size_t)(nvv * T));
    for (int64_t i = 0; i < nt; i++) {
      memcpy(t.ids + i * T, old.ids + tr[i] * T, sizeof(int32_t) * (size_t)T);
      memcpy(t.mask + i * T, old.mask + tr[i] * T, (size_t)T);
    }
    for (int64_t i = 0; i < nvv; i++) {
      memcpy(v.ids + i * T, old.ids + va[i] * T, sizeof(int32_t) * (size_t)T);
      memcpy(v.mask + i * T, old.mask + va[i] * T, (size_t)T);
    }
  }
  t.n = nt;
  v.n = nvv;
  t.T = v.T = old.T;
  split_free(&ds->train);
  ds->train = t;
  ds->val = v;
  free(is_val); free(perm); free(tr); free(va);
}

static int prepare_text(elmo_dataset *ds, const elmo_config *cfg, elmo_texts *trt, elmo_texts *tet, elmo_err *err) {
  int rc = ELMO_OK;
  elmo_texts words = {0};
  if (!strcmp(cfg->data_format, "bow")) {
    if (!cfg->feature_words[0])
      return elmo_fail(err, ELMO_EINPUT, "model.encoder.kind: transformer on bow data needs data.feature_words "
                                         "(the feature vocabulary turned into pseudo-text)");
    char *wp = elmo_data_path(cfg->data_dir, cfg->feature_words);
    rc = elmo_read_lines(wp, &words, err);
    if (rc == ELMO_OK && words.n < ds->num_features)
      rc = elmo_fail(err, ELMO_EINPUT, "%s: %lld words but the data has %lld features (expected one word per feature)",
                     wp, (long long)words.n, (long long)ds->num_features);
    free(wp);
    if (rc) return rc;
    trt->n = ds->train.n;
    trt->text = elmo_malloc(sizeof(char *) * (size_t)trt->n);
    for (int64_t i = 0; i < trt->n; i++) trt->text[i] = bow_text(&ds->train.X, i, &words);
    tet->n = ds->test.n;
    tet->text = elmo_malloc(sizeof(char *) * (size_t)tet->n);
    for (int64_t i = 0; i < tet->n; i++) tet->text[i] = bow_text(&ds->test.X, i, &words);
    elmo_texts_free(&words);
    elmo_csr_free(&ds->train.X);
    elmo_csr_free(&ds->test.X);
  }
  int lowercase = 1;
  if (cfg->vocab[0]) {
    ds->vocab_path = elmo_path_join(NULL, cfg->vocab);
  } else if (cfg->pretrained[0]) {
    elmo_hf_info hf;
    rc = elmo_hf_read_config(cfg->pretrained, &hf, err);
    if (rc) return rc;
    lowercase = hf.lowercase;
    ds->vocab_path = elmo_path_join(cfg->pretrained, "vocab.txt");
  } else {
    return elmo_fail(err, ELMO_EINPUT, "data.vocab: a WordPiece vocab.txt is needed for the transformer encoder "
                                       "(or model.encoder.pretrained)");
  }
  elmo_tokenizer *tok = NULL;
  rc = elmo_tokenizer_load(&tok, ds->vocab_path, lowercase, err);
  if (rc) return rc;
  ds->vocab_size = elmo_tokenizer_vocab_size(tok);
  ds->T = cfg->max_len;
  char *cache = cfg->out_dir[0] ? elmo_path_join(cfg->out_dir, "cache") : NULL;
  int hits = tokenize_all(&ds->train, tok, ds->T, trt->text, cache);
  hits += tokenize_all(&ds->test, tok, ds->T, tet->text, cache);
  ds->token_cache_hits = hits;
  free(cache);
  elmo_tokenizer_free(&tok);
  return ELMO_OK;
}

int elmo_dataset_load(elmo_dataset *ds, const elmo_config *cfg, int verbose, elmo_err *err) {
  memset(ds, 0, sizeof *ds);
  elmo_texts trt = {0}, tet = {0};
  int rc = load_split(cfg, cfg->train_file, cfg->train_labels, &ds->train, &trt, err);
  if (!rc) rc = load_split(cfg, cfg->test_file, cfg->test_labels, &ds->test, &tet, err);
  if (rc) goto done;
  ds->num_labels = ds->train.Y.cols > ds->test.Y.cols ? ds->train.Y.cols : ds->test.Y.cols;
  ds->train.Y.cols = ds->test.Y.cols = ds->num_labels;
  ds->num_features = ds->train.X.cols;
  if (ds->train.X.indptr && ds->test.X.cols != ds->train.X.cols) {
    rc = elmo_fail(err, ELMO_EINPUT, "%s: %lld features but the training file has %lld (expected the same)",
                   cfg->test_file, (long long)ds->test.X.cols, (long long)ds->train.X.cols);
    goto done;
  }
  if (!strcmp(cfg->encoder_kind, "transformer")) {
    rc = prepare_text(ds, cfg, &trt, &tet, err);
    if (rc) goto done;
  } else if (!ds->train.X.indptr) {
    rc = elmo_fail(err, ELMO_EINPUT, "model.encoder.kind: the sparse encoder needs bow data (data.format is \"%s\")",
                   cfg->data_format);
    goto done;
  }
  if (cfg->filter_file[0]) {
    char *fp = elmo_data_path(cfg->data_dir, cfg->filter_file);
    rc = elmo_read_filter(fp, ds->test.n, ds->num_labels, &ds->filter, err);
    free(fp);
    if (rc) goto done;
  }
  ds->label_freq = elmo_malloc(sizeof(int64_t) * (size_t)ds->num_labels);
  elmo_csr_col_counts(&ds->train.Y, ds->label_freq);
  int64_t *all = elmo_malloc(sizeof(int64_t) * (size_t)ds->train.n);
  for (int64_t i = 0; i < ds->train.n; i++) all[i] = i;
  elmo_csr_select_rows(&ds->train.Y, all, ds->train.n, &ds->train_Y_all);
  free(all);
  carve_validation(ds, cfg);
  if (verbose)
    fprintf(stderr, "data: %s: train %lld rows, val %lld, test %lld, %lld labels, %s\n", cfg->data_dir,
            (long long)ds->train.n, (long long)ds->val.n, (long long)ds->test.n, (long long)ds->num_labels,
            ds->train.ids ? (ds->token_cache_hits == 2 ? "token ids from the cache" : "tokenized") : "bow features");
done:
  elmo_texts_free(&trt);
  elmo_texts_free(&tet);
  if (rc) elmo_dataset_free(ds);
  return rc;
}

void elmo_batch_gather(const elmo_split *s, const int64_t *rows, int64_t B, elmo_batch_buf *bb, elmo_batch *out) {
  memset(out, 0, sizeof *out);
  out->B = B;
  elmo_grow((void **)&bb->rows, &bb->cap_rows, (size_t)B + 1, sizeof(int64_t));
  size_t cr = bb->cap_rows;
  bb->x_indptr = elmo_realloc(bb->x_indptr, sizeof(int64_t) * cr);
  bb->y_indptr = elmo_realloc(bb->y_indptr, sizeof(int64_t) * cr);
  memcpy(bb->rows, rows, sizeof(int64_t) * (size_t)B);
  out->rows = bb->rows;
  /* labels */
  bb->y_indptr[0] = 0;
  for (int64_t i = 0; i < B; i++) bb->y_indptr[i + 1] = bb->y_indptr[i] + s->Y.indptr[rows[i] + 1] - s->Y.indptr[rows[i]];
  elmo_grow((void **)&bb->y_indices, &bb->cap_y, (size_t)bb->y_indptr[B] + 1, sizeof(int32_t));
  for (int64_t i = 0; i < B; i++)
    memcpy(bb->y_indices + bb->y_indptr[i], s->Y.indices + s->Y.indptr[rows[i]],
           sizeof(int32_t) * (size_t)(bb->y_indptr[i + 1] - bb->y_indptr[i]));
  out->y_indptr = bb->y_indptr;
  out->y_indices = bb->y_indices;
  /* BoW features */
  if (s->X.indptr) {
    bb->x_indptr[0] = 0;
    for (int64_t i = 0; i < B; i++)
      bb->x_indptr[i + 1] = bb->x_indptr[i] + s->X.indptr[rows[i] + 1] - s->X.indptr[rows[i]];
    size_t cap = bb->cap_x;
    elmo_grow((void **)&bb->x_indices, &cap, (size_t)bb->x_indptr[B] + 1, sizeof(int32_t));
    if (cap != bb->cap_x) {
      bb->x_values = elmo_realloc(bb->x_values, sizeof(float) * cap);
      bb->cap_x = cap;
    }
    for (int64_t i = 0; i < B; i++) {
      int64_t src = s->X.indptr[rows[i]], n = bb->x_indptr[i + 1] - bb->x_indptr[i];
      memcpy(bb->x_indices + bb->x_indptr[i], s->X.indices + src, sizeof(int32_t) * (size_t)n);
      memcpy(bb->x_values + bb->x_indptr[i], s->X.data + src, sizeof(float) * (size_t)n);
    }
    out->x_indptr = bb->x_indptr;
    out->x_indices = bb->x_indices;
    out->x_values = bb->x_values;
  }
  /* tokens: rows are gathered into a contiguous block */
  if (s->ids) {
    int64_t T = s->T;
    size_t cap = bb->cap_tok;
    elmo_grow((void **)&bb->ids, &cap, (size_t)(B * T), sizeof(int32_t));
    if (cap != bb->cap_tok) {
      bb->mask = elmo_realloc(bb->mask, cap);
      bb->cap_tok = cap;
    }
    for (int64_t i = 0; i < B; i++) {
      memcpy(bb->ids + i * T, s->ids + rows[i] * T, sizeof(int32_t) * (size_t)T);
      memcpy(bb->mask + i * T, s->mask + rows[i] * T, (size_t)T);
    }
    out->T = T;
    out->ids = bb->ids;
    out->mask = bb->mask;
  }
}

void elmo_batch_buf_free(elmo_batch_buf *bb) {
  free(bb->rows); free(bb->x_indptr); free(bb->y_indptr);
  free(bb->x_indices); free(bb->y_indices); free(bb->x_values);
  free(bb->ids); free(bb->mask);
  memset(bb, 0, sizeof *bb);
}
