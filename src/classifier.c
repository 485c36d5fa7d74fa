/* classifier.c: module under construction. */
