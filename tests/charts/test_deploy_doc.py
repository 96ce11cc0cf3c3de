"""docs/deploy.md's commands and example, run as written (kubectl in client dry-run, `helm
install` as `helm template`): the example values install, the policies ConfigMap made as
documented is what the broker loads. (The Secret commands and the key rotation are run by the
smoke test.)"""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate

from broker.config import settings_from_mapping
from broker.policy import lint_policy_dir
from tests.charts.chartkit import (
    CHART,
    KUBE_VERSION,
    ROOT,
    Manifests,
    doc_block,
    lay_out_pod,
    render,
    run_doc_block,
)

POLICY = """owner: platform
workloads:
  - issuer: github
    claims:
      repository_id: "123456"
grants:
  - name: read-orders
    issuer: jwt
    resource: https://orders.internal
    actions: [read]
    max_ttl: 30m
    approval: none
"""


def test_the_example_values_install_as_documented(tmp_path: Path) -> None:
    (tmp_path / "charts").symlink_to(ROOT / "charts")
    (tmp_path / "jit-values.yaml").write_text(doc_block("values-example"))
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "platform.yaml").write_text(POLICY)
    objects = run_doc_block("install", tmp_path)
    m = Manifests(objects)
    for doc in objects:
        if doc["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    # --set-file with the escaped dot made one policy file of that name
    assert m.config_map("policies")["data"] == {"platform.yaml": POLICY}
    settings = settings_from_mapping(m.broker_config)
    assert settings.public_url == "https://jit.example.com"
    assert m.broker_config["redis"]["mode"] == "sentinel"
    assert settings.public_url == "https://jit.example.com"
    assert m.deployment["spec"]["replicas"] == 3
    assert m.one("Ingress")["spec"]["rules"][0]["host"] == "jit.example.com"


def test_a_policies_config_map_made_as_documented_is_what_the_broker_loads(
    tmp_path: Path,
) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "platform.yaml").write_text(POLICY)
    (tmp_path / "policies" / "billing.yaml").write_text(POLICY.replace("platform", "billing"))
    (config_map,) = run_doc_block("policies-configmap", tmp_path)
    assert config_map["metadata"]["name"] == "jit-policies"
    manifests = render(CHART / "ci" / "hpa-values.yaml")  # policies.existingConfigMap
    assert manifests.volume("policies")["configMap"]["name"] == "jit-policies"
    pod = lay_out_pod(
        manifests, tmp_path / "pod", {}, {"jit-policies": config_map["data"]}, only={"policies"}
    )
    policy_dir = pod.mounts[manifests.broker_config["policy_dir"]]
    assert sorted(p.name for p in policy_dir.iterdir() if not p.name.startswith("..")) == [
        "billing.yaml",
        "platform.yaml",
    ]
    assert lint_policy_dir(policy_dir, issuers={"jwt"}) == []


def test_the_readme_and_the_architecture_page_link_the_deploy_guide() -> None:
    for page in ("README.md", "docs/architecture.md"):
        assert re.search(r"\]\((docs/)?deploy\.md\)", (ROOT / page).read_text()), page


def test_the_sentinel_example_renders_what_it_says(tmp_path: Path) -> None:
    example = tmp_path / "redis-values.yaml"
    example.write_text(doc_block("redis-sentinel-example"))
    m = render(CHART / "ci" / "minimal-values.yaml", example, sets=["redis.host="])
    redis = settings_from_mapping(m.broker_config).redis
    assert redis is not None
    assert (redis.mode, redis.master_name, redis.db, redis.wait_replicas) == (
        "sentinel",
        "jit",
        1,
        1,
    )
    assert redis.password_file == "/etc/jit/secrets/redis/password"
    assert redis.sentinel_password_file == "/etc/jit/secrets/redis-sentinel/password"
    assert len(redis.sentinels or []) == 3
