"""Pallas kernels (TPU; interpret mode on CPU for tests)."""
