"""The ``jit`` command."""
