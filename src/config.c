/* config.c: module under construction. */
