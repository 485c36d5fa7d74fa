/* checkpoint.h: checkpoint directories (DESIGN.md §6), written to a temp name and renamed:
 *   model.safetensors      encoder tensors (HF names, bf16/f32), classifier.weight [L_pad, d]
 *                          (F8_E4M3 | BF16 | F32); metadata: num_labels, d, classifier dtype
 *   optimizer.safetensors  <name>.exp_avg, <name>.exp_avg_sq, <name>.kahan, classifier.kahan,
 *                          classifier.head_labels
 *   config.json            the fully resolved config
 *   state.json             step, epoch, best metric, patience counter (random bits are
 *                          counter-based: seed + step reproduce them exactly)
 *   vocab.txt              the WordPiece vocabulary, when the model uses one
 * Every tensor carries a CRC32 in the safetensors metadata, verified on load. */
#ifndef ELMO_CHECKPOINT_H
#define ELMO_CHECKPOINT_H

#include <stdint.h>
#include "backend.h"
#include "config.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif


typedef struct elmo_train_state {
  int64_t step;        /* next global step to run */
  int64_t epoch;       /* completed epochs */
  double best;         /* best selection metric so far (-1 = none) */
  int64_t best_epoch;
  int64_t bad_evals;   /* evaluations without improvement (early stopping) */
} elmo_train_state;

int elmo_checkpoint_save(const char *dir, const elmo_backend *be, elmo_model *m, const elmo_model_desc *md,
                         const elmo_config *cfg, const elmo_train_state *st, const char *vocab_path, elmo_err *err);
/* The same, but model.safetensors and optimizer.safetensors are hard links to those of the checkpoint in
 * same_as when that one holds this very model and state (no step since it was written): the last checkpoint of
 * a run whose last evaluation was its best costs no second copy of the weights (77 GB at 10^8 labels). Written
 * as usual where the links fail (another file system) or same_as is NULL. */
int elmo_checkpoint_save_as(const char *dir, const char *same_as, const elmo_backend *be, elmo_model *m,
                            const elmo_model_desc *md, const elmo_config *cfg, const elmo_train_state *st,
                            const char *vocab_path, elmo_err *err);
/* Loads tensors (and state when st is not NULL) into a model created with the same desc. */
int elmo_checkpoint_load(const char *dir, const elmo_backend *be, elmo_model *m, const elmo_model_desc *md,
                         elmo_train_state *st, elmo_err *err);
/* Reads dir/config.json (with overrides) into cfg. */
int elmo_checkpoint_config(const char *dir, elmo_config *cfg, const char *const *overrides, int n, elmo_err *err);

#ifdef __cplusplus
}
#endif

#endif
