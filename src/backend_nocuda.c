/* backend_nocuda.c: stands in for the CUDA backend when elmo is built without CUDA. */
#include "backend.h"

const elmo_backend *elmo_backend_cuda(elmo_err *err) {
  elmo_fail(err, ELMO_ERUNTIME, "this elmo was built without CUDA (meson setup -Dcuda=enabled)");
  return NULL;
}
