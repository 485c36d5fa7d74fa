/* elmo_eval.c: the elmo-eval command.
 *
 * Prediction-file mode scores any sparse prediction file against a ground truth with pyxclib's
 * metrics (metrics.h), so other tools' outputs can be compared with ours:
 *   elmo-eval --pred P --truth T --train TRN [-k 5] [-A a -B b] [--family amazon|wiki|other]
 *             [--filter F] [--remove-invalid] [--psp-train-aug] [--json]
 * Checkpoint mode (a directory as the first argument) is dispatched to its own entry point. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "common.h"
#include "csr.h"
#include "metrics.h"
#include "reader.h"
#include "eval_ckpt.h"

static const char *USAGE =
    "usage: elmo-eval --pred FILE --truth FILE --train FILE [-k 5] [-A a -B b]\n"
    "                 [--family amazon|wiki|other] [--filter FILE] [--remove-invalid]\n"
    "                 [--psp-train-aug] [--json]\n"
    "       elmo-eval CHECKPOINT_DIR [--data DIR] [--split tst|val|trn] [-k 5] [--topk 100]\n"
    "                 [--predictions FILE] [--device auto|cpu|cuda] [--gpus N] [--json]\n";

static const char *HELP =
    "Scores a sparse prediction file (header \"rows labels\", lines \"label:score ...\") with\n"
    "pyxclib's metrics: P@k, nDCG@k, PSP@k, PSnDCG@k, R@k, PSR@k for k = 1..K (percent, or\n"
    "fractions with --json). Only stored entries are ranked; ties go to the lower label id.\n"
    "  --pred FILE        predictions, same shape as --truth (.gz accepted everywhere)\n"
    "  --truth FILE       test label matrix (tst_X_Y.txt), binarised\n"
    "  --train FILE       train label matrix (trn_X_Y.txt) for the inverse propensities\n"
    "  -k K               metrics @1..K, 1 <= K <= 100 (default 5)\n"
    "  -A a, -B b         propensity parameters (default by family)\n"
    "  --family F         amazon (A=0.6 B=2.6), wiki (0.5/0.4) or other (0.55/1.5); default:\n"
    "                     guessed from the truth/train paths (\"amazon\", \"wiki\", else other)\n"
    "  --filter FILE      \"doc label\" pairs removed from the predictions before the top-k\n"
    "  --remove-invalid   drop test rows without labels (default: they count 0)\n"
    "  --psp-train-aug    propensities as Renee/ELMO with label augmentation: N + L rows,\n"
    "                     every label frequency + 1\n"
    "  --json             one JSON object {\"P@1\":...} on stdout instead of the table\n";

typedef struct eval_opts {
  const char *pred, *truth, *train, *filter;
  const char *family;      /* "amazon", "wiki", "other", or NULL = guess from the paths */
  int k;
  double A, B;
  int have_A, have_B;
  int remove_invalid, psp_train_aug, json, help;
} eval_opts;

/* ---------- argument parsing ---------- */

static int parse_int(const char *flag, const char *s, int lo, int hi, int *out, elmo_err *err) {
  char *end;
  long v = strtol(s, &end, 10);
  if (!*s || *end || v < lo || v > hi)
    return elmo_fail(err, ELMO_EINPUT, "%s: bad value '%s' (expected an integer in %d..%d)", flag, s, lo, hi);
  *out = (int)v;
  return ELMO_OK;
}

static int parse_double(const char *flag, const char *s, double *out, elmo_err *err) {
  char *end;
  double v = strtod(s, &end);
  if (!*s || *end || !isfinite(v))
    return elmo_fail(err, ELMO_EINPUT, "%s: bad value '%s' (expected a number)", flag, s);
  *out = v;
  return ELMO_OK;
}

/* Where a string-valued flag's value goes; NULL if the flag takes no string. */
static const char **string_slot(eval_opts *o, const char *flag) {
  if (!strcmp(flag, "--pred")) return &o->pred;
  if (!strcmp(flag, "--truth")) return &o->truth;
  if (!strcmp(flag, "--train")) return &o->train;
  if (!strcmp(flag, "--filter")) return &o->filter;
  if (!strcmp(flag, "--family")) return &o->family;
  return NULL;
}

static int is_number_flag(const char *flag) {
  return !strcmp(flag, "-k") || !strcmp(flag, "--k") || !strcmp(flag, "-A") || !strcmp(flag, "-B");
}

static int set_switch(eval_opts *o, const char *flag) {
  if (!strcmp(flag, "--remove-invalid")) o->remove_invalid = 1;
  else if (!strcmp(flag, "--psp-train-aug")) o->psp_train_aug = 1;
  else if (!strcmp(flag, "--json")) o->json = 1;
  else if (!strcmp(flag, "--help") || !strcmp(flag, "-h")) o->help = 1;
  else return 0;
  return 1;
}

