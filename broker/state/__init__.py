"""The broker's side of Redis, shared by every part that keeps state there.

Redis replies arrive as ``bytes`` (the client does not decode: the audit stream keeps canonical
JSON byte for byte) or as ``str`` (fakeredis in some paths); :func:`text` is the one place that
turns a reply into text.
"""

from __future__ import annotations

from typing import Any

__all__ = ["opt_text", "text"]


def text(value: Any) -> str:
    """A Redis reply value as ``str`` (UTF-8)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def opt_text(value: Any) -> str | None:
    """Like :func:`text`, keeping ``None`` (a missing field or key)."""
    return None if value is None else text(value)
