/* elmo_train.c: the elmo-train command: JSON config -> trained model, checkpoints, metrics. */
#include "common.h"
#include "config.h"
#include "train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: elmo-train CONFIG.json [--set key.path=value ...] [--out DIR] [--resume CKPT_DIR]\n"
    "                  [--device auto|cpu|cuda] [--gpus N] [--plan]\n"
    "  Trains an XMC model as CONFIG describes (see README.md for every key), evaluates on the\n"
    "  test split every eval.every_epochs, and writes DIR/{metrics.jsonl,loss.tsv,predictions.txt,\n"
    "  best/,last/}. --device auto (default) uses the GPU when one is present. --gpus N (the same\n"
    "  as --set training.gpus=N) shards the classifier by labels over N GPUs of this machine (0: all).\n"
    "  --plan prints the memory plan without training. Exit codes: 0 ok, 1 runtime failure,\n"
    "  2 bad usage, config or input.\n";

typedef struct args {
  const char *config;
  const char **sets;
  int n_sets;
  elmo_train_opts opts;
} args;

static int parse_args(int argc, char **argv, args *a, char **out_override) {
  a->sets = calloc((size_t)argc + 1, sizeof(char *));
  a->opts.device = "auto";
  for (int i = 1; i < argc; i++) {
    const char *s = argv[i];
    int has_val = i + 1 < argc;
    if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
      fputs(usage, stdout);
      exit(0);
    } else if (!strcmp(s, "--set") && has_val) {
      a->sets[a->n_sets++] = argv[++i];
    } else if (!strncmp(s, "--set=", 6)) {
      a->sets[a->n_sets++] = s + 6;
    } else if (!strcmp(s, "--out") && has_val) {
      size_t n = strlen(argv[i + 1]) + 16;
      *out_override = malloc(n);
      snprintf(*out_override, n, "output.dir=%s", argv[++i]);
    } else if (!strcmp(s, "--resume") && has_val) {
      a->opts.resume = argv[++i];
    } else if (!strcmp(s, "--device") && has_val) {
      a->opts.device = argv[++i];
      if (strcmp(a->opts.device, "auto") && strcmp(a->opts.device, "cpu") && strcmp(a->opts.device, "cuda")) {
        fprintf(stderr, "elmo-train: --device %s: expected auto, cpu or cuda\n%s", a->opts.device, usage);
        return ELMO_EINPUT;
      }
    } else if (!strcmp(s, "--gpus") && has_val) {
      size_t n = strlen(argv[i + 1]) + 16;
      char *v = malloc(n); /* lives as long as the process, as the other option strings */
      snprintf(v, n, "training.gpus=%s", argv[++i]);
      a->sets[a->n_sets++] = v;
    } else if (!strcmp(s, "--plan")) {
      a->opts.plan_only = 1;
    } else if (s[0] == '-') {
      fprintf(stderr, "elmo-train: unknown or incomplete option '%s'\n%s", s, usage);
      return ELMO_EINPUT;
    } else if (!a->config) {
      a->config = s;
    } else {
      fprintf(stderr, "elmo-train: unexpected argument '%s' (one CONFIG.json)\n%s", s, usage);
      return ELMO_EINPUT;
    }
  }
  if (*out_override) a->sets[a->n_sets++] = *out_override;
  if (!a->config) {
    fprintf(stderr, "elmo-train: missing CONFIG.json\n%s", usage);
    return ELMO_EINPUT;
  }
  return ELMO_OK;
}

int main(int argc, char **argv) {
  args a = {0};
  char *out_override = NULL;
  int rc = parse_args(argc, argv, &a, &out_override);
  if (rc) {
    free(a.sets);
    free(out_override);
    return rc;
  }
  elmo_config cfg;
  elmo_err err = {0};
  rc = elmo_config_load(&cfg, a.config, a.sets, a.n_sets, &err);
  if (!rc) rc = elmo_train_run(&cfg, &a.opts, &err);
  free(a.sets);
  free(out_override);
  if (rc) return elmo_report("elmo-train", &err);
  return 0;
}
