/* elmo_eval.c: under construction. */
#include <stdio.h>
int main(void) { fprintf(stderr, "elmo-eval: not built yet\n"); return 1; }
