/* attention.cu: under construction. */
