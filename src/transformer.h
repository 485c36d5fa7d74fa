/* transformer.h: CPU reference transformer encoder (BERT-family, post-LN), FP32 forward and backward.
 *
 * Model (DESIGN.md section 4): word + position (+ token type 0) embeddings, LayerNorm, then
 * `layers` x [multi-head self-attention + residual + LayerNorm, GELU FFN + residual + LayerNorm],
 * pooled per sequence (mean over unmasked tokens, or the first unmasked token = [CLS]).
 * Dropout on the pooled vector is the caller's.
 *
 * Parameters: ALL tensors live in one contiguous float buffer (`flat`), so an optimiser can treat
 * them as one vector; gradients use a second elmo_tf_params of the same layout (elmo_tf_alloc with
 * the same config). Tensors are named and shaped as in Hugging Face BERT (Linear weights [out, in]),
 * so a checkpoint maps 1:1. Each tensor starts at a multiple of ELMO_TF_ALIGN floats; the few padding
 * floats between tensors are zero and get zero gradient (they stay zero under SGD/AdamW).
 *
 * Batches are PACKED: the forward keeps only unmasked tokens (N of them, row n of every activation
 * is one real token, sequences one after another), so padding costs nothing and can never leak into
 * the output. Activations [N, H] below mean packed rows. A sequence's output does not depend on the
 * other sequences in its batch (bitwise: every GEMM element is summed over k in order).
 *
 * FP8 forward (cfg.fp8_forward = 1, model.encoder.dtype "fp8"): the six linear layers of every encoder
 * layer (query, key, value, attention output, intermediate, output) run their forward GEMM on E4M3
 * operands with per-tensor scaling: the weights by their amax, as torchao's Float8Linear forward does,
 * the layer inputs by power-of-two scales from bounds that follow from the parameters
 * (elmo_tf_fp8_layer_scales, elmo_tf_linear_forward_fp8_scaled). In the backward, the input gradients of
 * the attention output and the output linear layers (whose output gradients are rows that a LayerNorm
 * backward makes) run on E4M3 too: each gradient row by a power of two from its own amax, the weight by
 * its forward scale (elmo_tf_linear_dgrad_fp8). Everything else in the backward is unchanged: it uses
 * the saved unquantised layer inputs (layer input, attention context, h1, GELU output) and the
 * unquantised weights, i.e. the quantiser is passed straight through. The scales depend on the
 * parameters (forward) and on each row alone (backward), so a sequence's output and gradients do not
 * depend on its batch in this mode either.
 *
 * Ownership: elmo_tf_alloc / elmo_tf_cache_alloc allocate, the matching _free releases and zeroes
 * the struct. Views (word_emb, layer[i].q_w, ...) point into `flat` and are not freed separately.
 */
#ifndef ELMO_TRANSFORMER_H
#define ELMO_TRANSFORMER_H

#include <stdint.h>

#include <math.h>
#include <string.h>

#include "common.h"
#include "numerics.h"

