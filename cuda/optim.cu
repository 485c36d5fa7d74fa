/* optim.cu: under construction. */
