/* checkpoint.c: save and load checkpoint directories atomically (temp dir + rename). */
#include "checkpoint.h"
#include "safetensors.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct stream_ctx {
  const elmo_backend *be;
  elmo_model *m;
  int buf;
  size_t base;
} stream_ctx;

static int fill_from_model(void *ctx, size_t offset, void *out, size_t n, elmo_err *err) {
  stream_ctx *c = ctx;
  return c->be->buffer_io(c->m, c->buf, 0, c->base + offset, out, n, err);
}

/* One tensor = a byte range of a model buffer. */
typedef struct ckpt_tensor {
  char name[128];
  int buf;
  size_t byte_off;
  elmo_dtype dtype;
  int ndim;
  int64_t shape[2];
  size_t nbytes;
} ckpt_tensor;

static int list_tensors(const elmo_model_desc *md, int optimizer, ckpt_tensor **out) {
  int cap = 3 * md->n_enc_tensors + 4, n = 0;
  ckpt_tensor *t = elmo_calloc((size_t)cap, sizeof *t);
  static const char *suffix[3] = {"", ".exp_avg", ".exp_avg_sq"};
  static const int bufs[4] = {ELMO_BUF_ENC_PARAM, ELMO_BUF_ENC_M, ELMO_BUF_ENC_V, ELMO_BUF_ENC_KAHAN};
  for (int kind = optimizer ? 1 : 0; kind < (optimizer ? (md->enc_kahan ? 4 : 3) : 1); kind++) {
    size_t es = elmo_dtype_size(md->buf_dtype[bufs[kind]]);
    for (int i = 0; i < md->n_enc_tensors; i++) {
      const elmo_tensor_slot *s = &md->enc_tensors[i];
      ckpt_tensor *c = &t[n++];
      snprintf(c->name, sizeof c->name, "%s%s", s->name, kind == 3 ? ".kahan" : suffix[kind]);
      c->buf = bufs[kind];
      c->byte_off = (size_t)s->offset * es;
      c->dtype = md->buf_dtype[bufs[kind]];
      c->ndim = s->ndim;
      c->shape[0] = s->shape[0];
      c->shape[1] = s->shape[1];
      c->nbytes = (size_t)s->numel * es;
    }
  }
  if (!optimizer) {
    t[n++] = (ckpt_tensor){"classifier.weight", ELMO_BUF_CLS_W, 0, md->cls_dtype, 2, {md->L_pad, md->d},
                           elmo_buf_bytes(md, ELMO_BUF_CLS_W)};
  } else if (md->n_head) {
    t[n++] = (ckpt_tensor){"classifier.kahan", ELMO_BUF_CLS_KAHAN, 0, ELMO_BF16, 2, {md->n_head, md->d},
                           elmo_buf_bytes(md, ELMO_BUF_CLS_KAHAN)};
    t[n++] = (ckpt_tensor){"classifier.head_labels", ELMO_BUF_CLS_HEAD, 0, ELMO_I32, 1, {md->n_head, 0},
                           elmo_buf_bytes(md, ELMO_BUF_CLS_HEAD)};
  }
  *out = t;
  return n;
}

static int save_st(const char *path, const elmo_backend *be, elmo_model *m, const elmo_model_desc *md,
                   int optimizer, elmo_err *err) {
  ckpt_tensor *t;
  int n = list_tensors(md, optimizer, &t);
  stream_ctx *ctx = elmo_calloc((size_t)n + 1, sizeof *ctx);
  elmo_st_writer *w = elmo_st_writer_new();
  for (int i = 0; i < n; i++) {
    ctx[i] = (stream_ctx){be, m, t[i].buf, t[i].byte_off};
    elmo_st_add_stream(w, t[i].name, elmo_dtype_st_name(t[i].dtype), t[i].ndim, t[i].shape, t[i].nbytes,
                       fill_from_model, &ctx[i]);
  }
  char v[64];
  elmo_st_add_meta(w, "format", "elmo");
  snprintf(v, sizeof v, "%lld", (long long)md->num_labels);
  elmo_st_add_meta(w, "num_labels", v);
  snprintf(v, sizeof v, "%lld", (long long)md->d);
  elmo_st_add_meta(w, "hidden_size", v);
  elmo_st_add_meta(w, "classifier_dtype", elmo_dtype_st_name(md->cls_dtype));
  int rc = elmo_st_save(w, path, err);
  elmo_st_writer_free(&w);
  free(ctx);
  free(t);
  return rc;
}

