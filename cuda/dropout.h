/* dropout.h: inverted dropout on the device with the CPU's counter-based keep bits
 * (backend_cpu.c dropout()): element i of step `step` is dropped when
 * elmo_rand_u32(seed, step, ELMO_RNG_DROPOUT, i) < thr, thr = (uint32_t)(p * 2^32), and scaled
 * by (float)(1 / (1 - p)) otherwise. The same call on dX applies the same mask (backward). */
#ifndef ELMO_CUDA_DROPOUT_H
#define ELMO_CUDA_DROPOUT_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* x [n] FP32 in place, x[i] being element first + i of the step's mask (first a multiple of 4: a
 * slice of rows of a larger batch, as the label-sharded backend's encoder shards hold); p <= 0 does
 * nothing. */
void elmo_cuda_dropout(float *x, int64_t n, int64_t first, double p, uint64_t seed, int64_t step, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
