/* backend_cuda.cu: under construction. */
