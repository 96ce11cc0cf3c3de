"""broker.logsetup: JSON lines with the request id and extra fields, the text format, and the
redaction of secrets and token-shaped text (the second line of defence behind ``Secret``)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import jwt as pyjwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.errors import ConfigError
from broker.logsetup import (
    REDACTED,
    JsonFormatter,
    RedactingFilter,
    redact_text,
    request_id_var,
    setup_logging,
)
from broker.types import Secret

QUIET = ("httpx", "httpcore", "urllib3", "slack_sdk")
LEASE_ID = "0123456789abcdef.00112233445566778899aabbccddeeff"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """setup_logging replaces the root handlers; put back pytest's and the suite's."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in QUIET}
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for name, lvl in quiet.items():
        logging.getLogger(name).setLevel(lvl)


def json_logs(level: str = "DEBUG") -> io.StringIO:
    buf = io.StringIO()
    setup_logging("json", level, stream=buf)
    return buf


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def a_jwt() -> str:
    key = "k" * 32  # a test key
    return pyjwt.encode({"sub": "ci-1", "aud": "x", "jti": "j1"}, key, algorithm="HS256")


# -- the JSON format -------------------------------------------------------------------------


def test_a_json_line_has_time_level_logger_message_request_id_and_the_extras() -> None:
    buf = json_logs()
    logging.getLogger("jit.leases").warning(
        "lease %s revoked after %d attempts", LEASE_ID, 3, extra={"issuer": "pg-orders", "n": 2}
    )
    [line] = lines(buf)
    assert list(line)[:5] == ["time", "level", "logger", "message", "request_id"]
    assert line["level"] == "WARNING"
    assert line["logger"] == "jit.leases"
    assert line["message"] == f"lease {LEASE_ID} revoked after 3 attempts"  # ids are kept
    assert line["request_id"] is None  # outside a request
    assert line["issuer"] == "pg-orders"
    assert line["n"] == 2
    when = datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
    assert when.tzinfo is not None
    assert when.utcoffset() == UTC.utcoffset(None)
    assert line["time"].endswith("Z")


def test_every_record_is_exactly_one_line_even_with_newlines_and_tracebacks() -> None:
    buf = json_logs()
    log = logging.getLogger("jit.test")
    log.info("two\nlines")
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log.exception("it failed")
    out = lines(buf)
    assert [o["message"] for o in out] == ["two\nlines", "it failed"]
    assert "ValueError: bad" in out[1]["exc"]
    assert len(buf.getvalue().splitlines()) == 2


def test_extras_that_would_shadow_a_fixed_field_or_are_not_json_are_still_written() -> None:
    buf = json_logs()

    class Thing:
        def __str__(self) -> str:
            return "a thing"

    logging.getLogger("jit.test").info(
        "x",
        extra={
            "level": "shadow",
            "time": 1,
            "obj": Thing(),
            "when": datetime(2030, 1, 1, tzinfo=UTC),
            "raw": b"bytes",
            "nested": {"ids": [1, 2], "t": ("a", "b")},
        },
    )
    [line] = lines(buf)
    assert line["level"] == "INFO"
    assert line["extra_level"] == "shadow"
    assert line["extra_time"] == 1
    assert line["obj"] == "a thing"
    assert line["when"].startswith("2030-01-01")
    assert line["raw"] == "b'bytes'"
    assert line["nested"] == {"ids": [1, 2], "t": ["a", "b"]}


def test_the_level_filters_and_noisy_libraries_are_held_at_warning() -> None:
    buf = json_logs("INFO")
    logging.getLogger("jit.test").debug("hidden")
    logging.getLogger("jit.test").info("shown")
    logging.getLogger("httpx").info("HTTP Request: GET https://x/?token=abc")
    assert [o["message"] for o in lines(buf)] == ["shown"]


def test_a_log_call_with_arguments_that_do_not_match_is_still_written() -> None:
    buf = json_logs()
    logging.getLogger("jit.test").info("%d leases", "many")
    [line] = lines(buf)
    assert line["message"].startswith("%d leases")


