"""load layer: a static simulation of the kernel module loader (klpsym check)."""