#ifdef __cplusplus
extern "C" {
#endif


#define ELMO_TF_ALIGN 16          /* floats: tensor offsets in the flat buffer are multiples of it */
#define ELMO_TF_NAME_MAX 96

typedef enum elmo_tf_pooling { ELMO_TF_POOL_MEAN = 0, ELMO_TF_POOL_CLS = 1 } elmo_tf_pooling;

typedef struct elmo_tf_config {
  int vocab_size;            /* V */
  int max_position;          /* P: longest sequence */
  int type_vocab;            /* rows of the token-type table (BERT 2); 0 = no table. Only type 0 is used */
  int hidden;                /* H */
  int layers;                /* >= 0 */
  int heads;                 /* divides H; head_dim = H / heads */
  int ffn;                   /* F (intermediate size) */
  float ln_eps;              /* LayerNorm epsilon (BERT 1e-12) */
  elmo_tf_pooling pooling;
  int fp8_forward;           /* 1: linear-layer forward GEMMs in FP8 E4M3 (needs H, F multiples of 16) */
} elmo_tf_config;

/* BERT-base defaults: V 30522, P 512, type 2, H 768, 12 layers, 12 heads, F 3072, eps 1e-12, mean,
 * fp8_forward 0. */
void elmo_tf_config_init(elmo_tf_config *c);
/* ELMO_EINPUT with a message naming the field when a size is out of range. */
int elmo_tf_config_check(const elmo_tf_config *c, elmo_err *err);

typedef enum elmo_tf_kind {
  ELMO_TF_EMBEDDING,         /* [rows, H] table, init normal(0, 0.02) */
  ELMO_TF_MATRIX,            /* Linear weight [out, in], init normal(0, 0.02) */
  ELMO_TF_BIAS,              /* Linear bias [out], init 0 */
  ELMO_TF_NORM_WEIGHT,       /* LayerNorm gamma [H], init 1 */
  ELMO_TF_NORM_BIAS          /* LayerNorm beta [H], init 0 */
} elmo_tf_kind;

typedef struct elmo_tf_tensor {
  char name[ELMO_TF_NAME_MAX]; /* Hugging Face name, e.g. "encoder.layer.0.attention.self.query.weight" */
  elmo_tf_kind kind;
  int ndim;                  /* 1 or 2 */
  int64_t shape[2];          /* shape[1] = 1 when ndim == 1 */
  int64_t numel;
  int64_t offset;            /* into flat, a multiple of ELMO_TF_ALIGN */
} elmo_tf_tensor;

typedef struct elmo_tf_layer {
  float *q_w, *q_b;          /* attention.self.query [H, H], [H] */
  float *k_w, *k_b;          /* attention.self.key   [H, H], [H] */
  float *v_w, *v_b;          /* attention.self.value [H, H], [H] */
  float *o_w, *o_b;          /* attention.output.dense [H, H], [H] */
  float *ln1_w, *ln1_b;      /* attention.output.LayerNorm [H], [H] */
  float *ff1_w, *ff1_b;      /* intermediate.dense [F, H], [F] */
  float *ff2_w, *ff2_b;      /* output.dense [H, F], [H] */
  float *ln2_w, *ln2_b;      /* output.LayerNorm [H], [H] */
} elmo_tf_layer;

typedef struct elmo_tf_params {
  elmo_tf_config cfg;
  float *flat;               /* [num_params], owned */
  int64_t num_params;        /* floats in flat, alignment padding included */
  int num_tensors;
  elmo_tf_tensor *tensors;   /* [num_tensors], in Hugging Face order */
  float *word_emb;           /* [V, H] embeddings.word_embeddings.weight */
  float *pos_emb;            /* [P, H] embeddings.position_embeddings.weight */
  float *type_emb;           /* [type_vocab, H] embeddings.token_type_embeddings.weight, or NULL */
  float *emb_ln_w, *emb_ln_b;/* [H] embeddings.LayerNorm.weight / .bias */
  elmo_tf_layer *layer;      /* [layers], views into flat */
} elmo_tf_params;

/* Allocates a zero-filled parameter set (also used for gradients). Checks the config. */
int elmo_tf_alloc(elmo_tf_params *p, const elmo_tf_config *cfg, elmo_err *err);
void elmo_tf_free(elmo_tf_params *p);
/* BERT init: embeddings and matrices normal(0, 0.02), LayerNorm weight 1, biases 0. Each tensor
 * draws from its own stream seeded by (seed, tensor index), so the result is deterministic. */
void elmo_tf_init_random(elmo_tf_params *p, uint64_t seed);
/* Sets every float of flat to 0 (gradients before a step). */
void elmo_tf_zero(elmo_tf_params *p);

float *elmo_tf_flat(const elmo_tf_params *p);
int64_t elmo_tf_num_params(const elmo_tf_params *p);
int elmo_tf_num_tensors(const elmo_tf_params *p);
const elmo_tf_tensor *elmo_tf_tensor_at(const elmo_tf_params *p, int i);
const char *elmo_tf_tensor_name(const elmo_tf_params *p, int i);
float *elmo_tf_tensor_data(const elmo_tf_params *p, int i);   /* flat + tensors[i].offset */
/* Index of the tensor with this Hugging Face name, or -1. */
int elmo_tf_find_tensor(const elmo_tf_params *p, const char *name);

/* ---- Activation cache: everything the backward needs, sized for max_batch x max_len. ---- */

typedef struct elmo_tf_layer_cache {
  float *q, *k, *v;          /* [N, H] projections */
  float *probs;              /* attention probabilities, sequence b at prob_start[b]: [heads, len, len] */
  float *ctx;                /* [N, H] attention output before attention.output.dense */
  float *xhat1, *rstd1, *h1; /* attention LayerNorm: normalised input [N, H], 1/std [N], output [N, H] */
  float *ff;                 /* [N, F] intermediate pre-activation */
  float *gelu;               /* [N, F] GELU(ff) */
  float *xhat2, *rstd2, *out;/* output LayerNorm: [N, H], [N], layer output [N, H] */
} elmo_tf_layer_cache;

typedef struct elmo_tf_cache {
  elmo_tf_config cfg;
  int max_batch, max_len;
  /* packed batch of the last forward */
  int B, T;
  int64_t ntok;              /* N: unmasked tokens */
  int64_t *seq_start;        /* [max_batch + 1]: sequence b is rows seq_start[b] .. seq_start[b+1]-1 */
  int64_t *prob_start;       /* [max_batch + 1]: offset of sequence b's probabilities */
  int32_t *tok_id;           /* [max_batch * max_len] token id of row n */
  int32_t *tok_pos;          /* [max_batch * max_len] position (index t in the padded row) of row n */
  float *emb_xhat, *emb_rstd;/* embedding LayerNorm: [N, H], [N] */
  float *x0;                 /* [N, H] embedding output = layer 0 input */
  elmo_tf_layer_cache *layer;/* [layers] */
  float *hidden;             /* [N, H] last hidden state (x0 or layer[layers-1].out) */
  float *d_x, *d_y;          /* backward buffers [N, H] */
  float *d_q, *d_k, *d_v;    /* [N, H] */
  float *d_f;                /* [N, F] */
  float *ws;                 /* scratch, elmo_tf_workspace_floats() */
  float *buf;                /* the one allocation behind the float arrays above */
  int have_forward;          /* the cache holds a complete forward */
} elmo_tf_cache;

int elmo_tf_cache_alloc(elmo_tf_cache *c, const elmo_tf_config *cfg, int max_batch, int max_len,
                        elmo_err *err);
void elmo_tf_cache_free(elmo_tf_cache *c);
/* Floats the cache's activation buffer takes (for memory plans; the small index arrays aside). */
int64_t elmo_tf_cache_floats(const elmo_tf_config *cfg, int max_batch, int max_len);

/* pooled[B, H] = encoder(ids[B, T], mask[B, T]); mask 1 = real token, 0 = padding (NULL: all real).
 * Ids at masked positions are ignored; unmasked ids must be in [0, V). Position of token t is t.
 * A row without unmasked tokens pools to zeros. CLS pooling takes the first unmasked token.
 * Needs B <= max_batch, T <= max_len, T <= max_position. ELMO_EINPUT otherwise (cache untouched).
 * Cost: only unmasked tokens are computed; activations of the batch stay in the cache. */
int elmo_tf_forward(const elmo_tf_params *p, elmo_tf_cache *c, const int32_t *ids,
                    const uint8_t *mask, int B, int T, float *pooled, elmo_err *err);
/* Backward of the last forward from dpooled[B, H]. ACCUMULATES into grads (same layout as p):
 * zero them first (elmo_tf_zero) unless accumulating micro-batches. Uses the cache's d_ buffers and
 * leaves the activations intact (a second backward of the same forward is allowed).
 * ELMO_ERUNTIME when the cache holds no forward or grads has another layout. */
int elmo_tf_backward(const elmo_tf_params *p, elmo_tf_cache *c, const float *dpooled,
                     elmo_tf_params *grads, elmo_err *err);

/* ---- Ops: the CPU reference twins of the GPU kernels (FP32, row-major, packed rows). ---- */

/* C[M, N] = (accumulate ? C : 0) + A[M, K] B[K, N], leading dimensions lda, ldb, ldc.
 * Every element is summed over k = 0..K-1 in order (fused multiply-add on the AVX2 path). */
void elmo_tf_gemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                  int64_t ldb, float *C, int64_t ldc, int accumulate);
/* Which GEMM kernel runs: 1 = AVX2+FMA (x86-64 with the CPU feature), 0 = portable C.
 * elmo_tf_gemm_simd(-1) queries; 0 forces portable; 1 restores the automatic choice. Returns the
 * kernel now in use. For tests and benchmarks; not thread-safe. */