def test_setup_twice_leaves_one_handler() -> None:
    buf = io.StringIO()
    setup_logging("json", "INFO", stream=io.StringIO())
    handler = setup_logging("json", "INFO", stream=buf)
    assert logging.getLogger().handlers == [handler]
    logging.getLogger("jit.test").info("once")
    assert len(lines(buf)) == 1


@pytest.mark.parametrize(
    ("fmt", "level", "message"),
    [
        ("xml", "INFO", "format must be 'json' or 'text'"),
        ("json", "LOUD", "level must be one of"),
        ("json", 15, "level must be one of"),
        ("json", True, "level must be one of"),
    ],
)
def test_an_unknown_format_or_level_is_a_config_error(fmt: Any, level: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        setup_logging(fmt, level, stream=io.StringIO())


def test_levels_are_accepted_by_name_in_any_case_or_by_number() -> None:
    setup_logging("json", "warning", stream=io.StringIO())
    assert logging.getLogger().level == logging.WARNING
    setup_logging("text", logging.DEBUG, stream=io.StringIO())
    assert logging.getLogger().level == logging.DEBUG


# -- request ids -----------------------------------------------------------------------------


async def test_each_concurrent_request_s_lines_carry_its_own_request_id() -> None:
    buf = json_logs()
    log = logging.getLogger("jit.api")

    async def request(rid: str) -> None:  # what the middleware does around a request
        token = request_id_var.set(rid)
        try:
            log.info("start")
            await asyncio.sleep(0)  # the other request runs here
            log.info("end")
        finally:
            request_id_var.reset(token)

    await asyncio.gather(request("req-a"), request("req-b"))
    log.info("after")
    got = [(o["request_id"], o["message"]) for o in lines(buf)]
    assert sorted(got[:4]) == [
        ("req-a", "end"), ("req-a", "start"), ("req-b", "end"), ("req-b", "start"),
    ]  # fmt: skip
    assert got[4] == (None, "after")


def test_an_explicit_request_id_extra_wins() -> None:
    buf = json_logs()
    token = request_id_var.set("ctx")
    try:
        logging.getLogger("jit.test").info("x", extra={"request_id": "given"})
    finally:
        request_id_var.reset(token)
    assert lines(buf)[0]["request_id"] == "given"


# -- redaction -------------------------------------------------------------------------------


def test_a_secret_passed_as_an_argument_or_extra_never_appears() -> None:
    buf = json_logs()
    secret = Secret("s3cr3t-value-that-must-not-leak")
    log = logging.getLogger("jit.issuers")
    log.info("minted %s for %r", secret, secret)
    log.info("mapping %(s)s", {"s": secret})
    log.info("in a dict %s", {"password": secret, "user": "app"})
    log.info(secret)
    log.info("extra", extra={"credential": secret, "nested": {"k": [secret]}})
    out = buf.getvalue()
    assert "s3cr3t" not in out
    got = lines(buf)
    assert got[0]["message"] == f"minted {REDACTED} for '{REDACTED}'"
    assert got[1]["message"] == f"mapping {REDACTED}"
    assert REDACTED in got[2]["message"]
    assert "app" in got[2]["message"]
    assert got[3]["message"] == REDACTED
    assert got[4]["credential"] == REDACTED
    assert got[4]["nested"] == {"k": [REDACTED]}


def test_a_jwt_in_a_message_an_extra_or_an_exception_is_masked() -> None:
    token = a_jwt()
    buf = json_logs()
    log = logging.getLogger("jit.identity")
    log.warning("token rejected: %s", token)
    log.info("header", extra={"authorization": f"Bearer {token}"})
    try:
        raise ValueError(f"could not decode {token}")
    except ValueError:
        log.exception("verify failed")
    log.info("stack", stack_info=True, extra={"t": token})
    out = buf.getvalue()
    for segment in token.split("."):
        assert segment not in out
    got = lines(buf)
    assert got[0]["message"] == f"token rejected: {REDACTED}"
    assert got[1]["authorization"] == f"Bearer {REDACTED}"
    assert f"could not decode {REDACTED}" in got[2]["exc"]


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer abcdefghijklmnopqrstuvwxyz0123",
        "authorization=basic dXNlcjpwYXNzd29yZDEyMzQ1Ng==",
        "DPoP Zm9vYmFyYmF6cXV4cXV1eA",
        "slack says xoxb-1234567890-0987654321-AbCdEfGhIjKl",
        "github gave ghs_16C7e42F292c6912E7710c838347Ae178B4a",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",  # unsigned JWT
        "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..aXZpdml2aXZpdg.Y2lwaGVy.dGFndGFn",  # JWE
        "opaque AbCdEfGhIjKlMnOpQr.StUvWxYz01234567.89AbCdEfGhIjKlMn end.",
    ],
)
def test_token_shaped_text_is_masked(text: str) -> None:
    masked = redact_text(text)
    assert REDACTED in masked
    secret_part = text.split()[-1] if not text.startswith("opaque") else text.split()[1]
    assert secret_part.rstrip(".") not in masked


