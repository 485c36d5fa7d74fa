/* classifier.cu: under construction. */
