"""Pure logic: standard library only, no I/O, time passed in (a test checks the imports)."""
