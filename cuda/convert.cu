/* convert.cu: under construction. */
