/* train.h: the training loop: data, backend, schedules, evaluation, checkpoints, logs. */
#ifndef ELMO_TRAIN_H
#define ELMO_TRAIN_H

#include "backend.h"
#include "config.h"

#ifdef __cplusplus
extern "C" {
#endif


typedef struct elmo_train_opts {
  const char *device;    /* "auto" | "cpu" | "cuda" */
  const char *resume;    /* checkpoint directory to resume from, or NULL */
  int plan_only;         /* print the memory plan and exit */
} elmo_train_opts;

/* Picks the backend for `device`; logs which one runs. */
int elmo_pick_backend(const char *device, const elmo_backend **out, elmo_err *err);
/* Backend-specific refinement of the model description before create (CUDA: the classifier's
 * chunk count from the memory budget when model.classifier.chunks is 0; sharded over GPUs, each
 * GPU's model chooses its own at create). */
int elmo_prepare_desc(const elmo_backend *be, const elmo_config *cfg, elmo_model_desc *md, elmo_err *err);
int elmo_train_run(const elmo_config *cfg, const elmo_train_opts *o, elmo_err *err);

#ifdef __cplusplus
}
#endif

#endif
