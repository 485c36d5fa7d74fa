/* check.h: fatal checks for CUDA runtime and cuBLASLt calls. A failing call is a broken device or
 * a programming error, not bad user input: the process aborts with the statement, file:line and
 * the device it ran on (the ggml/llm.c habit). Errors a user can fix (out of memory at create,
 * unsupported shapes) are returned as elmo_err by the callers instead. C and C++. */
#ifndef ELMO_CUDA_CHECK_H
#define ELMO_CUDA_CHECK_H

#include <cuda_runtime_api.h>
#include <cublasLt.h>
#include <stdio.h>
#include <stdlib.h>

static inline void elmo_cuda_die(const char *what, const char *stmt, const char *file, int line) {
  int dev = -1;
  cudaGetDevice(&dev);
  fprintf(stderr, "elmo: fatal CUDA error: %s\n  in %s\n  at %s:%d on device %d\n", what, stmt, file, line, dev);
  fflush(stderr);
  abort();
}

#define ELMO_CUDA_CHECK(stmt)                                                 \
  do {                                                                         \
    cudaError_t elmo_e_ = (stmt);                                              \
    if (elmo_e_ != cudaSuccess)                                                \
      elmo_cuda_die(cudaGetErrorString(elmo_e_), #stmt, __FILE__, __LINE__);   \
  } while (0)

#define ELMO_CUBLAS_CHECK(stmt)                                               \
  do {                                                                         \
    cublasStatus_t elmo_s_ = (stmt);                                           \
    if (elmo_s_ != CUBLAS_STATUS_SUCCESS)                                      \
      elmo_cuda_die(cublasLtGetStatusString(elmo_s_), #stmt, __FILE__, __LINE__); \
  } while (0)

/* After a kernel launch: catches bad launch configurations at once. */
#define ELMO_LAUNCH_CHECK() ELMO_CUDA_CHECK(cudaGetLastError())

/* 1 the first time it is asked for the current device, then 0: per-device one-time setup such as a
 * kernel's shared-memory attribute (devices 0..31; one host thread per device, as the label-sharded
 * backend runs them). */
static inline int elmo_cuda_first_on_device(unsigned *mask) {
  int dev = 0;
  ELMO_CUDA_CHECK(cudaGetDevice(&dev));
  const unsigned bit = 1u << (dev & 31);
  return !(__atomic_fetch_or(mask, bit, __ATOMIC_RELAXED) & bit);
}

#endif