static int set_number(eval_opts *o, const char *flag, const char *val, elmo_err *err) {
  if (flag[1] == 'A') { o->have_A = 1; return parse_double(flag, val, &o->A, err); }
  if (flag[1] == 'B') { o->have_B = 1; return parse_double(flag, val, &o->B, err); }
  return parse_int(flag, val, 1, ELMO_MAX_K, &o->k, err);
}

static int check_opts(const eval_opts *o, elmo_err *err) {
  if (o->help) return ELMO_OK;
  if (!o->pred) return elmo_fail(err, ELMO_EINPUT, "missing --pred FILE");
  if (!o->truth) return elmo_fail(err, ELMO_EINPUT, "missing --truth FILE");
  if (!o->train) return elmo_fail(err, ELMO_EINPUT, "missing --train FILE (the train label matrix, for propensities)");
  if (o->family && strcmp(o->family, "amazon") && strcmp(o->family, "wiki") && strcmp(o->family, "other"))
    return elmo_fail(err, ELMO_EINPUT, "--family: bad value '%s' (expected amazon, wiki or other)", o->family);
  if (o->have_A && o->A < 0) return elmo_fail(err, ELMO_EINPUT, "-A: %g is negative (expected A >= 0)", o->A);
  if (o->have_B && o->B <= 0) return elmo_fail(err, ELMO_EINPUT, "-B: %g (expected B > 0)", o->B);
  return ELMO_OK;
}

/* "--flag value" or "--flag=value"; returns ELMO_EINPUT with err set on a usage error. */
static int parse_args(int argc, char **argv, eval_opts *o, elmo_err *err) {
  memset(o, 0, sizeof *o);
  o->k = 5;
  for (int i = 1; i < argc && !o->help; i++) {
    char flag[64];
    const char *arg = argv[i], *val = NULL, *eq = strchr(arg, '=');
    size_t n = (arg[0] == '-' && arg[1] == '-' && eq) ? (size_t)(eq - arg) : strlen(arg);
    if (arg[0] != '-' || n >= sizeof flag)
      return elmo_fail(err, ELMO_EINPUT, "unexpected argument '%s'", arg);
    memcpy(flag, arg, n);
    flag[n] = '\0';
    if (n == strlen(arg) && set_switch(o, flag)) continue;
    const char **slot = string_slot(o, flag);
    if (!slot && !is_number_flag(flag)) return elmo_fail(err, ELMO_EINPUT, "unknown option '%s'", flag);
    if (n < strlen(arg)) val = arg + n + 1;
    else if (i + 1 < argc) val = argv[++i];
    else return elmo_fail(err, ELMO_EINPUT, "%s needs a value", flag);
    if (slot) *slot = val;
    else if (set_number(o, flag, val, err) != ELMO_OK) return ELMO_EINPUT;
  }
  return check_opts(o, err);
}

/* ---------- propensity parameters ---------- */

static int contains_nocase(const char *hay, const char *needle) {
  size_t n = strlen(needle);
  for (; *hay; hay++)
    if (!strncasecmp(hay, needle, n)) return 1;
  return 0;
}

/* The family from --family or the paths (truth first, then train); *guessed set when from paths. */
static const char *pick_family(const eval_opts *o, int *guessed) {
  *guessed = !o->family;
  if (o->family) return o->family;
  const char *paths[2] = {o->truth, o->train};
  for (int i = 0; i < 2; i++) {
    if (contains_nocase(paths[i], "amazon")) return "amazon";
    if (contains_nocase(paths[i], "wiki")) return "wiki";
  }
  return "other";
}

/* Parabel/PfastreXML defaults per family, then -A/-B override. */
static void pick_AB(const eval_opts *o, const char *family, double *A, double *B) {
  if (!strcmp(family, "amazon")) { *A = 0.6; *B = 2.6; }
  else if (!strcmp(family, "wiki")) { *A = 0.5; *B = 0.4; }
  else { *A = 0.55; *B = 1.5; }
  if (o->have_A) *A = o->A;
  if (o->have_B) *B = o->B;
}

/* ---------- prediction-file mode ---------- */

typedef struct eval_inputs {
  elmo_csr pred, truth, train, filter;
  int have_filter;
} eval_inputs;

static void free_inputs(eval_inputs *in) {
  elmo_csr_free(&in->pred);
  elmo_csr_free(&in->truth);
  elmo_csr_free(&in->train);
  if (in->have_filter) elmo_csr_free(&in->filter);
}