int elmo_tf_gemm_simd(int mode);
/* dst[C, R] = src[R, C]^T, src with leading dimension lds. */
void elmo_tf_transpose(const float *src, int64_t R, int64_t C, int64_t lds, float *dst);

/* Scratch floats the ops below need (forward and backward) for this config and max_len, N tokens. */
int64_t elmo_tf_workspace_floats(const elmo_tf_config *cfg, int max_len, int64_t N);

/* y[N, out] = x[N, in] w^T + b; w [out, in], b [out] or NULL. ws: [in * out]. */
void elmo_tf_linear_forward(const float *x, const float *w, const float *b, int64_t N, int in,
                            int out, float *y, float *ws);
/* ---- FP8 forward GEMMs (per-tensor scaling as torchao Float8Linear's forward; the encoder passes
 * scale_x from the parameters, elmo_tf_linear_forward_fp8_scaled, below) ----
 *   scale_x = elmo_tf_fp8_scale(amax(x)), scale_w = elmo_tf_fp8_scale(amax(w)),
 *   xq = e4m3(x * scale_x), wq = e4m3(w * scale_w)   (FP32 product, round to nearest even, saturate
 *                                                     to +-448: elmo_f32_to_fp8),
 *   y[n, o] = (sum_k xq[n, k] wq[o, k]) * ((1 / scale_x) * (1 / scale_w)) + b[o]
 * with the sum in FP32 over k in order (e4m3 products are exact in FP32). NaN in x or w gives NaN. */
