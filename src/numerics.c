/* numerics.c: module under construction. */
