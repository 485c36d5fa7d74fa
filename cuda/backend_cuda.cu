/* backend_cuda.cu: under construction (reports no CUDA backend yet). */
#include "backend.h"
extern "C" const elmo_backend *elmo_backend_cuda(elmo_err *err) {
  elmo_fail(err, ELMO_ERUNTIME, "CUDA backend not available yet");
  return NULL;
}
