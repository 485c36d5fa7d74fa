/* train.c: module under construction. */