static int write_text(const char *path, const char *text, elmo_err *err) {
  elmo_outfile o;
  int rc = elmo_open_out(&o, path, err);
  if (rc) return rc;
  fputs(text, o.fp);
  return elmo_commit(&o, err);
}

static int copy_file(const char *src, const char *dst, elmo_err *err) {
  FILE *in = fopen(src, "rb");
  if (!in) return elmo_fail(err, ELMO_EINPUT, "%s: cannot open", src);
  elmo_outfile o;
  int rc = elmo_open_out(&o, dst, err);
  if (rc) { fclose(in); return rc; }
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, o.fp);
  fclose(in);
  return elmo_commit(&o, err);
}

static char *state_json(const elmo_train_state *st, const elmo_config *cfg) {
  cJSON *j = cJSON_CreateObject();
  cJSON_AddNumberToObject(j, "step", (double)st->step);
  cJSON_AddNumberToObject(j, "epoch", (double)st->epoch);
  cJSON_AddNumberToObject(j, "best", st->best);
  cJSON_AddNumberToObject(j, "best_epoch", (double)st->best_epoch);
  cJSON_AddNumberToObject(j, "bad_evals", (double)st->bad_evals);
  cJSON_AddNumberToObject(j, "seed", (double)cfg->seed);
  cJSON_AddStringToObject(j, "rng", "counter-based philox4x32-10 (seed, step, stream, element)");
  char *s = cJSON_Print(j);
  cJSON_Delete(j);
  return s;
}

/* Hard-links from_dir/name to path: 1 when done (no from_dir, or a file system without links: 0). */
static int link_from(const char *from_dir, const char *name, const char *path) {
  if (!from_dir) return 0;
  char *src = elmo_path_join(from_dir, name);
  const int ok = link(src, path) == 0;
  free(src);
  return ok;
}

int elmo_checkpoint_save(const char *dir, const elmo_backend *be, elmo_model *m, const elmo_model_desc *md,
                         const elmo_config *cfg, const elmo_train_state *st, const char *vocab_path, elmo_err *err) {
  return elmo_checkpoint_save_as(dir, NULL, be, m, md, cfg, st, vocab_path, err);
}

int elmo_checkpoint_save_as(const char *dir, const char *same_as, const elmo_backend *be, elmo_model *m,
                            const elmo_model_desc *md, const elmo_config *cfg, const elmo_train_state *st,
                            const char *vocab_path, elmo_err *err) {
  size_t n = strlen(dir) + 32;
  char *tmp = elmo_malloc(n), *old = elmo_malloc(n);
  snprintf(tmp, n, "%s.tmp.%ld", dir, (long)getpid());
  snprintf(old, n, "%s.old.%ld", dir, (long)getpid());
  elmo_rmtree(tmp);
  int rc = elmo_mkdirs(tmp, err);
  char *p = NULL;
#define FILE_IN(name) (free(p), p = elmo_path_join(tmp, name))
  /* the tensors: links to same_as's files where the caller says they would be the same bytes */
  if (!rc && !link_from(same_as, "model.safetensors", FILE_IN("model.safetensors")))
    rc = save_st(p, be, m, md, 0, err);
  if (!rc && !link_from(same_as, "optimizer.safetensors", FILE_IN("optimizer.safetensors")))
    rc = save_st(p, be, m, md, 1, err);
  if (!rc) {
    char *c = elmo_config_to_json(cfg);
    rc = write_text(FILE_IN("config.json"), c, err);
    free(c);
  }
  if (!rc) {
    char *s = state_json(st, cfg);
    rc = write_text(FILE_IN("state.json"), s, err);
    free(s);
  }
  if (!rc && vocab_path) rc = copy_file(vocab_path, FILE_IN("vocab.txt"), err);
#undef FILE_IN
  free(p);
  if (!rc) {
    int had = elmo_file_exists(dir);
    if (had && rename(dir, old) != 0) rc = elmo_fail(err, ELMO_ERUNTIME, "%s: cannot move the old checkpoint aside", dir);
    if (!rc && rename(tmp, dir) != 0) rc = elmo_fail(err, ELMO_ERUNTIME, "%s: cannot rename %s into place", dir, tmp);
    if (had) elmo_rmtree(old);
  }
  if (rc) elmo_rmtree(tmp);
  free(tmp);
  free(old);
  return rc;
}

