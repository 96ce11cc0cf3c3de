"""charts/jit-broker rendered by the real helm for every values file under ci/: helm lint
--strict, every object valid against the Kubernetes 1.30 schemas (kubernetes-validate, strict:
unknown fields are errors), the config accepted by the broker's own loader, and what an operator
relies on checked object by object."""

from __future__ import annotations

import copy
import hashlib
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from broker.config import settings_from_mapping
from broker.policy import lint_policy_dir
from tests.charts.chartkit import (
    CHART,
    CI_VALUES,
    KUBE_VERSION,
    ROOT,
    Manifests,
    helm,
    render,
)

IDS = [p.name.removesuffix("-values.yaml") for p in CI_VALUES]
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}  # no schema in kubernetes-validate


@pytest.fixture(scope="module", params=CI_VALUES, ids=IDS)
def rendered(request: pytest.FixtureRequest) -> Manifests:
    return render(request.param)


def values_of(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text())
    return data


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# -- the chart as a package ---------------------------------------------------------------------


def test_the_ci_directory_has_the_values_files_the_tests_name() -> None:
    assert set(IDS) >= {"minimal", "production", "hpa", "dev", "sentinel", "cluster", "tls"}


def test_chart_app_version_is_the_broker_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"]


def test_values_schema_is_current_with_broker_config() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "charts" / "schema" / "build.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=IDS)
def test_helm_lint_strict_passes(values: Path) -> None:
    out = helm("lint", "--strict", str(CHART), "-f", str(values), "--kube-version", KUBE_VERSION)
    assert "0 chart(s) failed" in out.stdout


# -- Kubernetes schemas --------------------------------------------------------------------------


def test_every_rendered_object_is_valid_for_kubernetes_1_30(rendered: Manifests) -> None:
    for doc in rendered.docs:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_the_schema_validation_refuses_a_misspelt_field() -> None:
    """The check above can fail: a Deployment with one unknown field does not validate."""
    deployment = copy.deepcopy(render(CHART / "ci" / "minimal-values.yaml").deployment)
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def test_service_monitor_wires_the_metrics_token_secret() -> None:
    """ServiceMonitor is a CRD (no schema here): its fields are checked one by one."""
    m = render(CHART / "ci" / "production-values.yaml")
    sm = m.one("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm["spec"]) == {"selector", "namespaceSelector", "endpoints"}
    (endpoint,) = sm["spec"]["endpoints"]
    assert set(endpoint) == {"port", "path", "interval", "scrapeTimeout", "bearerTokenSecret"}
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in m.one("Service")["spec"]["ports"]}
    metrics = m.volume("metrics-token")["secret"]
    assert endpoint["bearerTokenSecret"] == {
        "name": metrics["secretName"],
        "key": metrics["items"][0]["key"],
    }
    assert matches(sm["spec"]["selector"]["matchLabels"], m.one("Service")["metadata"]["labels"])
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_service_monitor_can_use_the_authorization_field() -> None:
    m = render(CHART / "ci" / "dev-values.yaml")
    (endpoint,) = m.one("ServiceMonitor")["spec"]["endpoints"]
    assert "bearerTokenSecret" not in endpoint
    assert endpoint["authorization"]["type"] == "Bearer"
    assert endpoint["authorization"]["credentials"]["name"] == m.one("Secret")["metadata"]["name"]


# -- the broker's config ------------------------------------------------------------------------


def test_the_rendered_config_is_accepted_by_the_broker(rendered: Manifests) -> None:
    settings = settings_from_mapping(rendered.broker_config)
    assert settings.host == "0.0.0.0"
    assert settings.port == rendered.container["ports"][0]["containerPort"]
    assert settings.policy_dir == "/etc/jit/policies"


def test_the_production_example_renders_quotas_into_the_config() -> None:
    """docs/configuration.md says the production example sets quotas: they reach the broker."""
    settings = settings_from_mapping(render(CHART / "ci" / "production-values.yaml").broker_config)
    assert settings.quotas.workload.live_leases == 200
    assert settings.quotas.workload.mints_per_minute == 120
    assert settings.quotas.owner.live_leases == 5000


