/* topk.cu: under construction. */
