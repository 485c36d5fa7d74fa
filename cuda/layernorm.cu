/* layernorm.cu: under construction. */
