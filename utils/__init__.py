"""Shared utilities. Importing this package first applies the BasicSR compatibility shim."""
from vsrkit.utils import basicsr_compat  # noqa: F401  (keep first: makes ``import basicsr`` work)
