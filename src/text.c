/* text.c: module under construction. */
