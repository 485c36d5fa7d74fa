/* transformer.cu: under construction. */
