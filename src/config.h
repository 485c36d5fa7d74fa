/* config.h: the resolved run configuration (JSON file + --set overrides), one field per key.
 * The schema (key path, type, default, range, help) lives in config.c; README.md documents
 * every key. Key names are the one name for each thing across C, CUDA, config and docs. */
#ifndef ELMO_CONFIG_H
#define ELMO_CONFIG_H

#include <stdint.h>
#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif


typedef struct elmo_opt_config {   /* training.encoder / training.classifier */
  char optimizer[16];   /* "adamw" (encoder default) | "sgd" (classifier default) */
  double lr;            /* peak learning rate */
  int64_t warmup_steps; /* linear warm-up steps */
  char schedule[16];    /* "cosine" (default) | "linear" | "constant" after warm-up */
  double weight_decay;  /* decoupled weight decay */
  double beta1, beta2, eps; /* AdamW only */
  int kahan;            /* AdamW: Kahan-compensated BF16 update (default 1) */
} elmo_opt_config;

typedef struct elmo_config {
  /* data.* */
  char data_dir[1024];        /* data.dir: dataset directory (required) */
  char data_format[16];       /* data.format: "bow" | "text" | "jsonl" */
  char train_file[256];       /* data.train_file: default by format: train.txt | trn_X.txt | trn.json */
  char test_file[256];        /* data.test_file:  test.txt | tst_X.txt | tst.json */
  char train_labels[256];     /* data.train_labels (text format): trn_X_Y.txt */
  char test_labels[256];      /* data.test_labels (text format): tst_X_Y.txt */
  char feature_words[256];    /* data.feature_words: BoW feature vocabulary turned into pseudo-text ("" = off) */
  char vocab[1024];           /* data.vocab: WordPiece vocab.txt for text input */
  int64_t max_len;            /* data.max_len: tokens per text incl. [CLS]/[SEP] (default 128) */
  double val_fraction;        /* data.val_fraction: training rows held out for model selection (0) */

  /* model.encoder.* */
  char encoder_kind[16];      /* "sparse" | "transformer" */
  int64_t dim;                /* model.encoder.dim: output/hidden size d (default 512) */
  int64_t layers;             /* model.encoder.layers (transformer, default 2) */
  int64_t heads;              /* model.encoder.heads (default 4) */
  int64_t ffn_dim;            /* model.encoder.ffn_dim (0 = 4*dim) */
  int64_t max_position;       /* model.encoder.max_position (default 512) */
  char pretrained[1024];      /* model.encoder.pretrained: Hugging Face directory ("" = random init) */
  char pooling[8];            /* model.encoder.pooling: "mean" | "cls" */
  int encoder_layernorm;      /* model.encoder.layernorm: LayerNorm after the sparse encoder (0) */
  int encoder_recompute;      /* model.encoder.recompute: recompute transformer layers in the backward (0) */
  char encoder_dtype[8];      /* model.encoder.dtype: "bf16" | "fp32" | "fp8" (fp8 = E4M3 forward GEMMs) */

  /* model.classifier.* */
  char classifier_dtype[8];   /* "fp8" | "bf16" | "fp32" */
  char classifier_input[8];   /* model.classifier.input_dtype: "fp8" (ELMO) | "bf16" */
  int64_t chunks;             /* model.classifier.chunks (0 = from memory budget) */
  double memory_budget_gib;   /* model.classifier.memory_budget_gib (0 = free device memory - margin) */
  double head_ratio;          /* model.classifier.head_ratio: Kahan for the most frequent labels (0 = off) */

  /* training.* */
  int64_t epochs;             /* default 30 */
  int64_t batch_size;         /* default 256 */
  uint64_t seed;              /* default 0 */
  double dropout;             /* dropout on the pooled vector (default 0.5) */
  int64_t log_every;          /* compute the summed BCE every N steps (default 50) */
  int64_t max_steps;          /* stop after N steps (0 = no limit) */
  int64_t gpus;               /* training.gpus: GPUs the classifier is sharded over by labels (0 = all; default 1) */
  int64_t patience;           /* early stopping in evaluations without improvement (0 = off) */
  char select_metric[16];     /* training.select_metric: "P@1" (best checkpoint by this) */
  elmo_opt_config enc_opt;    /* training.encoder.* */
  elmo_opt_config cls_opt;    /* training.classifier.* */

  /* eval.* */
  int64_t k;                  /* eval.k: metrics @1..k (default 5) */
  double A, B;                /* eval.A / eval.B: propensity parameters (<0 = by dataset family) */
  int64_t every_epochs;       /* eval.every_epochs (default 1) */
  char filter_file[256];      /* eval.filter_file: test filter pairs ("" = none) */
  int64_t topk;               /* eval.topk: predictions written per row (default 100) */
  int remove_invalid;         /* eval.remove_invalid: drop test rows without labels (0) */

  /* output.* */
  char out_dir[1024];         /* output.dir (default "runs/<config name>") */
  int64_t checkpoint_every;   /* output.checkpoint_every: epochs between checkpoints (default 1) */
  int save_checkpoints;       /* output.checkpoints: write checkpoints at all (default 1) */
} elmo_config;

/* Fills every field with its default. */
void elmo_config_defaults(elmo_config *c);
/* Parses a JSON file into c (defaults first), applies overrides "a.b.c=value" in order,
 * validates types and ranges. Errors name the file and JSON path (ELMO_EINPUT). */
int elmo_config_load(elmo_config *c, const char *path, const char *const *overrides, int n_overrides,
                     elmo_err *err);
/* Same from a JSON string (tests); `name` is used in messages. */
int elmo_config_parse(elmo_config *c, const char *json, const char *name, const char *const *overrides,
                      int n_overrides, elmo_err *err);
/* The fully resolved config as JSON (every key, for checkpoints' config.json). Caller frees. */
char *elmo_config_to_json(const elmo_config *c);
/* Propensity A/B by family when not given: Amazon 0.6/2.6, Wiki 0.5/0.4, other 0.55/1.5. */
void elmo_propensity_defaults(const char *dataset_name, double *A, double *B);
/* The key reference as a markdown table (key, type, default, allowed, meaning), generated from
 * the schema; docs/CONFIG.md holds a copy (a test checks they agree). Caller frees. */
char *elmo_config_markdown(void);

#ifdef __cplusplus
}
#endif

#endif
