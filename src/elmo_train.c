/* elmo_train.c: under construction. */
#include <stdio.h>
int main(void) { fprintf(stderr, "elmo-train: not built yet\n"); return 1; }
