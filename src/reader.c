/* reader.c: module under construction. */
