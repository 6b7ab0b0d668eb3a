"""Shared helpers for the input-format tests."""

from recap_jax.data import inputs


def read_all(units):
    """Every item (Sample or Failure) of the units, in order."""
    return [item for unit in units for item in inputs.read_unit(unit)]


def keys_of(items):
    return [item.key for item in items]