def test_the_rendered_policies_lint_clean(rendered: Manifests, tmp_path: Path) -> None:
    if rendered.volume("policies")["configMap"]["name"] not in {
        c["metadata"]["name"] for c in rendered.all("ConfigMap")
    }:
        pytest.skip("policies come from a ConfigMap the operator manages")
    for name, text in rendered.config_map("policies")["data"].items():
        (tmp_path / name).write_text(text)
    config = rendered.broker_config
    problems = lint_policy_dir(tmp_path, issuers=set(config.get("issuers", {})))
    assert problems == []


def _mounted_files(m: Manifests) -> set[str]:
    """Every file path the container sees from its configMap and secret volumes."""
    volumes = {v["name"]: v for v in m.pod["volumes"]}
    files: set[str] = set()
    for mount in m.container["volumeMounts"]:
        v = volumes[mount["name"]]
        src = v.get("secret") or v.get("configMap")
        if src is None:
            continue
        if "subPath" in mount:
            files.add(mount["mountPath"])
        elif "items" in src:
            files |= {f"{mount['mountPath']}/{i['path']}" for i in src["items"]}
        else:
            files.add(mount["mountPath"] + "/")  # a whole Secret: a directory of its keys
    return files


def _file_keys(node: Any, path: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(v, str) and (k.endswith("_file") or k == "keys_dir"):
                out.append((f"{path}.{k}", v))
            else:
                out += _file_keys(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _file_keys(v, f"{path}[{i}]")
    return out


def test_every_file_the_config_names_is_mounted(rendered: Manifests) -> None:
    files = _mounted_files(rendered)
    config = rendered.broker_config
    named = _file_keys(config)
    assert named, "the config names no file at all"
    for key, path in named:
        if key.endswith("keys_dir"):
            assert path + "/" in files, f"{key}: {path} is not a mounted directory"
        elif key == ".audit.file":
            mounts = {m["mountPath"] for m in rendered.container["volumeMounts"]}
            assert str(Path(path).parent) in mounts
        else:
            assert path in files, f"{key}: {path} is not mounted"
    assert config["policy_dir"] in {m["mountPath"] for m in rendered.container["volumeMounts"]}


def test_no_secret_value_is_inline_in_a_config_map_or_the_environment(
    rendered: Manifests,
) -> None:
    words = re.compile(r"password|secret|token|private", re.IGNORECASE)
    for cm in rendered.all("ConfigMap"):
        for text in cm["data"].values():
            assert "PRIVATE KEY" not in text
    config = rendered.broker_config
    assert "redis_url" not in config
    assert urlsplit(config["redis"].get("url", "redis://x")).password is None

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if words.search(k) and not k.endswith("_file"):
                    raise AssertionError(f"{path}.{k} looks like an inline secret")
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk({k: v for k, v in config.items() if k != "issuers"}, "config")
    for var in rendered.container.get("env", []):
        if words.search(var["name"]):
            assert "valueFrom" in var, f"{var['name']} is given inline"
        assert "REDIS" not in var["name"], "Redis settings come from the config file only"


def test_the_chart_renders_a_secret_only_for_dev_secrets() -> None:
    assert render(CHART / "ci" / "production-values.yaml").all("Secret") == []
    (secret,) = render(CHART / "ci" / "dev-values.yaml").all("Secret")
    assert secret["metadata"]["labels"]["jit-broker/dev-only"] == "true"
    assert "development only" in secret["metadata"]["annotations"]["jit-broker/warning"]
    assert set(secret["data"]) == {"audit-signing.pem", "audit-hmac", "metrics-token"}


def test_the_redis_password_reaches_the_broker_only_as_a_mounted_file() -> None:
    m = render(CHART / "ci" / "production-values.yaml")
    assert "env" not in m.container or all("REDIS" not in e["name"] for e in m.container["env"])
    redis = m.broker_config["redis"]
    assert redis["password_file"] == "/etc/jit/secrets/redis/password"
    assert redis["username"] == "jit-broker"
    volume = m.volume("redis-password")["secret"]
    assert volume == {
        "secretName": "jit-redis",
        "defaultMode": 0o440,
        "items": [{"key": "redis-password", "path": "password"}],
    }
    (mount,) = [v for v in m.container["volumeMounts"] if v["name"] == "redis-password"]
    assert mount == {
        "name": "redis-password",
        "mountPath": "/etc/jit/secrets/redis",
        "readOnly": True,
    }
    assert urlsplit(redis["url"]).scheme == "rediss"
    assert redis["tls"] is True
    assert redis["ca_file"] == "/etc/jit/redis-ca/ca.crt"
    assert m.volume("redis-ca")["configMap"]["name"] == "corporate-ca-bundle"


# -- the pod -------------------------------------------------------------------------------------


def test_every_container_is_locked_down(rendered: Manifests) -> None:
    pod = rendered.pod
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["runAsUser"] == 10001
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert "emptyDir" in rendered.volume(mounts["/tmp"])
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False


def test_secret_volumes_are_read_only_and_group_readable_only(rendered: Manifests) -> None:
    secret_volumes = {v["name"] for v in rendered.pod["volumes"] if "secret" in v}
    assert "audit-keys" in secret_volumes
    for v in rendered.pod["volumes"]:
        if "secret" in v:
            assert v["secret"]["defaultMode"] == 0o440
    for m in rendered.container["volumeMounts"]:
        if m["name"] in secret_volumes:
            assert m["readOnly"] is True


def test_the_container_runs_jit_serve_with_the_mounted_config(rendered: Manifests) -> None:
    c = rendered.container
    assert c["command"] == ["jit"]
    assert c["args"] == ["serve", "--config", "/etc/jit/config.yaml"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/jit/config.yaml"]["subPath"] == "config.yaml"


def test_probes_check_liveness_readiness_and_start_up(rendered: Manifests) -> None:
    c = rendered.container
    port_names = {p["name"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in port_names
    assert c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]


def test_rolling_updates_keep_every_replica_serving(rendered: Manifests) -> None:
    spec = rendered.deployment["spec"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_drain_fits_in_the_grace_period(rendered: Manifests) -> None:
    """preStop sleep (endpoints drop the pod), then the broker's shutdown: drain_delay and
    drain_timeout, then closing: all before the kubelet's SIGKILL; and the longest request (an
    approval long-poll, approvals.max_wait) finishes within drain_timeout."""
    settings = settings_from_mapping(rendered.broker_config)
    grace = rendered.pod["terminationGracePeriodSeconds"]
    sleep = int(rendered.container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert rendered.container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert sleep >= 5  # endpoints take a few seconds to drop a terminating pod
    delay = settings.shutdown.drain_delay.total_seconds()
    timeout = settings.shutdown.drain_timeout.total_seconds()
    assert timeout < grace - sleep - delay
    # the reaper's revocations in flight finish (each within issuer_timeout), then closing
    closing = settings.reaper.issuer_timeout.total_seconds() + 5
    assert grace - sleep - delay - timeout >= closing
    assert timeout > settings.approvals.max_wait.total_seconds()


def test_two_replicas_by_default_and_none_rendered_under_an_autoscaler(
    rendered: Manifests,
) -> None:
    hpa = rendered.maybe("HorizontalPodAutoscaler")
    if hpa is None:
        assert rendered.deployment["spec"]["replicas"] >= 1
    else:
        assert "replicas" not in rendered.deployment["spec"]
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == (
            "Deployment",
            rendered.deployment["metadata"]["name"],
        )
        assert hpa["spec"]["minReplicas"] >= 2
    assert render(CHART / "ci" / "minimal-values.yaml").deployment["spec"]["replicas"] == 2


def test_replicas_spread_over_nodes_and_zones() -> None:
    m = render(CHART / "ci" / "minimal-values.yaml")
    labels = m.deployment["spec"]["template"]["metadata"]["labels"]
    (term,) = m.pod["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert matches(term["podAffinityTerm"]["labelSelector"]["matchLabels"], labels)
    (zone,) = m.pod["topologySpreadConstraints"]
    assert zone["topologyKey"] == "topology.kubernetes.io/zone"
    assert zone["whenUnsatisfiable"] == "ScheduleAnyway"
    hard = render(CHART / "ci" / "production-values.yaml").pod["affinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in hard["podAntiAffinity"]
    assert "nodeAffinity" in hard  # the operator's rules are kept beside it


def test_selectors_of_every_object_match_the_pods(rendered: Manifests) -> None:
    labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(rendered.deployment["spec"]["selector"]["matchLabels"], labels)
    assert matches(rendered.one("Service")["spec"]["selector"], labels)
    pdb = rendered.maybe("PodDisruptionBudget")
    if pdb is not None:
        assert matches(pdb["spec"]["selector"]["matchLabels"], labels)
    np = rendered.maybe("NetworkPolicy")
    if np is not None:
        assert matches(np["spec"]["podSelector"]["matchLabels"], labels)


def test_network_policy_ports_match_the_service_and_redis(rendered: Manifests) -> None:
    np = rendered.maybe("NetworkPolicy")
    if np is None:
        pytest.skip("networkPolicy.enabled is false in this values file")
    service_port = rendered.one("Service")["spec"]["ports"][0]
    container_ports = {p["name"]: p["containerPort"] for p in rendered.container["ports"]}
    assert service_port["targetPort"] in container_ports
    ingress_ports = [p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"]]
    assert ingress_ports == [service_port["targetPort"]]
    redis = rendered.broker_config["redis"]
    seeds = redis.get("sentinels", []) + redis.get("nodes", [])
    redis_ports = {int(s.rpartition(":")[2]) for s in seeds}
    if "url" in redis:
        redis_ports.add(urlsplit(redis["url"]).port or 6379)
    egress_ports = {p["port"] for rule in np["spec"]["egress"] for p in rule.get("ports", [])}
    assert {53, 443} | redis_ports <= egress_ports


def test_a_config_change_rolls_the_pods_and_an_unrelated_one_does_not() -> None:
    base = CHART / "ci" / "minimal-values.yaml"

    def checksums(*sets: str) -> dict[str, str]:
        annotations = render(base, sets=sets).deployment["spec"]["template"]["metadata"][
            "annotations"
        ]
        return {k: v for k, v in annotations.items() if k.startswith("checksum/")}

    before = checksums()
    assert set(before) == {"checksum/config", "checksum/policies"}
    config_changed = checksums("config.logging.level=DEBUG")
    assert config_changed["checksum/config"] != before["checksum/config"]
    assert config_changed["checksum/policies"] == before["checksum/policies"]
    policies_changed = checksums("policies.files.extra\\.yaml=owner: x")
    assert policies_changed["checksum/policies"] != before["checksum/policies"]
    assert checksums("replicaCount=3") == before
    text = render(base).config_map("config")
    assert len(before["checksum/config"]) == len(hashlib.sha256(b"").hexdigest())
    assert text["data"]["config.yaml"]


def test_a_managed_policies_config_map_is_mounted_without_a_checksum() -> None:
    m = render(CHART / "ci" / "hpa-values.yaml")
    assert m.volume("policies")["configMap"]["name"] == "jit-policies"
    assert "jit-policies" not in {c["metadata"]["name"] for c in m.all("ConfigMap")}
    annotations = m.deployment["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/policies" not in annotations


def test_the_image_defaults_to_the_app_version_and_a_digest_wins() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (
        render(CHART / "ci" / "minimal-values.yaml").container["image"]
        == f"jit-broker:{chart['appVersion']}"
    )
    prod = values_of("production")
    assert render(CHART / "ci" / "production-values.yaml").container["image"] == (
        f"{prod['image']['repository']}@{prod['image']['digest']}"
    )


def test_pdb_keeps_one_replica_through_a_drain(rendered: Manifests) -> None:
    pdb = rendered.maybe("PodDisruptionBudget")
    if pdb is None:
        pytest.skip("podDisruptionBudget.enabled is false in this values file")
    spec = pdb["spec"]
    replicas = rendered.deployment["spec"].get("replicas")
    if "minAvailable" in spec:
        assert replicas is not None
        assert spec["minAvailable"] < replicas
    else:
        assert spec["maxUnavailable"] >= 1


def test_notes_tell_the_operator_what_to_do_next(tmp_path: Path) -> None:
    """NOTES.txt is not rendered by `helm template`: render it from a copy of the chart."""
    chart = tmp_path / "jit-broker"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n'
    )
    out = helm(
        "template",
        "jit-broker",
        str(chart),
        "--namespace",
        "jit",
        "-f",
        str(CHART / "ci" / "production-values.yaml"),
        "--show-only",
        "templates/zz-notes.yaml",
    ).stdout
    out = yaml.safe_load(out)["data"]["notes"]
    assert "kubectl -n jit rollout status deployment/jit-broker" in out
    assert "jit-audit-keys" in out
    assert "jit-signing-keys" in out
    assert "jit-redis" in out
    assert "jit keys rotate" in out
    assert "GET /metrics" in out
    assert "jit-metrics" in out
    assert "appendfsync everysec" in out
    assert "redis-password" in out
