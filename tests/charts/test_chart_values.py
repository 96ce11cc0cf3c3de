"""Values the chart refuses, and the message an operator then reads. Each case starts from
ci/minimal-values.yaml (which renders) and changes one thing; values.schema.json refuses what
has the wrong shape, the templates what needs more than one value to judge."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.charts.chartkit import CHART, render, render_error

MINIMAL = CHART / "ci" / "minimal-values.yaml"

CASES = [
    # (test id: a sentence, --set arguments, text the error must contain)
    ("a misspelt top level key is refused", ["replicaCont=3"], "replicaCont"),
    ("zero replicas are refused", ["replicaCount=0"], "replicaCount"),
    (
        "a misspelt broker config key is refused",
        ["config.reaper.poll_intervall=1s"],
        "poll_intervall",
    ),
    (
        "a broker key the chart sets is refused in config",
        ["config.redis_url=redis://x"],
        "redis_url",
    ),
    (
        "a secret file path in config is refused",
        ["config.audit.signing_key_file=/x.pem"],
        "signing_key_file",
    ),
    ("an unknown log level is refused", ["config.logging.level=VERBOSE"], "level"),
    ("an unknown redis mode is refused", ["redis.mode=proxy"], "mode"),
    (
        "redis sentinel mode is refused until the broker supports it",
        ["redis.mode=sentinel"],
        "redis.mode=sentinel is not supported by this broker version yet",
    ),
    (
        "redis cluster mode is refused until the broker supports it",
        ["redis.mode=cluster"],
        "redis.mode=cluster is not supported by this broker version yet",
    ),
    (
        "a policy file that the broker would not read is refused",
        ["policies.files.notes\\.txt=owner: x"],
        "notes.txt",
    ),
    (
        "an extra variable that would override the redis url is refused",
        ["extraEnv[0].name=JIT_REDIS_URL", "extraEnv[0].value=redis://elsewhere"],
        "extraEnv",
    ),
    ("an image digest that is not sha256 is refused", ["image.digest=latest"], "digest"),
    (
        "a missing public url is named",
        ["config.public_url="],
        "config.public_url is required",
    ),
    (
        "a missing redis host is named",
        ["redis.standalone.host="],
        "redis.standalone.host is required",
    ),
    (
        "missing audit keys are named",
        ["secrets.audit.existingSecret="],
        "secrets.audit.existingSecret is required",
    ),
    (
        "a jwt issuer without its signing keys is named",
        ["config.issuers.second.type=jwt"],
        "secrets.issuers.second.existingSecret is required",
    ),
    (
        "an issuer secret for no issuer is refused",
        ["secrets.issuers.nope.existingSecret=x"],
        "secrets.issuers.nope names no issuer",
    ),
    (
        "a client without its secret is named",
        ["config.clients[0].client_id=orders-api"],
        "secrets.clients.orders-api is required",
    ),
    (
        "slack without its credentials is named",
        ["config.approvals.slack.default_channel=C1"],
        "secrets.slack.existingSecret is required",
    ),
    (
        "a service monitor without a metrics token is refused",
        ["serviceMonitor.enabled=true"],
        "serviceMonitor.enabled needs secrets.metrics.existingSecret",
    ),
    (
        "a pdb that would block every drain is refused",
        ["podDisruptionBudget.minAvailable=2"],
        "blocks every node drain",
    ),
    (
        "an ingress host other than the public url's is refused",
        ["ingress.enabled=true", "ingress.host=other.example.com"],
        "must be the host of config.public_url",
    ),
    (
        "an audit file without a shared volume is refused",
        ["auditFile.enabled=true"],
        "auditFile.existingClaim",
    ),
    (
        "policies both inline and from a config map are refused",
        ["policies.existingConfigMap=mine"],
        "not both",
    ),
]


@pytest.mark.parametrize(
    ("sets", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_values_are_refused_naming_the_problem(sets: list[str], expected: str) -> None:
    assert expected in render_error(MINIMAL, sets=sets)


def test_the_chart_defaults_alone_are_refused_naming_what_to_set() -> None:
    err = render_error()
    assert "config.public_url is required" in err


def test_a_values_file_with_a_typo_is_refused(tmp_path: Path) -> None:
    """The same through a values file, the way operators write them."""
    values = yaml.safe_load(MINIMAL.read_text())
    values["networkPolicy"] = {"egress": {"redis": {"too": []}}}
    bad = tmp_path / "values.yaml"
    bad.write_text(yaml.safe_dump(values))
    err = render_error(bad)
    assert "too" in err
    assert "values don't meet the specifications of the schema" in err


def test_the_minimal_values_render() -> None:
    """The base of the cases above renders: each refusal is due to its one change."""
    assert render(MINIMAL).deployment
