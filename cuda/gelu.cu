/* gelu.cu: under construction. */
