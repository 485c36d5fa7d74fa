/* train.c: the training loop. Per epoch: a seeded permutation (counter-based, so resuming at
 * any step reproduces it), batches through the backend, LR schedules per part, evaluation every
 * eval.every_epochs with metrics.jsonl, best and last checkpoints, early stopping. */
#include "train.h"
#include "elmo_config.h"
#include "checkpoint.h"
#include "dataset.h"
#include "evaluate.h"
#include "numerics.h"
#include "optim.h"
#include "reader.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if ELMO_HAVE_CUDA
#include "cuda/backend_cuda.h"
#endif

int elmo_pick_backend(const char *device, const elmo_backend **out, elmo_err *err) {
  if (!strcmp(device, "cpu")) {
    *out = elmo_backend_cpu();
    return ELMO_OK;
  }
  elmo_err cerr = {0};
  const elmo_backend *cuda = elmo_backend_cuda(&cerr);
  if (cuda) {
    *out = cuda;
    return ELMO_OK;
  }
  if (!strcmp(device, "cuda"))
    return elmo_fail(err, ELMO_ERUNTIME, "--device cuda: %s", cerr.msg[0] ? cerr.msg : "CUDA backend unavailable");
  fprintf(stderr, "elmo: %s; using the CPU reference backend\n", cerr.msg[0] ? cerr.msg : "no CUDA backend");
  *out = elmo_backend_cpu();
  return ELMO_OK;
}

int elmo_prepare_desc(const elmo_backend *be, const elmo_config *cfg, elmo_model_desc *md, elmo_err *err) {
#if ELMO_HAVE_CUDA
  /* sharded over GPUs (training.gpus != 1), each GPU chooses the chunks of its share of the labels: the
   * whole classifier need not fit one GPU */
  if (!strcmp(be->name, "cuda") && cfg->gpus == 1) return elmo_cuda_choose_chunks(cfg, md, err);
#else
  (void)be; (void)cfg; (void)md; (void)err;
#endif
  return ELMO_OK;
}

/* The epoch's row order: Fisher-Yates driven by (seed, epoch, SHUFFLE, i). */
static void epoch_perm(uint64_t seed, int64_t epoch, int64_t n, int64_t *perm) {
  for (int64_t i = 0; i < n; i++) perm[i] = i;
  for (int64_t i = n - 1; i > 0; i--) {
    int64_t j = (int64_t)(elmo_rand_u32(seed, (uint64_t)epoch, ELMO_RNG_SHUFFLE, (uint64_t)i) % (uint64_t)(i + 1));
    int64_t t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
}

typedef struct run {
  const elmo_config *cfg;
  const elmo_backend *be;
  elmo_model *m;
  elmo_model_desc md;
  elmo_dataset ds;
  elmo_train_state st;
  double *inv_prop;            /* [L] */
  char *metrics_path, *loss_path;
  double t_start, train_seconds;
  int64_t spe, total, samples;
  double last_loss;
  int tty;
  double *step_ms;             /* [total] wall time of each step run in this process, ms */
  int64_t n_step_ms;
  int64_t best_step;           /* st.step when "best" was last written in this process, else -1 */
} run;

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Median step time over this process's steps, skipping the first 5 (warm-up); 0 if none. */
static double median_step_ms(const run *r) {
  int64_t skip = r->n_step_ms > 10 ? 5 : 0, n = r->n_step_ms - skip;
  if (n <= 0) return 0;
  double *v = elmo_malloc(sizeof(double) * (size_t)n);
  memcpy(v, r->step_ms + skip, sizeof(double) * (size_t)n);
  qsort(v, (size_t)n, sizeof(double), cmp_double);
  double m = v[n / 2];
  free(v);
  return m;
}

static void progress(run *r, int64_t epoch, double sps) {
  double eta = sps > 0 ? (double)(r->total - r->st.step) * (double)r->cfg->batch_size / sps : 0;
  double mem = (double)r->be->peak_bytes(r->m) / (1024.0 * 1024.0 * 1024.0);
  if (r->tty) {
    int w = 24, fill = (int)(w * (double)r->st.step / (double)r->total);
    char bar[32];
    for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
    bar[w] = '\0';
    fprintf(stderr, "\r[%s] epoch %lld step %lld/%lld  %.0f samples/s  ETA %.0fs  loss %.4f  mem %.2f GiB ", bar,
            (long long)epoch + 1, (long long)r->st.step, (long long)r->total, sps, eta, r->last_loss, mem);
  } else {
    fprintf(stderr, "epoch %lld step %lld/%lld loss %.4f samples/s %.0f eta %.0fs mem %.2f GiB\n",
            (long long)epoch + 1, (long long)r->st.step, (long long)r->total, r->last_loss, sps, eta, mem);
  }
}

static void append_line(const char *path, const char *line) {
  FILE *fp = fopen(path, "a");
  if (!fp) return;
  fprintf(fp, "%s\n", line);
  fclose(fp);
}

/* metrics.jsonl grows one object per evaluation; rewritten through a temp file each time. */
static int write_metrics_line(run *r, const char *json, elmo_err *err) {
  FILE *in = fopen(r->metrics_path, "rb");
  elmo_outfile o;
  int rc = elmo_open_out(&o, r->metrics_path, err);
  if (rc) {
    if (in) fclose(in);
    return rc;
  }
  if (in) {
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, o.fp);
    fclose(in);
  }
  fprintf(o.fp, "%s\n", json);
  return elmo_commit(&o, err);
}

