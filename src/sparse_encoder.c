/* sparse_encoder.c: module under construction. */
