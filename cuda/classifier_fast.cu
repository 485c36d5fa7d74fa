/* classifier_fast.cu: placeholder for the fast classifier kernels. */
