/* tokenizer.c: module under construction. */
