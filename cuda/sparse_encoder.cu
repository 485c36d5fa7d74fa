/* sparse_encoder.cu: under construction. */
