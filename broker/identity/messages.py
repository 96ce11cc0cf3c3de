"""How caller-supplied values (an ``iss``, ``alg`` or ``kid`` from an unverified token) appear in
error messages: shown as-is when short and plain, otherwise escaped and clipped, so a message
can neither carry a log-injection payload nor grow with the input."""

from __future__ import annotations

import re

__all__ = ["shown"]

_PLAIN = re.compile(r"[\w.:/@+-]{1,80}", re.ASCII)
_LIMIT = 80


def shown(value: object) -> str:
    """``value`` made safe for an error message."""
    if isinstance(value, str) and _PLAIN.fullmatch(value):
        return value
    text = repr(value)
    return text if len(text) <= _LIMIT else text[: _LIMIT - 3] + "..."
