"""Process logging: one JSON object per line (or plain text) on stderr, with the request id, and
redaction of secrets as a second line of defence.

Owns :func:`setup_logging`, the formatters, :class:`RedactingFilter` and ``request_id_var`` (the
context variable the API middleware sets for the duration of a request, so every line logged
while serving it carries its id).

The first line of defence is that secrets are ``Secret`` objects whose ``repr`` is redacted and
that code never logs a revealed value. The filter catches what slips through: a ``Secret`` passed
as a log argument or ``extra=`` field is replaced by ``[redacted]``, and any text that looks like
a bearer token is masked — a compact JWS/JWT/JWE, three long base64url segments, the value after
``Bearer``/``Basic``/``DPoP``, and Slack/GitHub token prefixes. It cannot recognise a secret that
has no recognisable shape (a random password passed as a plain string): that is on the caller.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final, Literal, TextIO

from broker.errors import ConfigError
from broker.types import Secret

__all__ = [
    "REDACTED",
    "JsonFormatter",
    "RedactingFilter",
    "TextFormatter",
    "redact_text",
    "request_id_var",
    "setup_logging",
]

#: The id of the HTTP request being served (set by the API middleware), None outside one.
request_id_var: ContextVar[str | None] = ContextVar("jit_request_id", default=None)

REDACTED: Final = "[redacted]"

_B64 = r"[A-Za-z0-9_-]"
_TOKEN_PATTERNS: Final = (
    # A JOSE compact serialisation: the protected header is base64url JSON, so it starts "ey"
    # ('{"') or "ew" ('{' + newline/space); 3 segments (JWS/JWT, also unsigned) or 5 (JWE).
    re.compile(rf"(?<!{_B64})e[wy]{_B64}{{6,}}\.{_B64}*\.{_B64}*(?:\.{_B64}*\.{_B64}*)?"),
    # Any three long base64url segments (opaque signed tokens that are not JOSE).
    re.compile(
        rf"(?<![A-Za-z0-9_.-]){_B64}{{16,}}\.{_B64}{{16,}}\.{_B64}{{16,}}(?!{_B64}|\.{_B64})"
    ),
    # Well-known token prefixes: Slack, GitHub.
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{8,}"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"),
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"),
)
# The credential after an HTTP authorization scheme (a header value that reached a message).
_AUTH_SCHEME: Final = re.compile(r"(?i)\b(bearer|basic|dpop)(\s+|=|:\s*)[A-Za-z0-9._~+/=-]{8,}")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "request_id",
    "taskName",
    "_jit_redacted",
}
_RESERVED_KEYS: Final = frozenset({"time", "level", "logger", "message", "request_id"})
_LEVELS: Final = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
# Libraries that log request URLs (which may carry tokens) at INFO/DEBUG.
_QUIET: Final = ("httpx", "httpcore", "urllib3", "slack_sdk")


def redact_text(text: str) -> str:
    """``text`` with everything that looks like a token replaced by ``[redacted]``."""
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


def _scrub(value: Any, depth: int = 0) -> Any:
    """A JSON-safe, redacted copy of a log argument or ``extra=`` value."""
    if isinstance(value, Secret):
        return REDACTED
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if depth < 4:
        if isinstance(value, Mapping):
            return {str(k): _scrub(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [_scrub(v, depth + 1) for v in value]
    return redact_text(str(value))


def _scrub_arg(value: Any) -> Any:
    """A log argument keeps its type for %-formatting (``%d`` needs a number) unless it is a
    Secret or a container that holds one."""
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        return _scrub(value)
    return value


class RedactingFilter(logging.Filter):
    """Attach to a handler (handler filters see records propagated from every logger). Replaces
    ``Secret`` arguments and extras, masks token-shaped text in the message, the extras and the
    exception text, and records the current request id on the record. Always lets the record
    through."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_jit_redacted", False):
            return True
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        if isinstance(record.msg, Secret):
            record.msg = REDACTED
        if record.args:
            if isinstance(record.args, Mapping):
                record.args = {k: _scrub_arg(v) for k, v in record.args.items()}
            else:
                record.args = tuple(_scrub_arg(a) for a in record.args)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what can be shown, without the args
            message = f"{record.msg} (log arguments did not match the format)"
        record.msg = redact_text(message)
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in _RECORD_ATTRS:
                setattr(record, key, _scrub(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        record._jit_redacted = True
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, message, request_id, then
    every ``extra=`` field (one that would shadow a fixed key is written as ``extra_<key>``),
    and ``exc`` / ``stack`` when present. Redacts again, so it is safe without the filter."""

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None)
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_text(record.getMessage()),
            "request_id": rid if rid is not None else request_id_var.get(),
        }
        for key, value in _extras(record).items():
            out[f"extra_{key}" if key in _RESERVED_KEYS else key] = _scrub(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = redact_text(record.exc_text)
        if record.stack_info:
            out["stack"] = redact_text(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``2030-01-01T00:00:00.000Z INFO jit.api [rid]: message key=value``, redacted."""

    def format(self, record: logging.LogRecord) -> str:
        when = (
            datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z")
        )
        rid = getattr(record, "request_id", None) or request_id_var.get()
        line = f"{when} {record.levelname} {record.name}"
        if rid:
            line += f" [{rid}]"
        line += f": {record.getMessage()}"
        extras = _extras(record)
        if extras:
            line += " " + " ".join(
                f"{k}={json.dumps(_scrub(v), ensure_ascii=False, default=str)}"
                for k, v in extras.items()
            )
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return redact_text(line)


def _level(level: str | int) -> int:
    if isinstance(level, bool):
        raise ConfigError(f"logging level must be one of {', '.join(_LEVELS)}, not {level!r}")
    if isinstance(level, int):
        if level in _LEVELS.values():
            return level
    elif isinstance(level, str) and level.strip().upper() in _LEVELS:
        return _LEVELS[level.strip().upper()]
    raise ConfigError(f"logging level must be one of {', '.join(_LEVELS)}, not {level!r}")


def setup_logging(
    format: Literal["json", "text"] = "json",  # the name of the config setting (logging.format)
    level: str | int = "INFO",
    *,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Configure the root logger: one handler on ``stream`` (stderr by default) with the JSON
    or text formatter and the redacting filter; ``level`` on the root. Replaces every handler
    the root had (like ``logging.basicConfig(force=True)``), so calling it again reconfigures.
    Quietens libraries that log URLs. Raises ConfigError on an unknown format or level."""
    if format == "json":
        formatter: logging.Formatter = JsonFormatter()
    elif format == "text":
        formatter = TextFormatter()
    else:
        raise ConfigError(f"logging format must be 'json' or 'text', not {format!r}")
    lvl = _level(level)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    handler.setLevel(lvl)  # holds even where a logger was set lower (e.g. "jit" at DEBUG)
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(lvl)
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(lvl, logging.WARNING))
    return handler