#define ELMO_TF_FP8_MAX 448.0f
#define ELMO_TF_FP8_AMAX_EPS 1e-12
/* max |x[i]| over n floats; NaN when any x[i] is NaN (compared as bit patterns, as the GPU does). */
float elmo_tf_amax(const float *x, int64_t n);
/* (float)(448 / max(amax, 1e-12)), the division in double (torchao's amax_to_scale); NaN for NaN. */
float elmo_tf_fp8_scale(float amax);
/* q[i] = the E4M3 value nearest x[i] * scale (saturated), as a float. q may equal x. */
void elmo_tf_fp8_quantize(const float *x, int64_t n, float scale, float *q);
/* The FP8 twin of elmo_tf_linear_forward (formula above). ws: [in * out + N * in]. */
void elmo_tf_linear_forward_fp8(const float *x, const float *w, const float *b, int64_t N, int in,
                                int out, float *y, float *ws);

/* ---- FP8 forward with scales from the parameters (what the encoder's FP8 mode runs) ----
 * The four GEMM inputs of a layer are quantised with power-of-two scales that follow from bounds on
 * their magnitude which hold for every row, computed from the parameters alone, so no pass over the
 * activations is needed before the cast and the kernels that produce them (LayerNorm, attention,
 * GELU) can write the E4M3 copy themselves. With in = the LayerNorm that made the layer input (the
 * embedding LayerNorm, or the previous layer's output LayerNorm), and for a LayerNorm (w, b) of width H:
 *   elem(w, b) = max_j (sqrt(H - 1) |w_j| + |b_j|)    >= |y_j| (|xhat_j| <= sqrt(H - 1) for any row)
 *   norm(w, b) = sqrt(H) max_j |w_j| + ||b||_2        >= ||y||_2 (||xhat||_2 <= sqrt(H))
 *   x   (q, k, v input)    elem(in)
 *   ctx (attention output) norm(in) max_j ||v_w[j]||_2 + max |v_b|   (bounds |v|; ctx averages v rows)
 *   h1  (intermediate in)  elem(ln1)
 *   g   (GELU output)      max(norm(ln1) max_j ||ff1_w[j]||_2 + max |ff1_b|, 0.17)  (GELU(a) in [-0.17, a])
 * each bound times ELMO_TF_FP8_BOUND_MARGIN (the BF16 and E4M3 roundings of the operands the GPU's
 * values come from), in double; scale = elmo_tf_fp8_pow2_scale(bound), the largest power of two with
 * bound * scale <= 448. The weights keep their exact per-tensor scale (elmo_tf_fp8_scale of their
 * amax): they are small. Power-of-two scales make x * scale exact and the CPU's and GPU's scales the
 * same unless a bound sits within rounding of a power of two. */
#define ELMO_TF_FP8_BOUND_MARGIN 1.25
#define ELMO_TF_FP8_GELU_MIN 0.17
typedef struct elmo_tf_fp8_scales {
  float x, ctx, h1, g;
} elmo_tf_fp8_scales;
/* 2^floor(log2(448 / bound)) within 2^-100 .. 2^100; NaN for NaN; bounds below 1e-30 count as 1e-30.
 * Host and device (the CUDA encoder computes its scales with the same two functions). */
