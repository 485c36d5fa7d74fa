/* embedding.cu: under construction. */
