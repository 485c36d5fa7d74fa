/* transformer.c: module under construction. */