static void add_metrics(cJSON *j, const elmo_metrics *m) {
  char key[32];
  for (int i = 0; i < m->k; i++) { snprintf(key, sizeof key, "P@%d", i + 1); cJSON_AddNumberToObject(j, key, m->P[i]); }
  for (int i = 0; i < m->k; i++) { snprintf(key, sizeof key, "nDCG@%d", i + 1); cJSON_AddNumberToObject(j, key, m->nDCG[i]); }
  for (int i = 0; i < m->k; i++) { snprintf(key, sizeof key, "PSP@%d", i + 1); cJSON_AddNumberToObject(j, key, m->PSP[i]); }
  for (int i = 0; i < m->k; i++) { snprintf(key, sizeof key, "PSnDCG@%d", i + 1); cJSON_AddNumberToObject(j, key, m->PSnDCG[i]); }
}

/* Evaluates test (and validation), logs, keeps the best checkpoint. Returns 1 to stop early. */
static int evaluate_epoch(run *r, int64_t epoch, int last, elmo_err *err, int *rc) {
  const elmo_config *cfg = r->cfg;
  elmo_eval_result te, ve = {0};
  int keep = last ? (int)cfg->topk : (int)cfg->k;
  *rc = elmo_evaluate(r->be, r->m, cfg, &r->ds.test, &r->ds.filter, r->inv_prop, keep, &te, err);
  if (*rc) return 1;
  if (r->ds.val.n) {
    *rc = elmo_evaluate(r->be, r->m, cfg, &r->ds.val, NULL, r->inv_prop, (int)cfg->k, &ve, err);
    if (*rc) { elmo_eval_result_free(&te); return 1; }
  }
  double sel = elmo_metric_by_name(r->ds.val.n ? &ve.metrics : &te.metrics, cfg->select_metric);
  cJSON *j = cJSON_CreateObject();
  cJSON_AddNumberToObject(j, "epoch", (double)epoch + 1);
  cJSON_AddNumberToObject(j, "step", (double)r->st.step);
  add_metrics(j, &te.metrics);
  if (r->ds.val.n) {
    cJSON *v = cJSON_AddObjectToObject(j, "val");
    add_metrics(v, &ve.metrics);
  }
  cJSON_AddNumberToObject(j, "loss", isfinite(r->last_loss) ? r->last_loss : -1);
  cJSON_AddNumberToObject(j, "samples_per_s", r->train_seconds > 0 ? (double)r->samples / r->train_seconds : 0);
  cJSON_AddNumberToObject(j, "step_ms_median", median_step_ms(r));
  cJSON_AddNumberToObject(j, "seconds", elmo_now() - r->t_start);
  cJSON_AddNumberToObject(j, "eval_seconds", te.seconds);
  cJSON_AddNumberToObject(j, "peak_mem_gib", (double)r->be->peak_bytes(r->m) / (1024.0 * 1024.0 * 1024.0));
  char *s = cJSON_PrintUnformatted(j);
  cJSON_Delete(j);
  *rc = write_metrics_line(r, s, err);
  free(s);
  if (r->tty) fputc('\n', stderr);
  fprintf(stderr, "eval epoch %lld: P@1 %.4f P@3 %.4f P@5 %.4f PSP@1 %.4f (%s %.4f%s) %.1fs\n", (long long)epoch + 1,
          te.metrics.P[0], te.metrics.k >= 3 ? te.metrics.P[2] : NAN, te.metrics.k >= 5 ? te.metrics.P[4] : NAN,
          te.metrics.PSP[0], cfg->select_metric, sel, r->ds.val.n ? " on val" : "", te.seconds);
  int stop = 0;
  if (!*rc && sel > r->st.best) {
    r->st.best = sel;
    r->st.best_epoch = epoch + 1;
    r->st.bad_evals = 0;
    if (cfg->save_checkpoints) {
      char *dir = elmo_path_join(cfg->out_dir, "best");
      *rc = elmo_checkpoint_save(dir, r->be, r->m, &r->md, cfg, &r->st, r->ds.vocab_path, err);
      r->best_step = *rc ? -1 : r->st.step;
      free(dir);
    }
  } else if (!*rc) {
    r->st.bad_evals++;
    if (cfg->patience > 0 && r->st.bad_evals >= cfg->patience) {
      fprintf(stderr, "early stopping: %s did not improve for %lld evaluations\n", cfg->select_metric,
              (long long)r->st.bad_evals);
      stop = 1;
    }
  }
  if (!*rc && stop && !last) { /* early stop: the final predictions need all eval.topk ranks */
    elmo_eval_result_free(&te);
    *rc = elmo_evaluate(r->be, r->m, cfg, &r->ds.test, &r->ds.filter, r->inv_prop, (int)cfg->topk, &te, err);
    if (*rc) {
      elmo_eval_result_free(&ve);
      return 1;
    }
  }
  if (!*rc && (last || stop)) {
    char *p = elmo_path_join(cfg->out_dir, "predictions.txt");
    *rc = elmo_write_topk(p, r->ds.test.n, r->ds.num_labels, te.k, te.topk, te.scores, err);
    free(p);
    fprintf(stderr, "\ntest metrics after epoch %lld (%s):\n", (long long)epoch + 1, r->be->name);
    elmo_metrics_print(&te.metrics, stdout);
    fflush(stdout);
  }
  elmo_eval_result_free(&te);
  elmo_eval_result_free(&ve);
  return stop || *rc;
}

