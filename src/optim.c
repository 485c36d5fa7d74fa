/* optim.c: module under construction. */
