/* eval_ckpt.h: elmo-eval's checkpoint mode: load a checkpoint, predict a split, score it. */
#ifndef ELMO_EVAL_CKPT_H
#define ELMO_EVAL_CKPT_H

#ifdef __cplusplus
extern "C" {
#endif


/* elmo-eval CKPT_DIR [--data DIR] [--split tst|val|trn] [-k K] [--topk N] [--predictions FILE]
 *           [--device auto|cpu|cuda] [--json]. Returns the exit code. */
int elmo_eval_checkpoint_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif
