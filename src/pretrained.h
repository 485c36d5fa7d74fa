/* pretrained.h: start the transformer encoder from a Hugging Face directory (config.json,
 * model.safetensors, vocab.txt) in the BERT layout (also "bert."-prefixed task checkpoints,
 * MiniLM) or the DistilBERT layout. Tensors are converted to the encoder's dtype. */
#ifndef ELMO_PRETRAINED_H
#define ELMO_PRETRAINED_H

#include <stdint.h>
#include "common.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct elmo_hf_info {
  int64_t hidden, layers, heads, ffn, max_position, vocab_size, type_vocab;
  int distilbert;   /* 1: DistilBERT tensor names */
  int lowercase;    /* tokenizer_config.json do_lower_case (default 1) */
} elmo_hf_info;

/* Reads dir/config.json. ELMO_EINPUT naming the file and key when something is missing. */
int elmo_hf_read_config(const char *dir, elmo_hf_info *out, elmo_err *err);
/* Fills enc_param [md->enc_numel] (md->enc_dtype) from dir/model.safetensors: every encoder
 * tensor must be found with the right shape (F32, BF16 or F16 in the file). */
int elmo_hf_load_params(const char *dir, const elmo_model_desc *md, void *enc_param, elmo_err *err);

#ifdef __cplusplus
}
#endif

#endif
