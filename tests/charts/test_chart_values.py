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
        "a redis block in config is refused (the chart renders it from redis)",
        ["config.redis.mode=cluster"],
        "config: Additional property redis is not allowed",
    ),
    (
        "a shutdown block in config is refused (the chart renders it from drain)",
        ["config.shutdown.drain_timeout=5s"],
        "config: Additional property shutdown is not allowed",
    ),
    (
        "a secret file path in config is refused",
        ["config.audit.signing_key_file=/x.pem"],
        "signing_key_file",
    ),
    ("an unknown log level is refused", ["config.logging.level=VERBOSE"], "level"),
    (
        "an unknown redis mode is refused",
        ["redis.mode=proxy"],
        'redis.mode must be one of the following: "standalone", "sentinel", "cluster"',
    ),
    (
        "sentinel without sentinels is refused",
        ["redis.mode=sentinel", "redis.host=", "redis.masterName=jit"],
        "redis.sentinels: Array must have at least 1 items",
    ),
    (
        "sentinel without a master name is refused",
        ["redis.mode=sentinel", "redis.host=", "redis.sentinels[0]=s0:26379"],
        "redis.masterName: String length must be greater than or equal to 1",
    ),
    (
        "cluster without nodes is refused",
        ["redis.mode=cluster", "redis.host="],
        "redis.nodes: Array must have at least 1 items",
    ),
    (
        "cluster with a database other than 0 is refused",
        ["redis.mode=cluster", "redis.host=", "redis.nodes[0]=n0:6379", "redis.db=2"],
        "redis.db must be one of the following: 0",
    ),
    (
        "cluster with WAIT is refused",
        ["redis.mode=cluster", "redis.host=", "redis.nodes[0]=n0:6379", "redis.waitReplicas=1"],
        "redis.waitReplicas must be one of the following: 0",
    ),
    (
        "a sentinel address without a port is refused",
        ["redis.mode=sentinel", "redis.host=", "redis.masterName=m", "redis.sentinels[0]=s0"],
        "redis.sentinels.0",
    ),
    (
        "a password in the redis url is refused",
        ["redis.host=", "redis.url=redis://jit:hunter2@redis:6379/0"],
        "redis.url: Does not match pattern",
    ),
    (
        "a redis host with a standalone url is refused",
        ["redis.url=redis://redis:6379/0"],
        "set redis.host or redis.url, not both",
    ),
    (
        "a redis host in sentinel mode is refused",
        ["redis.mode=sentinel", "redis.masterName=m", "redis.sentinels[0]=s0:26379"],
        "redis.host and redis.url are for redis.mode=standalone; with redis.mode=sentinel",
    ),
    (
        "sentinels in standalone mode are refused",
        ["redis.sentinels[0]=s0:26379"],
        "redis.sentinels, redis.masterName and redis.sentinelAuth are for redis.mode=sentinel",
    ),
    (
        "cluster nodes in standalone mode are refused",
        ["redis.nodes[0]=n0:6379"],
        "redis.nodes is for redis.mode=cluster, not standalone",
    ),
    (
        "a redis url without tls when tls is on is refused",
        ["redis.host=", "redis.url=redis://redis:6379/0", "redis.tls.enabled=true"],
        "redis.tls.enabled needs a rediss:// redis.url",
    ),
    (
        "a redis ca without tls is refused",
        ["redis.tls.ca.existingSecret=ca"],
        "redis.tls.ca is set but TLS is off",
    ),
    (
        "a redis ca from both a secret and a config map is refused",
        [
            "redis.tls.enabled=true",
            "redis.tls.ca.existingSecret=a",
            "redis.tls.ca.existingConfigMap=b",
        ],
        "redis.tls.ca: set existingSecret or existingConfigMap, not both",
    ),
    (
        "a redis timeout that is not a duration is refused",
        ["redis.timeout=five seconds"],
        "redis.timeout",
    ),
    (
        "a grace period shorter than the drain is refused",
        ["terminationGracePeriodSeconds=60"],
        "terminationGracePeriodSeconds 60 is shorter than preStopSleepSeconds + "
        "drain.delaySeconds + drain.timeoutSeconds + config.reaper.issuer_timeout + 5 s to "
        "close (85)",
    ),
    (
        "a drain timeout the broker would refuse is refused",
        ["drain.timeoutSeconds=0"],
        "drain.timeoutSeconds",
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
        ["redis.host="],
        "redis.host (or redis.url) is required with redis.mode=standalone",
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
