/* dataset.c: module under construction. */
