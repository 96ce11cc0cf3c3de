"""The one transport rule for URLs a secret travels to (broker.urls), and every config that
uses it: a host that only looks like loopback never gets a secret over plain http."""

from __future__ import annotations

import pytest

from broker.urls import check_url, is_loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("127.evil.example", False),
        ("127.0.0.1.nip.io", False),
        ("localhost.evil.example", False),
        ("0x7f.1", False),
        ("10.0.0.1", False),
        ("", False),
        (None, False),
    ],
)
def test_only_real_loopback_hosts_count_as_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("https://slack.com/api/", None),
        ("http://127.0.0.1:9000/api/", None),
        ("http://[::1]:9000/", None),
        ("http://localhost:9000/", None),
        ("http://127.evil.example/api/", "must use https"),
        ("http://example.com/", "must use https"),
        ("ftp://example.com/", "absolute https"),
        ("https:///nohost", "absolute https"),
        ("https://user:pw@example.com/", "credentials"),
        ("https://example.com/#frag", "fragment"),
        ("https://example.com/?q=1", "query"),
        ("https://example.com:99999/", "not a valid URL"),
    ],
)
def test_check_url_applies_one_transport_rule(url: str, error: str | None) -> None:
    if error is None:
        check_url(url)
    else:
        with pytest.raises(ValueError, match=error):
            check_url(url)


def test_a_query_and_plain_http_to_any_host_are_opt_in() -> None:
    check_url("https://example.com/?q=1", allow_query=True)
    check_url("http://example.com/", allow_http=True)


def test_the_slack_api_url_refuses_a_host_that_only_starts_like_loopback() -> None:
    from broker.approvals.slack import _check_api_url
    from broker.errors import ConfigError

    with pytest.raises(ConfigError, match="api_url"):
        _check_api_url("http://127.evil.example/api/")
    _check_api_url("http://127.0.0.1:1234/api/")


def test_an_audit_webhook_with_a_token_refuses_plain_http_off_loopback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from broker.audit.sinks import WebhookSink
    from broker.config import WebhookSinkSettings
    from broker.errors import ConfigError

    token = tmp_path / "t"
    token.write_text("a-webhook-token-0123456789")
    with pytest.raises(ConfigError, match="https"):
        WebhookSink(
            WebhookSinkSettings(name="w", url="http://127.evil.example/", token_file=str(token))
        )
    # Without a token nothing secret travels: plain http is allowed.
    WebhookSink(WebhookSinkSettings(name="w", url="http://collector.example/"))
