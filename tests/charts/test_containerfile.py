"""The Containerfile at the repository root. No container engine runs here, so the image is not
built (docs/deploy.md); these tests keep the file honest: its final stage runs as the chart's
non-root user with no build tools and no source tree, it agrees with the chart on the command,
config path and port, and its build stage's context (what it COPYs) makes a complete wheel."""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field

import yaml

from tests.charts.chartkit import CHART, ROOT

CONTAINERFILE = ROOT / "Containerfile"
BUILD_TOOLS = re.compile(
    r"\b(apt-get|apt|apk|yum|dnf|microdnf|gcc|g\+\+|cc|clang|make|build-essential|"
    r"python3?-dev|libc6?-dev|rustc|cargo)\b"
)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, rest)

    def all(self, instruction: str) -> list[str]:
        return [rest for ins, rest in self.instructions if ins == instruction]


def stages() -> list[Stage]:
    text = CONTAINERFILE.read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out: list[Stage] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        instruction, _, rest = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            out.append(Stage(words[0], name))
        elif out:
            out[-1].instructions.append((instruction, rest.strip()))
    return out


def chart_values() -> dict[str, object]:
    values: dict[str, object] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def test_the_image_is_built_in_two_stages_from_a_slim_python() -> None:
    build, final = stages()
    assert build.name == "build"
    assert build.base == final.base == "${PYTHON_IMAGE}"
    arg = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", CONTAINERFILE.read_text(), re.MULTILINE)
    assert arg
    assert "python:" in arg.group(1)
    assert "-slim" in arg.group(1)
    assert any("pip wheel" in run for run in build.all("RUN"))


def test_the_final_stage_runs_as_the_charts_non_root_user() -> None:
    final = stages()[-1]
    (user,) = final.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) != 0
    pod = chart_values()["podSecurityContext"]
    assert isinstance(pod, dict)
    assert (int(uid), int(gid)) == (pod["runAsUser"], pod["runAsGroup"])
    # USER comes after the last RUN: nothing runs as root after it is set
    kinds = [ins for ins, _ in final.instructions]
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN")


def test_the_final_stage_has_no_build_tools_and_no_source() -> None:
    final = stages()[-1]
    for run in final.all("RUN"):
        assert not BUILD_TOOLS.search(run), f"build tool in the final stage: {run}"
        if "pip install" in run:
            assert "--no-index" in run  # only the wheels built in the first stage
            assert "--mount=type=bind,from=build" in run
    assert final.all("COPY") == []
    assert final.all("ADD") == []
    assert any("pip uninstall --yes pip" in run for run in final.all("RUN"))


def test_the_build_tools_check_can_fail() -> None:
    assert BUILD_TOOLS.search("apt-get install -y gcc")
    assert not BUILD_TOOLS.search('python -m pip install --no-index "jit-broker[aws]"')


def test_the_image_command_is_what_the_chart_runs() -> None:
    final = stages()[-1]
    (entrypoint,) = final.all("ENTRYPOINT")
    (cmd,) = final.all("CMD")
    (expose,) = final.all("EXPOSE")
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    assert yaml.safe_load(entrypoint) == ["jit"]
    assert 'command: ["jit"]' in deployment
    assert yaml.safe_load(cmd) == ["serve", "--config", "/etc/jit/config.yaml"]
    paths = (CHART / "templates" / "_helpers.tpl").read_text()
    assert "config: /etc/jit/config.yaml" in paths
    assert int(expose) == chart_values()["containerPort"]


def test_the_image_carries_every_issuer_backend_extra() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    # mcp serves `jit mcp`, which runs beside an agent, not in the broker's image.
    backends = set(extras) - {"test", "mcp"}
    for stage in stages():
        (arg,) = [a for a in stage.all("ARG") if a.startswith("EXTRAS=")]
        assert set(arg.removeprefix("EXTRAS=").split(",")) == backends


def test_the_build_context_is_what_the_build_stage_copies() -> None:
    ignore = (ROOT / ".containerignore").read_text().splitlines()
    allowed = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    copied = set()
    for rest in stages()[0].all("COPY"):
        *sources, _dest = shlex.split(rest)
        copied |= {s.rstrip("/") for s in sources}
    assert copied == allowed
    assert (ROOT / ".dockerignore").read_text() == (ROOT / ".containerignore").read_text()


def test_the_build_stage_copies_everything_the_wheel_is_made_of() -> None:
    """pyproject.toml's packages, package data and readme all lie in what the stage COPYs (a
    new top-level package that is not copied would be missing from the image)."""
    copied = set()
    for rest in stages()[0].all("COPY"):
        *sources, _dest = shlex.split(rest)
        copied |= {s.rstrip("/") for s in sources}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "pyproject.toml" in copied
    assert project["project"]["readme"] in copied
    setuptools = project["tool"]["setuptools"]
    for pattern in setuptools["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in copied
    for package in setuptools.get("package-data", {}):
        assert package.split(".")[0] in copied
    for target in project["project"]["entry-points"]["jit_broker.issuers"].values():
        assert target.split(".")[0] in copied
    top_level = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert top_level - {"tests", "bench"} <= copied
