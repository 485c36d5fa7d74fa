/* eval_ckpt.c: elmo-eval CKPT_DIR: the same metrics as the training loop's evaluation, from a
 * checkpoint directory; predictions written in original label ids. */
#include "eval_ckpt.h"
#include "checkpoint.h"
#include "dataset.h"
#include "evaluate.h"
#include "reader.h"
#include "train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct ck_opts {
  const char *dir, *data, *split, *predictions, *device;
  int k, topk, json, gpus;
} ck_opts;

static const char ck_usage[] =
    "usage: elmo-eval CHECKPOINT_DIR [--data DIR] [--split tst|val|trn] [-k 5] [--topk 100]\n"
    "                 [--predictions FILE] [--device auto|cpu|cuda] [--gpus N] [--json]\n";

static int parse_int(const char *flag, const char *s, int lo, int hi, int *out) {
  char *end;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end || v < lo || v > hi) {
    fprintf(stderr, "elmo-eval: %s %s: expected an integer in [%d, %d]\n%s", flag, s, lo, hi, ck_usage);
    return ELMO_EINPUT;
  }
  *out = (int)v;
  return ELMO_OK;
}

static int ck_parse(int argc, char **argv, ck_opts *o) {
  memset(o, 0, sizeof *o);
  o->dir = argv[1];
  o->split = "tst";
  o->device = "auto";
  o->k = -1;
  o->topk = -1;
  o->gpus = 1;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    int more = i + 1 < argc;
    if (!strcmp(a, "--json")) o->json = 1;
    else if (!strcmp(a, "--data") && more) o->data = argv[++i];
    else if (!strcmp(a, "--split") && more) o->split = argv[++i];
    else if (!strcmp(a, "--predictions") && more) o->predictions = argv[++i];
    else if (!strcmp(a, "--device") && more) o->device = argv[++i];
    else if (!strcmp(a, "-k") && more) { if (parse_int("-k", argv[++i], 1, 100, &o->k)) return ELMO_EINPUT; }
    else if (!strcmp(a, "--gpus") && more) { if (parse_int("--gpus", argv[++i], 0, 32, &o->gpus)) return ELMO_EINPUT; }
    else if (!strcmp(a, "--topk") && more) { if (parse_int("--topk", argv[++i], 1, 100000, &o->topk)) return ELMO_EINPUT; }
    else {
      fprintf(stderr, "elmo-eval: unknown or incomplete option '%s'\n%s", a, ck_usage);
      return ELMO_EINPUT;
    }
  }
  if (strcmp(o->split, "tst") && strcmp(o->split, "val") && strcmp(o->split, "trn")) {
    fprintf(stderr, "elmo-eval: --split %s: expected tst, val or trn\n%s", o->split, ck_usage);
    return ELMO_EINPUT;
  }
  return ELMO_OK;
}

typedef struct ck_run {
  elmo_config cfg;
  elmo_dataset ds;
  elmo_model_desc md;
  const elmo_backend *be;
  elmo_model *m;
  double *w;
} ck_run;

static int ck_eval(ck_run *r, const ck_opts *o, elmo_err *err) {
  const char *sets[4];
  int n = 0;
  char data_set[1100], k_set[64], gpu_set[64];
  /* the GPUs to predict on are this run's choice, not the training run's (a checkpoint of a sharded
   * model is the same files as one GPU's) */
  snprintf(gpu_set, sizeof gpu_set, "training.gpus=%d", o->gpus);
  sets[n++] = gpu_set;
  if (o->data) { snprintf(data_set, sizeof data_set, "data.dir=%s", o->data); sets[n++] = data_set; }
  if (o->k > 0) { snprintf(k_set, sizeof k_set, "eval.k=%d", o->k); sets[n++] = k_set; }
  int rc = elmo_checkpoint_config(o->dir, &r->cfg, sets, n, err);
  if (!rc) rc = elmo_pick_backend(o->device, &r->be, err);
  if (!rc) rc = elmo_dataset_load(&r->ds, &r->cfg, 0, err);
  if (!rc) rc = elmo_model_desc_init(&r->md, &r->cfg, r->ds.num_labels, r->ds.num_features, r->ds.vocab_size,
                                     r->ds.T, r->ds.label_freq, err);
  if (!rc) rc = elmo_prepare_desc(r->be, &r->cfg, &r->md, err);
  if (!rc) rc = r->be->create(&r->cfg, &r->md, &r->m, err);
  if (!rc) rc = elmo_checkpoint_load(o->dir, r->be, r->m, &r->md, NULL, err);
  if (rc) return rc;
  const elmo_split *s = !strcmp(o->split, "tst") ? &r->ds.test : !strcmp(o->split, "val") ? &r->ds.val : &r->ds.train;
  if (s->n == 0) return elmo_fail(err, ELMO_EINPUT, "--split %s: the split is empty", o->split);
  r->w = elmo_malloc(sizeof(double) * (size_t)r->ds.num_labels);
  double A, B;
  elmo_eval_AB(&r->cfg, &A, &B);
  elmo_inv_propensity(&r->ds.train_Y_all, A, B, r->w);
  int keep = o->predictions ? (o->topk > 0 ? o->topk : (int)r->cfg.topk) : (int)r->cfg.k;
  elmo_eval_result res;
  rc = elmo_evaluate(r->be, r->m, &r->cfg, s, s == &r->ds.test ? &r->ds.filter : NULL, r->w, keep, &res, err);
  if (rc) return rc;
  if (o->predictions)
    rc = elmo_write_topk(o->predictions, s->n, r->ds.num_labels, res.k, res.topk, res.scores, err);
  if (!rc) {
    if (o->json) {
      char *j = elmo_metrics_json(&res.metrics);
      printf("%s\n", j);
      free(j);
    } else {
      elmo_metrics_print(&res.metrics, stdout);
    }
    fprintf(stderr, "elmo-eval: %s split %s: %lld rows, %lld labels, A=%.2f B=%.2f, backend %s, %.2fs\n", o->dir,
            o->split, (long long)s->n, (long long)r->ds.num_labels, A, B, r->be->name, res.seconds);
  }
  elmo_eval_result_free(&res);
  return rc;
}

int elmo_eval_checkpoint_main(int argc, char **argv) {
  ck_opts o;
  if (ck_parse(argc, argv, &o)) return ELMO_EINPUT;
  ck_run r;
  memset(&r, 0, sizeof r);
  elmo_err err = {0};
  int rc = ck_eval(&r, &o, &err);
  if (r.m) r.be->destroy(&r.m);
  elmo_model_desc_free(&r.md);
  elmo_dataset_free(&r.ds);
  free(r.w);
  return rc ? elmo_report("elmo-eval", &err) : 0;
}
