"""jit-broker: a just-in-time credential broker."""

__version__ = "0.1.0"
