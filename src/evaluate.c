/* evaluate.c: module under construction. */