static int load_st(const char *path, const elmo_backend *be, elmo_model *m, const elmo_model_desc *md, int optimizer,
                   elmo_err *err) {
  elmo_st_file *f = NULL;
  int rc = elmo_st_open(&f, path, err);
  if (rc) return rc;
  ckpt_tensor *t;
  int n = list_tensors(md, optimizer, &t);
  for (int i = 0; i < n && !rc; i++) {
    const void *data = NULL;
    rc = elmo_st_expect(f, t[i].name, elmo_dtype_st_name(t[i].dtype), t[i].ndim, t[i].shape, &data, err);
    if (!rc) rc = be->buffer_io(m, t[i].buf, 1, t[i].byte_off, (void *)data, t[i].nbytes, err);
  }
  free(t);
  elmo_st_close(&f);
  return rc;
}

static int64_t json_int(const cJSON *j, const char *key, int64_t dflt) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
  return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : dflt;
}

static int load_state(const char *path, elmo_train_state *st, elmo_err *err) {
  FILE *fp = fopen(path, "rb");
  if (!fp) return elmo_fail(err, ELMO_EINPUT, "%s: missing (not a checkpoint directory?)", path);
  char buf[4096];
  size_t n = fread(buf, 1, sizeof buf - 1, fp);
  fclose(fp);
  buf[n] = '\0';
  cJSON *j = cJSON_Parse(buf);
  if (!j) return elmo_fail(err, ELMO_EINPUT, "%s: invalid JSON", path);
  st->step = json_int(j, "step", 0);
  st->epoch = json_int(j, "epoch", 0);
  const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "best");
  st->best = cJSON_IsNumber(b) ? b->valuedouble : -1.0;
  st->best_epoch = json_int(j, "best_epoch", 0);
  st->bad_evals = json_int(j, "bad_evals", 0);
  cJSON_Delete(j);
  return ELMO_OK;
}

int elmo_checkpoint_load(const char *dir, const elmo_backend *be, elmo_model *m, const elmo_model_desc *md,
                         elmo_train_state *st, elmo_err *err) {
  char *p = elmo_path_join(dir, "model.safetensors");
  int rc = load_st(p, be, m, md, 0, err);
  free(p);
  if (!rc && st) {
    p = elmo_path_join(dir, "optimizer.safetensors");
    rc = load_st(p, be, m, md, 1, err);
    free(p);
    if (!rc) {
      p = elmo_path_join(dir, "state.json");
      rc = load_state(p, st, err);
      free(p);
    }
  }
  return rc;
}

int elmo_checkpoint_config(const char *dir, elmo_config *cfg, const char *const *overrides, int n, elmo_err *err) {
  char *p = elmo_path_join(dir, "config.json");
  if (!elmo_file_exists(p)) {
    int rc = elmo_fail(err, ELMO_EINPUT, "%s: not a checkpoint directory (no config.json)", dir);
    free(p);
    return rc;
  }
  int rc = elmo_config_load(cfg, p, overrides, n, err);
  free(p);
  return rc;
}
