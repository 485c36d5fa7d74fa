/* blas.h: the cuBLASLt wrapper. Column-major GEMMs with FP32 accumulation (CUBLAS_COMPUTE_32F,
 * no TF32) on BF16, FP8 E4M3 or FP32 operands, output BF16 or FP32. One handle, one workspace
 * (from the pool), and per shape a cached matmul descriptor, layouts and heuristic algorithm.
 *
 *   D[m, n] = op(A)[m, k] op(B)[k, n]  (+ D when accumulate)
 *   op(A) = A^T with A stored [k, m] (lda >= k) when transa, else A stored [m, k] (lda >= m).
 *
 * FP8 (Hopper / Ada): both operands E4M3, the "TN" form (transa = 1, transb = 0), m, n, k and the
 * leading dimensions multiples of 16, pointers 16-byte aligned, scale 1 (no scaling factors).
 * elmo_blas_run aborts on a shape or alignment it cannot run: callers ask elmo_blas_supported
 * first when they have a fallback. */
#ifndef ELMO_CUDA_BLAS_H
#define ELMO_CUDA_BLAS_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "model.h"

typedef struct elmo_gemm {
  int transa, transb;
  int64_t m, n, k;
  elmo_dtype ta, tb, td;      /* operand types, output type */
  const void *A;
  int64_t lda;
  const void *B;
  int64_t ldb;
  void *D;
  int64_t ldd;
  int accumulate;             /* 1: D += op(A) op(B) */
  int fast_accum;             /* FP8: the tensor cores' own accumulation (CUBLASLT_MATMUL_DESC_FAST_ACCUM) */
} elmo_gemm;

typedef struct elmo_blas elmo_blas;

/* The workspace size to plan for (bytes). */
size_t elmo_blas_workspace_bytes(void);
/* workspace: device memory of ws_bytes (pool-owned). */
elmo_blas *elmo_blas_create(void *workspace, size_t ws_bytes);
void elmo_blas_destroy(elmo_blas **b);
/* 1 when the shape, types and alignment are valid and cuBLASLt offers an algorithm. Pointers
 * may be NULL (alignment of the leading dimensions is still checked). */
int elmo_blas_supported(elmo_blas *b, const elmo_gemm *g);
/* Runs g on stream s. Aborts (naming the shape) when it cannot. */
void elmo_blas_run(elmo_blas *b, const elmo_gemm *g, cudaStream_t s);
/* "fp8 x fp8 -> bf16" style description of a GEMM's types, static storage. */
const char *elmo_blas_types(const elmo_gemm *g);

#ifdef __cplusplus
}
#endif

#endif
