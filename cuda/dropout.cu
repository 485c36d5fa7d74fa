/* dropout.cu: under construction. */
