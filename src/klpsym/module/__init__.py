"""module layer."""