ELMO_HD static inline float elmo_tf_fp8_pow2_scale(double bound) {
  if (isnan(bound)) return (float)bound;
  if (!(bound >= 1e-30)) bound = 1e-30;
  const double v = 448.0 / bound;                   /* finite, >= 0 */
  uint64_t u;
  memcpy(&u, &v, sizeof u);
  int e = (int)((u >> 52) & 0x7FF) - 1023;          /* floor(log2 v) from the exponent bits (v normal) */
  e = e < -100 ? -100 : e > 100 ? 100 : e;
  const uint32_t f = (uint32_t)(e + 127) << 23;     /* 2^e as FP32 bits */
  float r;
  memcpy(&r, &f, sizeof r);
  return r;
}
/* The four scales from the parts of their bounds: elem and norm of the input's LayerNorm and of ln1,
 * max_j ||v_w[j]||_2, max |v_b|, max_j ||ff1_w[j]||_2, max |ff1_b|. */
ELMO_HD static inline void elmo_tf_fp8_scales_of(double in_elem, double in_norm, double ln1_elem, double ln1_norm,
                                                 double v_row, double v_bias, double ff1_row, double ff1_bias,
                                                 elmo_tf_fp8_scales *s) {
  const double mg = ELMO_TF_FP8_BOUND_MARGIN, a = ln1_norm * ff1_row + ff1_bias;
  s->x = elmo_tf_fp8_pow2_scale(mg * in_elem);
  s->ctx = elmo_tf_fp8_pow2_scale(mg * (in_norm * v_row + v_bias));
  s->h1 = elmo_tf_fp8_pow2_scale(mg * ln1_elem);
  s->g = elmo_tf_fp8_pow2_scale(mg * (a > ELMO_TF_FP8_GELU_MIN || isnan(a) ? a : ELMO_TF_FP8_GELU_MIN));
}
double elmo_tf_fp8_ln_elem(const float *w, const float *b, int H);
double elmo_tf_fp8_ln_norm(const float *w, const float *b, int H);
/* max_j ||w[j]||_2 over the rows of w [rows, cols]; max_j |b_j| of b [n] */
double elmo_tf_fp8_row_norm_max(const float *w, int64_t rows, int cols);
double elmo_tf_fp8_abs_max(const float *b, int64_t n);
/* The four input scales of a layer (formulas above); in_w, in_b: the layer input's LayerNorm. */
void elmo_tf_fp8_layer_scales(const elmo_tf_config *cfg, const float *in_w, const float *in_b,
                              const elmo_tf_layer *l, elmo_tf_fp8_scales *s);
/* elmo_tf_linear_forward_fp8 with the input's scale given (sx) instead of taken from its amax. */
void elmo_tf_linear_forward_fp8_scaled(const float *x, const float *w, const float *b, int64_t N, int in,
                                       int out, float sx, float *y, float *ws);

/* dx[N, in] = dy w (dx += dy w when accumulate) on E4M3 operands: row n of dy as e4m3(bf16(dy[n]) s_n),
 * s_n = elmo_tf_fp8_pow2_scale(b_n) with b_n = row_bound[n], or (row_bound NULL) max_j |bf16(dy[n, j])|;
 * w as e4m3(w sw), sw = elmo_tf_fp8_scale(amax w) (the forward's); products summed in FP32, then times
 * 1 / s_n (exact) and 1 / sw. ws: [out * in + N * out]. */
void elmo_tf_linear_dgrad_fp8(const float *dy, const float *w, int64_t N, int in, int out, const float *row_bound,
                              float *dx, int accumulate, float *ws);
/* |GELU'(x)| <= 1.13 for every x (its extremes: 1.129 at x = sqrt 2, -0.129 at -sqrt 2). */
#define ELMO_TF_FP8_GELU_GRAD_MAX 1.13
/* max_j ||w[:, j]||_2 over the columns of w [rows, cols] */
double elmo_tf_fp8_col_norm_max(const float *w, int64_t rows, int cols);
/* The intermediate's input gradient dff = GELU'(a) (dy ff2_w) has no row amax at hand where it is made (the
 * GELU backward goes by columns), but a bound per row: |dff[n, j]| <= 1.13 ||dy[n]||_2 ||ff2_w[:, j]||_2.
 * Its rows' scales are elmo_tf_fp8_pow2_scale of ||bf16(dy[n])||_2 (as FP32) times this factor (FP32):
 * ELMO_TF_FP8_BOUND_MARGIN * 1.13 * max_j ||ff2_w[:, j]||_2 (the margin covers the E4M3 and bf16 roundings
 * of the operands). */