static int save_last(run *r, elmo_err *err) {
  if (!r->cfg->save_checkpoints) return ELMO_OK;
  char *dir = elmo_path_join(r->cfg->out_dir, "last");
  /* nothing has changed since "best" was written at this step: link its tensors instead of a second copy */
  char *best = r->best_step == r->st.step ? elmo_path_join(r->cfg->out_dir, "best") : NULL;
  int rc = elmo_checkpoint_save_as(dir, best, r->be, r->m, &r->md, r->cfg, &r->st, r->ds.vocab_path, err);
  free(best);
  free(dir);
  return rc;
}

/* Runs steps of one epoch from the state's step; returns rc. */
static int train_epoch(run *r, int64_t epoch, int64_t *perm, elmo_batch_buf *bb, elmo_err *err) {
  const elmo_config *cfg = r->cfg;
  int64_t n = r->ds.train.n, bs = cfg->batch_size;
  int64_t stop = cfg->max_steps > 0 && cfg->max_steps < r->total ? cfg->max_steps : r->total;
  epoch_perm(cfg->seed, epoch, n, perm);
  double t_prog = elmo_now();
  for (int64_t i = r->st.step - epoch * r->spe; i < r->spe && r->st.step < stop; i++) {
    int64_t B = n - i * bs < bs ? n - i * bs : bs;
    elmo_batch b;
    elmo_batch_gather(&r->ds.train, perm + i * bs, B, bb, &b);
    int64_t s = r->st.step;
    elmo_step step = {.step = s, .lr_encoder = elmo_lr_at(&cfg->enc_opt, s, r->total),
                      .lr_classifier = elmo_lr_at(&cfg->cls_opt, s, r->total),
                      .compute_loss = (s % cfg->log_every == 0) || s + 1 == stop};
    double t0 = elmo_now(), loss;
    int rc = r->be->train_step(r->m, &b, &step, &loss, err);
    if (rc) return rc;
    double dt = elmo_now() - t0;
    r->train_seconds += dt;
    r->step_ms[r->n_step_ms++] = 1e3 * dt;
    r->samples += B;
    r->st.step++;
    if (step.compute_loss) {
      r->last_loss = loss / (double)B;
      char line[96];
      snprintf(line, sizeof line, "%lld\t%.9g", (long long)s, loss);
      append_line(r->loss_path, line);
    }
    double now = elmo_now();
    if (step.compute_loss && (r->tty ? now - t_prog > 0.2 : now - t_prog > 5.0)) {
      progress(r, epoch, (double)r->samples / r->train_seconds);
      t_prog = now;
    }
  }
  return ELMO_OK;
}

