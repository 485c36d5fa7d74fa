/* pool.cu: under construction. */
