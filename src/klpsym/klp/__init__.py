"""klp layer."""
