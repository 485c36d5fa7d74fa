/* embedding.h: padded-batch mask and word + position (+ token type 0) embeddings, forward and
 * backward, for the CUDA encoder. CPU twins: elmo_tf_embed_forward/backward (packed rows).
 * Device pointers, stream s; ELMO_EINPUT on bad shapes. Rows r = b * Tp + t. */
#ifndef ELMO_CUDA_EMBEDDING_H
#define ELMO_CUDA_EMBEDDING_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "common.h"
#include "numerics.h"

/* mask_p[B, Tp] = t < T && (mask == NULL || mask[b, t]) for the caller's mask [B, T]; Tp >= T. */
int elmo_cuda_embed_mask(const uint8_t *mask, int B, int T, int Tp, uint8_t *mask_p, cudaStream_t s,
                         elmo_err *err);

/* e[B * Tp, H] fp32 = word[id] + pos[t] (+ type[0] when type is not NULL) for real tokens, 0 for
 * masked ones. ids [B, T] (the caller's layout), tables bf16 [V, H], [P, H], [*, H]; T <= P.
 * An unmasked id outside [0, V) embeds as if its word row were zero and sets *bad_id = 1 (bad_id may be NULL).
 * keys (may be NULL) [B * Tp] int32 receives id, or V for masked / invalid tokens: the backward's
 * sort keys. */
int elmo_cuda_embed_forward(const elmo_bf16 *word, const elmo_bf16 *pos, const elmo_bf16 *type, int V,
                            int P, const int32_t *ids, const uint8_t *mask_p, int B, int T, int Tp, int H,
                            float *e, int32_t *keys, int *bad_id, cudaStream_t s, elmo_err *err);

/* Scratch bytes of elmo_cuda_embed_backward for up to `rows` rows (B * Tp), Tp <= max_tp. Asks CUB,
 * so it needs a CUDA device; 0 when the query fails. */
size_t elmo_cuda_embed_ws_bytes(int64_t rows, int max_tp, int H);
/* Adds de[B * Tp, H] (fp32) of the real tokens into dword[key] (keys from the forward; [V, H]),
 * dpos[t] ([P, H]; positions t >= P must be masked) and dtype[0] (dtype may be NULL).
 * Deterministic: tokens are sorted by id (stable), each word row is
 * summed by one block in row order, positions are summed over b in order, the type row over those
 * position sums in a fixed order.
 * ws: elmo_cuda_embed_ws_bytes, 256-byte aligned. */
int elmo_cuda_embed_backward(const float *de, const int32_t *keys, const uint8_t *mask_p, int V, int P,
                             int B, int Tp, int H, float *dword, float *dpos, float *dtype, void *ws,
                             size_t ws_bytes, cudaStream_t s, elmo_err *err);

#ifdef __cplusplus
}
#endif

#endif
