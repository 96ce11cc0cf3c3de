"""The wheel ships what users need: type information for both packages, the sample policy of
`jit dev`, the `jit` command and the built-in issuer entry points, and truthful metadata (an
SPDX license, classifiers, project URLs). Built from a copy of the sources, without build
isolation (setuptools comes with the test extras), in about three seconds."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ISSUERS = ["aws", "github", "jwt", "postgres", "redis", "ssh", "x509"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in ("broker", "issuers"):
        shutil.copytree(
            ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"),
            *("--disable-pip-version-check", "-w", str(out), str(src)),
        ],
        check=True,
        capture_output=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    (built,) = out.glob("jit_broker-*.whl")
    return zipfile.ZipFile(built)


def dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(path).decode()


@pytest.mark.parametrize(
    "path", ["broker/py.typed", "issuers/py.typed", "broker/dev/policy.yaml", "broker/decoding.py"]
)
def test_the_wheel_ships_the_file(wheel: zipfile.ZipFile, path: str) -> None:
    assert path in wheel.namelist()


def test_the_wheel_declares_the_command_and_every_built_in_issuer(wheel: zipfile.ZipFile) -> None:
    text = dist_info(wheel, "entry_points.txt")
    assert "[console_scripts]\njit = broker.cli.main:main" in text
    section = text.split("[jit_broker.issuers]", 1)[1]
    declared = {line.split(" = ")[0] for line in section.strip().splitlines()}
    assert declared == set(ISSUERS)


def test_the_metadata_names_the_license_classifiers_and_urls(wheel: zipfile.ZipFile) -> None:
    meta = Parser().parsestr(dist_info(wheel, "METADATA"))
    assert meta["License-Expression"] == "Apache-2.0"
    assert "Typing :: Typed" in meta.get_all("Classifier", [])
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL", []))
    assert {"Homepage", "Source", "Issues", "Documentation"} <= set(urls)