static int read_inputs(const eval_opts *o, eval_inputs *in, elmo_err *err) {
  memset(in, 0, sizeof *in);
  int rc = elmo_read_sparse(o->truth, &in->truth, err);
  if (rc == ELMO_OK) rc = elmo_read_sparse(o->pred, &in->pred, err);
  if (rc == ELMO_OK && (in->pred.rows != in->truth.rows || in->pred.cols != in->truth.cols))
    rc = elmo_fail(err, ELMO_EINPUT,
                   "%s: shape %lld x %lld does not match the ground truth %s: %lld x %lld "
                   "(expected the same rows and labels)", o->pred, (long long)in->pred.rows,
                   (long long)in->pred.cols, o->truth, (long long)in->truth.rows, (long long)in->truth.cols);
  if (rc == ELMO_OK) rc = elmo_read_sparse(o->train, &in->train, err);
  if (rc == ELMO_OK && in->train.cols != in->truth.cols)
    rc = elmo_fail(err, ELMO_EINPUT, "%s: %lld labels, but the ground truth %s has %lld (expected equal)",
                   o->train, (long long)in->train.cols, o->truth, (long long)in->truth.cols);
  if (rc == ELMO_OK && o->filter) {
    rc = elmo_read_filter(o->filter, in->truth.rows, in->truth.cols, &in->filter, err);
    in->have_filter = rc == ELMO_OK;
  }
  if (rc != ELMO_OK) free_inputs(in);
  return rc;
}

static void print_results(const eval_opts *o, const elmo_metrics *m) {
  if (o->json) {
    char *js = elmo_metrics_json(m);
    printf("%s\n", js);
    free(js);
  } else {
    elmo_metrics_print(m, stdout);
  }
}

static int eval_predictions(const eval_opts *o, elmo_err *err) {
  double t0 = elmo_now(), A, B;
  int guessed;
  const char *family = pick_family(o, &guessed);
  pick_AB(o, family, &A, &B);
  eval_inputs in;
  if (read_inputs(o, &in, err) != ELMO_OK) return err->code;
  double t1 = elmo_now();
  double *w = elmo_malloc(sizeof(double) * (size_t)(in.truth.cols ? in.truth.cols : 1)); /* [L] */
  if (o->psp_train_aug) elmo_inv_propensity_aug(&in.train, A, B, w);
  else elmo_inv_propensity(&in.train, A, B, w);
  int32_t *topk = elmo_malloc(sizeof(int32_t) * (size_t)(in.pred.rows ? in.pred.rows : 1) * (size_t)o->k);
  elmo_topk_from_csr(&in.pred, in.have_filter ? &in.filter : NULL, o->k, topk, NULL); /* [rows, k] */
  elmo_metrics m;
  elmo_metrics_compute(&in.truth, topk, o->k, w, o->remove_invalid, &m);
  fprintf(stderr, "elmo-eval: %lld rows, %lld labels, k=%d, A=%g B=%g (%s%s%s), filter %lld pairs; "
          "read %.2f s, top-k + metrics %.2f s\n", (long long)in.truth.rows, (long long)in.truth.cols,
          o->k, A, B, family, guessed ? ", guessed from the paths" : "",
          o->psp_train_aug ? ", train+aug propensities" : "",
          in.have_filter ? (long long)elmo_csr_nnz(&in.filter) : 0LL, t1 - t0, elmo_now() - t1);
  print_results(o, &m);
  free(topk);
  free(w);
  free_inputs(&in);
  return ELMO_OK;
}

/* ---------- checkpoint mode ---------- */

/* A first argument that is a directory: evaluate that checkpoint (eval_ckpt.c). */
static int checkpoint_mode(int argc, char **argv) {
  struct stat st;
  if (stat(argv[1], &st) != 0 || !S_ISDIR(st.st_mode)) {
    fprintf(stderr, "elmo-eval: unexpected argument '%s' (expected a checkpoint directory or options)\n%s",
            argv[1], USAGE);
    return ELMO_EINPUT;
  }
  return elmo_eval_checkpoint_main(argc, argv);
}

int main(int argc, char **argv) {
  if (argc > 1 && argv[1][0] != '-') return checkpoint_mode(argc, argv);
  eval_opts o;
  elmo_err err = {0};
  if (parse_args(argc, argv, &o, &err) != ELMO_OK) {
    fprintf(stderr, "elmo-eval: %s\n%s", err.msg, USAGE);
    return ELMO_EINPUT;
  }
  if (o.help) {
    printf("%s\n%s", USAGE, HELP);
    return 0;
  }
  if (eval_predictions(&o, &err) != ELMO_OK) return elmo_report("elmo-eval", &err);
  return 0;
}
