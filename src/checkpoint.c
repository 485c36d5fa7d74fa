/* checkpoint.c: module under construction. */