static int setup(run *r, const elmo_config *cfg, const elmo_train_opts *o, elmo_err *err) {
  r->cfg = cfg;
  r->tty = isatty(2);
  r->st.best = -1.0;
  r->last_loss = NAN;
  int rc = elmo_pick_backend(o->device ? o->device : "auto", &r->be, err);
  if (!rc) rc = elmo_dataset_load(&r->ds, cfg, 1, err);
  if (rc) return rc;
  rc = elmo_model_desc_init(&r->md, cfg, r->ds.num_labels, r->ds.num_features, r->ds.vocab_size, r->ds.T,
                            r->ds.label_freq, err);
  if (!rc) rc = elmo_prepare_desc(r->be, cfg, &r->md, err);
  if (!rc) rc = r->be->create(cfg, &r->md, &r->m, err);
  if (rc) return rc;
  char chunks[64];
  if (strcmp(r->be->name, "cuda") || cfg->gpus == 1)
    snprintf(chunks, sizeof chunks, "in %lld chunk(s)", (long long)r->md.n_chunks);
  else if (cfg->gpus > 1)
    snprintf(chunks, sizeof chunks, "sharded over %lld GPUs", (long long)cfg->gpus);
  else
    snprintf(chunks, sizeof chunks, "over every GPU of this machine");
  fprintf(stderr, "model: %s encoder (%lld parameters, %s), classifier [%lld, %lld] %s %s, backend %s\n",
          cfg->encoder_kind, (long long)r->md.enc_numel, cfg->encoder_dtype, (long long)r->md.L_pad,
          (long long)r->md.d, cfg->classifier_dtype, chunks, r->be->name);
  if (o->resume) {
    rc = elmo_checkpoint_load(o->resume, r->be, r->m, &r->md, &r->st, err);
    if (rc) return rc;
    fprintf(stderr, "resumed from %s at step %lld (epoch %lld)\n", o->resume, (long long)r->st.step,
            (long long)r->st.epoch);
  }
  r->inv_prop = elmo_malloc(sizeof(double) * (size_t)r->ds.num_labels);
  double A, B;
  elmo_eval_AB(cfg, &A, &B);
  elmo_inv_propensity(&r->ds.train_Y_all, A, B, r->inv_prop);
  if (strcmp(r->be->name, "cuda") && cfg->gpus != 1)
    fprintf(stderr, "elmo: training.gpus %lld applies to the CUDA backend; the CPU reference runs on this machine's "
            "cores\n", (long long)cfg->gpus);
  rc = elmo_mkdirs(cfg->out_dir, err);
  r->metrics_path = elmo_path_join(cfg->out_dir, "metrics.jsonl");
  r->loss_path = elmo_path_join(cfg->out_dir, "loss.tsv");
  if (!o->resume) {
    remove(r->metrics_path);
    remove(r->loss_path);
  }
  r->spe = (r->ds.train.n + cfg->batch_size - 1) / cfg->batch_size;
  r->total = r->spe * cfg->epochs;
  r->step_ms = elmo_calloc((size_t)r->total + 1, sizeof(double));
  return rc;
}

