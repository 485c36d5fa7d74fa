/* blas.cu: under construction. */
