/* backend_cpu.c: module under construction. */