static void teardown(run *r) {
  if (r->m) r->be->destroy(&r->m);
  elmo_model_desc_free(&r->md);
  elmo_dataset_free(&r->ds);
  free(r->inv_prop);
  free(r->step_ms);
  free(r->metrics_path);
  free(r->loss_path);
}

/* elmo-train --plan: the CUDA backend's memory plan for this config and data, no training. */
static int print_plan(const elmo_config *cfg, elmo_err *err) {
#if ELMO_HAVE_CUDA
  elmo_dataset ds;
  int rc = elmo_dataset_load(&ds, cfg, 1, err);
  if (rc) return rc;
  elmo_model_desc md;
  rc = elmo_model_desc_init(&md, cfg, ds.num_labels, ds.num_features, ds.vocab_size, ds.T, ds.label_freq, err);
  elmo_model_desc sd = md, *pd = &md; /* sharded: GPU 0's share (the largest); sd shares md's other tables */
  if (!rc && cfg->gpus > 1) {
    elmo_cuda_shard_desc(&md, (int)cfg->gpus, 0, &sd);
    pd = &sd;
    printf("classifier sharded by labels over %lld GPUs: the plan of GPU 0 (labels 0..%lld, encoder rows %lld)\n",
           (long long)cfg->gpus, (long long)sd.num_labels - 1, (long long)sd.enc_batch);
  }
  if (!rc) rc = elmo_cuda_choose_chunks(cfg, pd, err);
  if (!rc) {
    elmo_cuda_plan_t p;
    elmo_cuda_plan(pd, &p);
    elmo_cuda_plan_print(&p, pd, stdout);
  }
  if (pd == &sd) free(sd.head_labels); /* the shard's own head list */
  elmo_model_desc_free(&md);
  elmo_dataset_free(&ds);
  return rc;
#else
  (void)cfg;
  return elmo_fail(err, ELMO_EINPUT, "--plan: this elmo was built without CUDA (meson setup -Dcuda=enabled)");
#endif
}

int elmo_train_run(const elmo_config *cfg, const elmo_train_opts *o, elmo_err *err) {
  if (o->plan_only) return print_plan(cfg, err);
  run r = {0};
  r.best_step = -1;
  r.t_start = elmo_now();
  int rc = setup(&r, cfg, o, err);
  int64_t *perm = rc ? NULL : elmo_malloc(sizeof(int64_t) * (size_t)r.ds.train.n);
  elmo_batch_buf bb = {0};
  int64_t stop = cfg->max_steps > 0 && cfg->max_steps < r.total ? cfg->max_steps : r.total;
  for (int64_t e = r.st.epoch; !rc && e < cfg->epochs && r.st.step < stop; e++) {
    rc = train_epoch(&r, e, perm, &bb, err);
    if (rc) break;
    int done_epoch = r.st.step == (e + 1) * r.spe;
    if (done_epoch) r.st.epoch = e + 1;
    int last = r.st.step >= stop;
    int stopped = 0;
    if (done_epoch && ((e + 1) % cfg->every_epochs == 0 || last)) stopped = evaluate_epoch(&r, e, last, err, &rc);
    else if (last) stopped = evaluate_epoch(&r, e, 1, err, &rc);
    if (!rc && (last || stopped || (done_epoch && (e + 1) % cfg->checkpoint_every == 0))) rc = save_last(&r, err);
    if (stopped) break;
  }
  if (!rc)
    fprintf(stderr, "best %s %.4f at epoch %lld; checkpoints in %s/{best,last}; %.1fs (%.0f samples/s training)\n",
            cfg->select_metric, r.st.best, (long long)r.st.best_epoch, cfg->out_dir, elmo_now() - r.t_start,
            r.train_seconds > 0 ? (double)r.samples / r.train_seconds : 0.0);
  free(perm);
  elmo_batch_buf_free(&bb);
  teardown(&r);
  return rc;
}