@pytest.mark.parametrize(
    "text",
    [
        f"lease {LEASE_ID} revoked",
        "module broker.identity.verifier and prometheus_client.openmetrics.exposition",
        "host ec2-54-123-45-67.compute-1.amazonaws.com answered",
        "version 1.2.3 of jit-broker",
        "issuer pg-orders (type postgres) loaded from https://db.local:5432/app",
        "bearer tokens are checked",
        "eyes.open.wide",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_text(text) == text


@settings(max_examples=200, deadline=None)
@given(
    header=st.dictionaries(
        st.sampled_from(["alg", "kid", "typ"]), st.text(max_size=12), min_size=1
    ),
    payload=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=20), min_size=1),
    signature=st.binary(min_size=32, max_size=96),
    before=st.sampled_from(["", "token ", "got: ", "(", "'"]),
    after=st.sampled_from(["", " rejected", ")", "'", ".", ","]),
)
def test_any_compact_jws_is_masked_wherever_it_sits(
    header: dict[str, str], payload: dict[str, str], signature: bytes, before: str, after: str
) -> None:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    token = ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)]
    )
    masked = redact_text(f"{before}{token}{after}")
    assert token.split(".")[2] not in masked
    assert token.split(".")[1] not in masked
    assert masked == f"{before}{REDACTED}{after}"


def test_the_filter_works_on_a_handler_of_its_own_and_marks_the_record_once() -> None:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("jit.own")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.info("x %s", Secret("never-shown-1234"))
    finally:
        log.removeHandler(handler)
        log.propagate = True
    assert "never-shown" not in buf.getvalue()
    assert "_jit_redacted" not in buf.getvalue()


def test_the_json_formatter_masks_tokens_even_without_the_filter() -> None:
    record = logging.LogRecord("jit.x", logging.INFO, __file__, 1, "t=%s", (a_jwt(),), None)
    out = json.loads(JsonFormatter().format(record))
    assert out["message"] == f"t={REDACTED}"


# -- the text format -------------------------------------------------------------------------


def test_the_text_format_shows_the_request_id_and_extras_and_masks_tokens() -> None:
    buf = io.StringIO()
    setup_logging("text", "INFO", stream=buf)
    token = request_id_var.set("7f3a9c2e")
    try:
        logging.getLogger("jit.api").info(
            "issued %s", a_jwt(), extra={"lease_id": LEASE_ID, "s": Secret("plain-secret-99")}
        )
    finally:
        request_id_var.reset(token)
    line = buf.getvalue().strip()
    assert " INFO jit.api [7f3a9c2e]: issued [redacted]" in line
    assert f'lease_id="{LEASE_ID}"' in line
    assert 's="[redacted]"' in line
    assert "plain-secret" not in line
