/* model.h: what a model is made of, independent of the backend: shapes, dtypes, the flat
 * buffers every backend allocates, and the named tensors inside them (checkpoint layout).
 *
 * Buffers (element dtype in brackets):
 *   ENC_PARAM  [enc_numel]    encoder parameters, bf16 (default) or fp32, all tensors back to back
 *   ENC_M      [enc_numel]    AdamW first moment, same dtype as the parameters
 *   ENC_V      [enc_numel]    AdamW second moment, same dtype
 *   ENC_KAHAN  [enc_numel]    bf16 Kahan compensation (bf16 parameters with kahan on), else empty
 *   CLS_W      [L_pad, d]     classifier weights, fp8 e4m3 (default) | bf16 | fp32
 *   CLS_KAHAN  [n_head, d]    bf16 compensation for the head labels (head_ratio > 0), else empty
 *   CLS_HEAD   [n_head]       int32 label ids of the head labels, most frequent first */
#ifndef ELMO_MODEL_H
#define ELMO_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include "common.h"
#include "config.h"

#ifdef __cplusplus
extern "C" {
#endif


typedef enum elmo_dtype { ELMO_F32 = 0, ELMO_BF16, ELMO_FP8, ELMO_I32 } elmo_dtype;
size_t elmo_dtype_size(elmo_dtype t);
const char *elmo_dtype_st_name(elmo_dtype t);   /* safetensors: "F32", "BF16", "F8_E4M3", "I32" */

enum {
  ELMO_BUF_ENC_PARAM = 0, ELMO_BUF_ENC_M, ELMO_BUF_ENC_V, ELMO_BUF_ENC_KAHAN,
  ELMO_BUF_CLS_W, ELMO_BUF_CLS_KAHAN, ELMO_BUF_CLS_HEAD, ELMO_NUM_BUFS
};

/* Random-bit streams: elmo_rand_u32(seed, step, stream, element). */
enum {
  ELMO_RNG_CLS_SR = 1,      /* classifier stochastic rounding (block numbering: src/classifier.h) */
  ELMO_RNG_DROPOUT = 2,     /* dropout on the pooled vector, element = row * d + k */
  ELMO_RNG_SHUFFLE = 3,     /* epoch permutation, step = epoch */
  ELMO_RNG_INIT_CLS = 4,    /* classifier init */
  ELMO_RNG_INIT_ENC = 5,    /* encoder init */
  ELMO_RNG_SPLIT = 6,       /* validation split */
};

enum { ELMO_ENC_SPARSE = 0, ELMO_ENC_TRANSFORMER = 1 };

typedef struct elmo_tensor_slot {
  char name[96];            /* Hugging Face name, e.g. "encoder.layer.0.attention.self.query.weight" */
  int ndim;
  int64_t shape[4];
  int64_t offset;           /* first element inside ENC_PARAM */
  int64_t numel;
} elmo_tensor_slot;

typedef struct elmo_model_desc {
  int encoder_kind;          /* ELMO_ENC_SPARSE | ELMO_ENC_TRANSFORMER */
  int64_t num_labels;        /* L */
  int64_t L_pad;             /* L rounded up to a multiple of 16 */
  int64_t d;                 /* pooled dimension = classifier input */
  int64_t batch_size;        /* largest batch */
  int64_t enc_batch;         /* rows the encoder runs at once: batch_size, or a GPU's share of it when the
                                CUDA backend shards the classifier over GPUs (training.gpus) */
  int64_t label_base;        /* global label of the classifier's row 0: 0, or a GPU's first label when
                                sharded; keys the classifier's init and SR bits by global labels */
  int64_t chunk_labels;      /* labels per classifier chunk (multiple of 16) */
  int64_t n_chunks;
  /* sparse encoder */
  int64_t num_features;      /* D */
  int sparse_layernorm;
  /* transformer */
  int64_t vocab_size, max_position, layers, heads, ffn, T, type_vocab;
  int pooling_cls;
  int recompute;             /* recompute layer activations in the backward (CUDA transformer) */
  /* numerics */
  elmo_dtype enc_dtype;      /* ELMO_BF16 | ELMO_F32 (also BF16 when model.encoder.dtype is "fp8") */
  int enc_fp8_gemm;          /* model.encoder.dtype "fp8": transformer forward GEMMs in E4M3 (elmo_tf_config.fp8_forward) */
  elmo_dtype cls_dtype;      /* ELMO_FP8 | ELMO_BF16 | ELMO_F32 */
  int cls_input_fp8;         /* classifier input cast to e4m3 (1) or bf16 (0) */
  int enc_kahan;
  int64_t n_head;            /* head labels with Kahan compensation */
  double dropout;
  uint64_t seed;
  /* encoder tensors inside ENC_PARAM */
  int n_enc_tensors;
  elmo_tensor_slot *enc_tensors;
  int64_t enc_numel;
  /* buffers */
  elmo_dtype buf_dtype[ELMO_NUM_BUFS];
  int64_t buf_numel[ELMO_NUM_BUFS];
  int32_t *head_labels;      /* [n_head] host copy of CLS_HEAD contents */
  void *pretrained_params;   /* [enc_numel] in enc_dtype: Hugging Face weights to start from, or NULL */
} elmo_model_desc;

/* Derives the model from the config and the data's shape. label_freq [num_labels] (training
 * label counts) picks the head labels; may be NULL when head_ratio is 0. chunk_labels is taken
 * from model.classifier.chunks here (0 = one chunk); the CUDA backend may refine it from its
 * memory budget before allocating. */
int elmo_model_desc_init(elmo_model_desc *md, const elmo_config *cfg, int64_t num_labels, int64_t num_features,
                         int64_t vocab_size, int64_t T, const int64_t *label_freq, elmo_err *err);
void elmo_model_desc_set_chunks(elmo_model_desc *md, int64_t n_chunks);
void elmo_model_desc_free(elmo_model_desc *md);
size_t elmo_buf_bytes(const elmo_model_desc *md, int buf);

/* The transformer configuration of a transformer model. */
struct elmo_tf_config;
void elmo_model_tf_config(const elmo_model_desc *md, struct elmo_tf_config *c);

#ifdef __cplusplus
}
#endif

#endif

/* Host-side initial values (the same on every backend): encoder tensors by name (LayerNorm
 * weights 1, biases 0, other tensors normal(0, 0.02)) or the pretrained weights, classifier U(-1/sqrt(d), 1/sqrt(d))
 * rounded to its dtype, padded rows 0; optimiser buffers 0; CLS_HEAD = head labels.
 * host[b] must hold elmo_buf_bytes(md, b) bytes, or be NULL: buffer b is skipped (the CUDA backend draws the
 * classifier's weights on the device, elmo_cuda_cls_init_weights, bit for bit the same). */
void elmo_model_init_host(const elmo_model_desc *md, void *host[ELMO_NUM_BUFS]);
/* decay[i] = 0 for biases and LayerNorm parameters, 1 otherwise. [enc_numel] */
void elmo_model_decay_mask(const elmo_model_desc *md, uint8_t *decay);
/* head_slot[l] = row of label l in CLS_KAHAN, or -1. [L_pad] */
void elmo_model_head_slots(const elmo_model_desc *md, int32_t *head_slot);
/* Label sharding: md's head labels within [base, base + count), most frequent first. Each of labels and glob
 * may be NULL; otherwise it gets a new array (NULL when there are none; the caller frees it): *labels the
 * labels re-based to base, *glob the slot of each in md's list. Returns how many there are. */
int64_t elmo_model_shard_heads(const elmo_model_desc *md, int64_t base, int64_t count, int32_t **labels,
                               int64_t **glob);
