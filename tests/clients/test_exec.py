"""`jit exec` as a user runs it, against the real broker: the command gets its credentials in
its environment and in 0600 files, its exit code (or 128+signal) is jit's, signals reach it,
and however it ends the task is completed (or, --keep-task, the leases revoked). No secret is
on a command line. SSH: the real ssh client logs in to a real sshd with the certificate."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt as pyjwt
import pytest

from tests.clients.support import Serve, assert_dead, jit_env
from tests.e2e.conftest import JIT
from tests.issuers.ssh_support import Sshd, login_user

pytestmark = pytest.mark.e2e

API = "https://api.internal"


def task_of(broker: Serve, token: str, task_id: str) -> dict[str, object]:
    resp = httpx.get(
        f"{broker.url}/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, object] = resp.json()
    return body


# The child saves what it was given, the way a test can look at it afterwards: the token
# (from its environment), the mode of its files, and the command lines of itself and of jit.
SAVE = (
    'printf %s "$JIT_ACCESS_TOKEN" > "$OUT/token"; '
    'tr "\\0" " " < /proc/$PPID/cmdline > "$OUT/jit-cmdline"; '
    'tr "\\0" " " < /proc/$$/cmdline > "$OUT/child-cmdline"; '
)


@pytest.fixture
def outdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OUT", str(tmp_path))
    return tmp_path


def run_exec(
    broker: Serve, token: str, outdir: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JIT, "exec", *args],
        env=jit_env(broker, token, OUT=str(outdir)),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_a_command_that_fails_still_gets_its_task_completed(
    broker: Serve, job: str, outdir: Path
) -> None:
    out = run_exec(
        broker, job, outdir,
        "--task", "build-43", "--resource", API, "--action", "read", "--ttl", "5m",
        "--", "sh", "-c", SAVE + "exit 3",
    )  # fmt: skip
    assert out.returncode == 3, out.stderr
    token = (outdir / "token").read_text()
    lease_id = pyjwt.decode(token, options={"verify_signature": False})["jti"]
    assert_dead(broker, job, token, lease_id)
    assert task_of(broker, job, "build-43")["state"] == "completed"
    for where in ("jit-cmdline", "child-cmdline"):
        assert token not in (outdir / where).read_text()
    assert "jit exec" in (outdir / "jit-cmdline").read_text()
    assert token not in out.stdout + out.stderr
    assert token not in broker.log.read_text()


def test_a_command_killed_by_a_signal_exits_128_plus_it_and_its_credential_dies(
    broker: Serve, job: str, outdir: Path
) -> None:
    out = run_exec(
        broker, job, outdir, "--resource", API, "--action", "read",
        "--", "sh", "-c", SAVE + "kill -KILL $$",
    )  # fmt: skip
    assert out.returncode == 128 + signal.SIGKILL, out.stderr
    token = (outdir / "token").read_text()
    lease_id = pyjwt.decode(token, options={"verify_signature": False})["jti"]
    assert_dead(broker, job, token, lease_id)


@pytest.mark.parametrize(
    ("case", "sig", "trapped"),
    [
        ("SIGTERM reaches the command, which exits as it likes", signal.SIGTERM, True),
        ("SIGINT outside a terminal reaches the command and kills it", signal.SIGINT, False),
        ("SIGHUP reaches the command", signal.SIGHUP, True),
        ("SIGQUIT reaches the command and kills it", signal.SIGQUIT, False),
    ],
)
def test_signals_to_jit_are_forwarded_to_the_command(
    broker: Serve, job: str, outdir: Path, case: str, sig: signal.Signals, trapped: bool
) -> None:
    trap = f'trap "echo got-{sig.name} > $OUT/signal; exit 7" {sig.name[3:]}; ' if trapped else ""
    proc = subprocess.Popen(
        [
            JIT, "exec", "--task", f"sig-{sig.name}", "--resource", API, "--action", "read",
            "--", "sh", "-c",
            SAVE + trap + 'touch "$OUT/ready"; while :; do sleep 0.1; done',
        ],
        env=jit_env(broker, job, OUT=str(outdir)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (outdir / "ready").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the command did not start"
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if trapped:
        assert proc.returncode == 7, err
        assert (outdir / "signal").read_text().strip() == f"got-{sig.name}"
    else:
        assert proc.returncode == 128 + sig, err
    token = (outdir / "token").read_text()
    lease_id = pyjwt.decode(token, options={"verify_signature": False})["jti"]
    assert_dead(broker, job, token, lease_id)
    assert task_of(broker, job, f"sig-{sig.name}")["state"] == "completed"


def test_keep_task_revokes_the_leases_and_leaves_the_task_open(
    broker: Serve, job: str, outdir: Path
) -> None:
    out = run_exec(
        broker, job, outdir, "--task", "kept-1", "--keep-task", "--resource", API,
        "--action", "read", "--", "sh", "-c", SAVE,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    token = (outdir / "token").read_text()
    lease_id = pyjwt.decode(token, options={"verify_signature": False})["jti"]
    assert_dead(broker, job, token, lease_id)
    assert task_of(broker, job, "kept-1")["state"] == "open"


def test_several_credentials_each_under_its_prefix(broker: Serve, job: str, outdir: Path) -> None:
    out = run_exec(
        broker, job, outdir, "--task", "multi-1",
        "--resource", API, "--action", "read",
        "--cred", f"issuer=jwt,resource={API},action=write,prefix=WRITE_",
        "--", "sh", "-c",
        'printf %s "$JIT_ACCESS_TOKEN" > "$OUT/read"; '
        'printf %s "$WRITE_JIT_ACCESS_TOKEN" > "$OUT/write"',
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    scopes = {
        name: pyjwt.decode((outdir / name).read_text(), options={"verify_signature": False})
        for name in ("read", "write")
    }
    assert scopes["read"]["scope"] == "read"
    assert scopes["write"]["scope"] == "write"
    for name, claims in scopes.items():
        assert_dead(broker, job, (outdir / name).read_text(), claims["jti"])


def test_a_failure_before_the_command_runs_exits_125_and_revokes_what_it_got(
    broker: Serve, job: str, outdir: Path
) -> None:
    out = run_exec(
        broker, job, outdir, "--task", "clash-1",
        "--resource", API, "--action", "read",
        "--cred", f"issuer=jwt,resource={API},action=write",
        "--", "sh", "-c", 'echo ran > "$OUT/ran"',
    )  # fmt: skip
    assert out.returncode == 125
    assert "two credentials export JIT_ACCESS_TOKEN" in out.stderr
    assert not (outdir / "ran").exists()
    task = task_of(broker, job, "clash-1")
    assert task["state"] == "completed"
    assert [le["state"] for le in task["leases"]] == ["revoked", "revoked"]  # type: ignore[union-attr]


def test_a_denied_request_exits_125_with_the_reasons_and_runs_nothing(
    broker: Serve, job: str, outdir: Path
) -> None:
    out = run_exec(
        broker, job, outdir, "--resource", API, "--action", "delete",
        "--", "sh", "-c", 'echo ran > "$OUT/ran"',
    )  # fmt: skip
    assert out.returncode == 125
    assert "Forbidden (403)" in out.stderr
    assert "platform/api: actions not allowed: delete" in out.stderr
    assert not (outdir / "ran").exists()


def test_a_command_that_does_not_exist_exits_127_and_the_task_is_completed(
    broker: Serve, job: str, outdir: Path
) -> None:
    out = run_exec(
        broker, job, outdir, "--task", "nocmd-1", "--resource", API, "--action", "read",
        "--", "no-such-command-here",
    )  # fmt: skip
    assert out.returncode == 127
    task = task_of(broker, job, "nocmd-1")
    assert task["state"] == "completed"


# -- ssh ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sshd(broker: Serve, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    server.set_ca(httpx.get(f"{broker.url}/v1/issuers/ssh/ca.pub").content)
    server.set_krl(httpx.get(f"{broker.url}/v1/issuers/ssh/revoked.krl").content)
    user = login_user()
    server.set_principals(user, [user])
    server.start()
    yield server
    server.stop()


BASE_SSH = (
    "-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes "
    "-o LogLevel=ERROR -o ConnectTimeout=5"
)


def ssh_command(sshd: Sshd, *, agent: bool) -> str:
    """The ssh a user runs: with the exported key file, or with nothing (the agent has it)."""
    key = "" if agent else '-o IdentitiesOnly=yes -o IdentityAgent=none -i "$JIT_SSH_KEY" '
    return (
        f"ssh {BASE_SSH} {key}-p {sshd.port} {login_user()}@127.0.0.1 echo logged-in-as-$(id -un)"
    )


@pytest.mark.parametrize("agent", [False, True], ids=["key-file", "ssh-agent"])
def test_ssh_logs_in_with_the_certificate_and_not_after_the_task(
    broker: Serve, job: str, outdir: Path, sshd: Sshd, agent: bool
) -> None:
    user = login_user()
    script = (
        f'{ssh_command(sshd, agent=agent)} > "$OUT/ssh-out" 2> "$OUT/ssh-err"; rc=$?; '
        'cp "$JIT_SSH_KEY" "$OUT/key"; cp "$JIT_SSH_CERT" "$OUT/key-cert.pub"; '
        'stat -c %a "$JIT_SSH_KEY" "$JIT_SSH_CERT" "$(dirname "$JIT_SSH_KEY")" > "$OUT/modes"; '
        'printf %s "${SSH_AUTH_SOCK:-}" > "$OUT/agent"; exit $rc'
    )
    args = ["--ssh-agent"] if agent else []
    out = run_exec(
        broker, job, outdir, *args, "--issuer", "ssh", "--resource", "ssh://127.0.0.1",
        "--action", f"login:{user}", "--generate-key", "ssh", "--ttl", "5m",
        "--", "sh", "-c", script,
    )  # fmt: skip
    assert out.returncode == 0, (out.stderr, (outdir / "ssh-err").read_text(), sshd.log_text())
    assert (outdir / "ssh-out").read_text().strip() == f"logged-in-as-{user}"
    assert (outdir / "modes").read_text().split() == ["600", "600", "700"]
    assert bool((outdir / "agent").read_text()) is agent
    workdir = Path((outdir / "agent").read_text()).parent if agent else None
    if workdir is not None:
        assert not workdir.exists()  # the private directory (and the agent's socket) is gone
    # The task is completed: the certificate's serial is in the KRL the broker publishes.
    (outdir / "key").chmod(0o600)
    sshd.set_krl(httpx.get(f"{broker.url}/v1/issuers/ssh/revoked.krl").content)
    again = sshd.ssh(outdir / "key", outdir / "key-cert.pub", user, "true")
    assert again.returncode != 0
    assert "revoked" in sshd.log_text().lower()


def test_exec_says_what_it_got_and_never_the_secret(broker: Serve, job: str, outdir: Path) -> None:
    out = run_exec(
        broker, job, outdir, "--resource", API, "--action", "read", "--", "sh", "-c", SAVE
    )
    assert out.returncode == 0, out.stderr
    token = (outdir / "token").read_text()
    lease_id = pyjwt.decode(token, options={"verify_signature": False})["jti"]
    assert f"jit exec: jwt credential for https://api.internal: lease {lease_id}" in out.stderr
    assert token not in out.stderr + out.stdout
