/* safetensors.c: module under construction. */
