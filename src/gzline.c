/* gzline.c: module under construction. */
