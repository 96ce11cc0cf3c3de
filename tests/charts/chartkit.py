"""Render charts/jit-broker with the real helm, and lay the rendered volumes out on disk the way
the kubelet mounts them, so that tests can start the exact broker a pod would run."""

from __future__ import annotations

import base64
import copy
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.charts import tools

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "jit-broker"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBE_VERSION = "1.30.0"  # the Kubernetes version the manifests are rendered and validated for
NAMESPACE = "jit"
RELEASE = "jit-broker"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    tools.ensure()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(ROOT / ".venv"), "KUBECONFIG": ""}
    result = subprocess.run(
        [str(tools.HELM), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def template_args(*values: Path | str, sets: Iterable[str] = ()) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    args += ["--kube-version", KUBE_VERSION]
    for v in values:
        args += ["-f", str(v)]
    for s in sets:
        args += ["--set", s]
    return args


def render(*values: Path | str, sets: Iterable[str] = ()) -> Manifests:
    """The chart rendered with these values files and ``--set`` arguments (a fresh copy of a
    cached render: many tests look at the same values)."""
    key = (tuple(Path(v).read_text() for v in values), tuple(values), tuple(sets))
    if key not in _RENDERED:
        out = helm(*template_args(*values, sets=sets)).stdout
        _RENDERED[key] = [d for d in yaml.safe_load_all(out) if d]
    return Manifests(copy.deepcopy(_RENDERED[key]))


_RENDERED: dict[tuple[object, ...], list[dict[str, Any]]] = {}


def render_error(*values: Path | str, sets: Iterable[str] = ()) -> str:
    """The error of a render that must fail (AssertionError if it renders)."""
    result = helm(*template_args(*values, sets=sets), check=False)
    if result.returncode == 0:
        raise AssertionError("helm template rendered values it should have refused")
    return result.stderr


@dataclass
class Manifests:
    docs: list[dict[str, Any]]

    def kinds(self) -> list[str]:
        return [d["kind"] for d in self.docs]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"{len(found)} {kind} objects named {name}"
        return found[0]

    def maybe(self, kind: str) -> dict[str, Any] | None:
        found = self.all(kind)
        return found[0] if found else None

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod(self) -> dict[str, Any]:
        return dict(self.deployment["spec"]["template"]["spec"])

    @property
    def container(self) -> dict[str, Any]:
        containers = self.pod["containers"]
        assert len(containers) == 1
        return dict(containers[0])

    def config_map(self, volume: str) -> dict[str, Any]:
        """The ConfigMap a pod volume mounts (it must be rendered by the chart)."""
        name = self.volume(volume)["configMap"]["name"]
        return self.one("ConfigMap", name)

    def volume(self, name: str) -> dict[str, Any]:
        return next(v for v in self.pod["volumes"] if v["name"] == name)

    @property
    def broker_config(self) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load(self.config_map("config")["data"]["config.yaml"])
        return data


# -- the kubelet, as far as files go -----------------------------------------------------------


def expand_env(
    env: list[dict[str, Any]], secrets: Mapping[str, Mapping[str, bytes]]
) -> dict[str, str]:
    """A container's environment as the kubelet builds it: ``valueFrom.secretKeyRef`` read from
    ``secrets``, and ``$(NAME)`` in a value replaced by an earlier variable (``$$`` escapes)."""
    out: dict[str, str] = {}
    for var in env:
        if "valueFrom" in var:
            ref = var["valueFrom"]["secretKeyRef"]
            out[var["name"]] = secrets[ref["name"]][ref["key"]].decode()
            continue

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name = m.group(1)
            return out[name] if name in out else m.group(0)

        out[var["name"]] = re.sub(
            r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, var.get("value", "")
        )
    return out


def _atomic_dir(target: Path, files: Mapping[str, bytes], mode: int) -> None:
    """Write ``files`` the way the kubelet's atomic writer does for a configMap or secret
    volume, first time or update: the data in a new timestamped hidden directory, ``..data``
    switched to it in one rename, one symlink per file through ``..data``, stale ones removed."""
    target.mkdir(parents=True, exist_ok=True)
    old = target / "..data"
    previous = os.readlink(old) if old.is_symlink() else None
    stamp = target / f"..{time.time_ns()}"
    stamp.mkdir()
    for rel, content in files.items():
        p = stamp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
        p.chmod(mode)
    tmp = target / "..data_tmp"
    tmp.symlink_to(stamp.name)
    tmp.rename(old)
    names = {r.split("/")[0] for r in files}
    for entry in target.iterdir():
        if not entry.name.startswith("..") and entry.name not in names:
            entry.unlink()
    for name in names:
        if not (target / name).is_symlink():
            (target / name).symlink_to(f"..data/{name}")
    if previous is not None:
        shutil.rmtree(target / previous)


def update_secret_volume(
    manifests: Manifests, pod: Pod, volume: str, secret: Mapping[str, bytes]
) -> None:
    """What the kubelet does when a mounted Secret changes (not for subPath mounts)."""
    v = manifests.volume(volume)
    laid = _volume_files(v, {}, {v["secret"]["secretName"]: secret})
    assert laid is not None
    files, mode = laid
    mount = next(m for m in manifests.container["volumeMounts"] if m["name"] == volume)
    _atomic_dir(pod.mounts[mount["mountPath"]], files, mode)


def _volume_files(
    volume: dict[str, Any],
    config_maps: Mapping[str, Mapping[str, str]],
    secrets: Mapping[str, Mapping[str, bytes]],
) -> tuple[dict[str, bytes], int] | None:
    if "configMap" in volume:
        src = volume["configMap"]
        data = {k: v.encode() for k, v in config_maps[src["name"]].items()}
        mode = 0o644
    elif "secret" in volume:
        src = volume["secret"]
        data = dict(secrets[src["secretName"]])
        mode = 0o644
    else:
        return None
    mode = src.get("defaultMode", mode)
    if "items" in src:
        data = {item["path"]: data[item["key"]] for item in src["items"]}
    return data, mode


@dataclass
class Pod:
    """The rendered pod's files under ``root``: every mount path of the container, prefixed."""

    root: Path
    mounts: dict[str, Path] = field(default_factory=dict)  # mountPath -> where it is here

    def local(self, text: str) -> str:
        """``text`` with every mount path of the pod replaced by its place under ``root``, in
        one pass (longest first), and only where a path starts and ends."""
        alternatives = "|".join(re.escape(m) for m in sorted(self.mounts, key=len, reverse=True))
        pattern = rf"(?<![\w/.-])({alternatives})(?=$|[/\s\"',\]}}?])"
        return re.sub(pattern, lambda m: str(self.mounts[m.group(1)]), text, flags=re.MULTILINE)


def lay_out_pod(
    manifests: Manifests,
    root: Path,
    secrets: Mapping[str, Mapping[str, bytes]],
    extra_config_maps: Mapping[str, Mapping[str, str]] | None = None,
    only: Iterable[str] | None = None,
) -> Pod:
    """Create, under ``root``, every volume the container mounts (or those named in ``only``),
    from the rendered ConfigMaps and the given Secrets (name -> key -> bytes), as the kubelet
    would."""
    config_maps = {cm["metadata"]["name"]: cm.get("data", {}) for cm in manifests.all("ConfigMap")}
    config_maps.update(extra_config_maps or {})
    all_secrets = dict(secrets)
    for s in manifests.all("Secret"):
        data = {k: base64.b64decode(v) for k, v in (s.get("data") or {}).items()}
        data.update({k: v.encode() for k, v in (s.get("stringData") or {}).items()})
        all_secrets[s["metadata"]["name"]] = data
    volumes = {v["name"]: v for v in manifests.pod["volumes"]}
    pod = Pod(root)
    shared: dict[str, Path] = {}
    for m in manifests.container["volumeMounts"]:
        if only is not None and m["name"] not in set(only):
            continue
        volume = volumes[m["name"]]
        here = root / m["mountPath"].lstrip("/")
        pod.mounts[m["mountPath"]] = here
        laid = _volume_files(volume, config_maps, all_secrets)
        if laid is None:  # emptyDir, persistentVolumeClaim: an empty writable directory
            source = shared.setdefault(m["name"], root / "volumes" / m["name"])
            source.mkdir(parents=True, exist_ok=True)
            here.parent.mkdir(parents=True, exist_ok=True)
            here.symlink_to(source)
            continue
        files, mode = laid
        if "subPath" in m:
            here.parent.mkdir(parents=True, exist_ok=True)
            here.write_bytes(files[m["subPath"]])
            here.chmod(mode)
        else:
            _atomic_dir(here, files, mode)
    return pod


# -- the commands of docs/deploy.md --------------------------------------------------------------


def doc_block(name: str) -> str:
    """A shell block of docs/deploy.md, between <!-- name:begin --> and <!-- name:end -->."""
    block = re.search(
        rf"<!-- {name}:begin -->\s*```(?:sh|yaml)\n(.*?)```\s*<!-- {name}:end -->",
        DEPLOY_DOC.read_text(),
        re.DOTALL,
    )
    assert block, f"docs/deploy.md has no {name} block"
    return block.group(1)


# Shell functions standing in for a cluster: kubectl runs in client dry-run and whatever it
# would create or apply is appended to $OUT; `helm install` becomes `helm template` into $OUT.
_STAND_INS = """
kubectl() {
  case " $* " in
    *" apply "*) cat >> "$OUT" ;;
    *" --dry-run=client "*) command kubectl "$@" ;;
    *) command kubectl "$@" --dry-run=client -o yaml >> "$OUT" ;;
  esac
  echo --- >> "$OUT"
}
helm() {
  if [ "$1" = install ]; then shift; command helm template "$@" >> "$OUT"
  else command helm "$@"; fi
}
"""


def run_doc_block(name: str, workdir: Path) -> list[dict[str, Any]]:
    """Run a shell block of the docs in ``workdir`` with the stand-ins above: the objects it
    would have created in the cluster."""
    tools.ensure()
    out = workdir / f"{name}.out.yaml"
    out.touch()
    env = {
        "PATH": f"{tools.BIN}:{os.environ['PATH']}",
        "HOME": str(workdir),
        "KUBECONFIG": str(workdir / "no-kubeconfig"),
        "OUT": str(out),
    }
    result = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + _STAND_INS + doc_block(name)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return [d for d in yaml.safe_load_all(out.read_text()) if d]


def secrets_of(objects: list[dict[str, Any]]) -> dict[str, dict[str, bytes]]:
    """Secret objects as name -> key -> bytes (a later one of a name replaces an earlier one)."""
    out: dict[str, dict[str, bytes]] = {}
    for doc in objects:
        if doc.get("kind") == "Secret":
            out[doc["metadata"]["name"]] = {
                k: base64.b64decode(v) for k, v in (doc.get("data") or {}).items()
            }
    return out