float elmo_tf_fp8_dff_factor(const float *ff2_w, int H, int F);
/* bound[n] = (float)||bf16(dy[n])||_2 * f for the N rows of dy [N, H] (f: elmo_tf_fp8_dff_factor). */
void elmo_tf_fp8_dff_bounds(const float *dy, int64_t N, int H, float f, float *bound);

/* dw[out, in] += dy^T x, db[out] += column sums of dy (db may be NULL); dx[N, in] = dy w, or
 * dx += dy w when accumulate_dx (dx may be NULL). ws: [out * N]. */
void elmo_tf_linear_backward(const float *x, const float *w, const float *dy, int64_t N, int in,
                             int out, float *dx, int accumulate_dx, float *dw, float *db, float *ws);

/* Per row of x[N, H]: xhat = (x - mean) / sqrt(var + eps), y = xhat * w + b. Saves xhat, rstd. */
void elmo_tf_layernorm_forward(const float *x, const float *w, const float *b, int64_t N, int H,
                               float eps, float *y, float *xhat, float *rstd);
/* dx[N, H] from dy; dw, db accumulate. dx may equal dy (in place). */
void elmo_tf_layernorm_backward(const float *dy, const float *xhat, const float *rstd, const float *w,
                                int64_t N, int H, float *dx, float *dw, float *db);

/* y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) over n floats (exact erf form, as BERT). */
void elmo_tf_gelu_forward(const float *x, int64_t n, float *y);
/* dx = dy * GELU'(x); dx may equal dy. */
void elmo_tf_gelu_backward(const float *x, const float *dy, int64_t n, float *dx);

/* Self-attention over packed sequences: for sequence b (rows seq_start[b]..seq_start[b+1]-1) and
 * head h (columns h*dh .. h*dh+dh-1), P = softmax(Q_h K_h^T / sqrt(dh)), ctx_h = P V_h.
 * q, k, v, ctx [N, H]; probs as in elmo_tf_layer_cache (prob_start from elmo_tf_pack);
 * ws: [dh * max_len]. */
void elmo_tf_attention_forward(const float *q, const float *k, const float *v,
                               const int64_t *seq_start, const int64_t *prob_start, int B, int H,
                               int heads, float *probs, float *ctx, float *ws);
/* dq, dk, dv [N, H] (overwritten) from dctx [N, H]. ws: [2 * max_len^2 + dh * max_len]. */
void elmo_tf_attention_backward(const float *q, const float *k, const float *v, const float *probs,
                                const float *dctx, const int64_t *seq_start,
                                const int64_t *prob_start, int B, int H, int heads, float *dq,
                                float *dk, float *dv, float *ws);

/* e[n] = word[tok_id[n]] + pos[tok_pos[n]] (+ type[0] when type is not NULL), e [N, H]. */
void elmo_tf_embed_forward(const float *word, const float *pos, const float *type,
                           const int32_t *tok_id, const int32_t *tok_pos, int64_t N, int H, float *e);
/* Scatter-adds de[N, H] into the rows of dword, dpos and (when not NULL) dtype row 0. */
void elmo_tf_embed_backward(const float *de, const int32_t *tok_id, const int32_t *tok_pos, int64_t N,
                            int H, float *dword, float *dpos, float *dtype);

/* pooled[B, H] from x[N, H]: mean of each sequence's rows, or its first row (CLS); empty -> 0. */
void elmo_tf_pool_forward(const float *x, const int64_t *seq_start, int B, int H,
                          elmo_tf_pooling mode, float *pooled);
/* dx[N, H] (overwritten) from dpooled[B, H]. */
void elmo_tf_pool_backward(const float *dpooled, const int64_t *seq_start, int B, int H,
                           elmo_tf_pooling mode, float *dx);

/* Packs the unmasked tokens of ids/mask [B, T]: fills seq_start[B + 1], prob_start[B + 1] (for
 * `heads`), tok_id[N], tok_pos[N]; returns N. Does not check ids. */
int64_t elmo_tf_pack(const int32_t *ids, const uint8_t *mask, int B, int T, int heads,
                     int64_t *seq_start, int64_t *prob_start, int32_t *tok_id, int32_t *tok_pos);

#ifdef __cplusplus
}
#endif

#endif
