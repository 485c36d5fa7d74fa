/* pooling.cu: under construction. */
