/* metrics.c: module under construction. */
