"""`jit audit show`: the credential receipt tells one lease's story in order — identity,
decision (reasons, policy version), approvals, mint, each use, revocation with its trigger —
from an exported chain, leaving out everything about other leases. The real broker's events are
covered in tests/integration/test_audit_redis.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from broker.audit import AuditLog, read_chain
from broker.audit.receipt import build_receipt
from broker.cli.audit import audit
from broker.testing import FakeClock
from tests.unit.test_audit_chain import PREFIX, make_log

WHO = "dev:ci-1"
TASK = "build-7"


async def story(log: AuditLog, clock: FakeClock) -> None:
    """What the broker emits for an approved credential, with other traffic in between."""

    async def at(type_: str, **fields: Any) -> None:
        clock.advance(1)
        await log.emit(type_, **fields)

    common = {"principal": WHO, "task_id": TASK, "issuer": "jwt"}
    await at("auth.failed", outcome="deny", reasons=["bad signature"], request_id="rq-0")
    await at(
        "decision",
        outcome="approval_required",
        reasons=["grant dev/demo-admin needs approval"],
        request_id="rq-1",
        detail={
            "resource": "https://demo.local",
            "actions": ["admin"],
            "policy_version": "v42",
            "grant": "dev/demo-admin",
            "ttl_seconds": 600,
        },
        **common,
    )
    await at(
        "approval.opened",
        request_id="rq-1",
        detail={"approval_id": "ap-1", "grant": "dev/demo-admin", "approvers": ["alice"]},
        **common,
    )
    await at("decision", principal="dev:other", task_id="x", issuer="jwt", request_id="rq-9")
    await at(
        "approval.reviewed",
        principal=WHO,
        task_id=TASK,
        detail={"approval_id": "ap-1", "by": "alice", "decision": "approve"},
    )
    await at(
        "approval.approved",
        principal=WHO,
        task_id=TASK,
        detail={"approval_id": "ap-1", "state": "approved", "by": ["alice"]},
    )
    await at(
        "lease.minted",
        lease_id="L1",
        request_id="rq-2",
        detail={
            "grant": "dev/demo-admin",
            "policy_version": "v42",
            "approval_id": "ap-1",
            "resource": "https://demo.local",
            "actions": ["admin"],
            "not_after": "2030-01-01T00:10:07+00:00",
            "ttl_seconds": 600,
        },
        **common,
    )
    await at(
        "approval.minted",
        principal=WHO,
        task_id=TASK,
        lease_id="L1",
        detail={"approval_id": "ap-1", "approved_by": ["alice"]},
    )
    await at(
        "lease.introspected",
        lease_id="L1",
        task_id=TASK,
        detail={"caller": "orders-api", "active": True},
    )
    await at("lease.used", lease_id="L1", task_id=TASK, detail={"caller": "orders-api"})
    await at(
        "decision",
        outcome="ok",
        request_id="rq-3",
        detail={"resource": "https://demo.local", "actions": ["read"], "policy_version": "v42"},
        **common,
    )
    await at("lease.minted", lease_id="L2", request_id="rq-3", **common)
    await at("task.completed", principal=WHO, task_id=TASK, detail={"leases": 2})
    await at(
        "lease.revoked",
        lease_id="L1",
        detail={"trigger": "task_completed", "attempts": 1},
        **common,
    )
    await at(
        "lease.revoked",
        lease_id="L2",
        detail={"trigger": "task_completed", "attempts": 1},
        **common,
    )


@pytest.fixture
async def chain_file(fake_redis: aioredis.Redis, clock: FakeClock, tmp_path: Path) -> Path:
    log = make_log(fake_redis, clock, every=5)
    await story(log, clock)
    path = tmp_path / "chain.jsonl"
    path.write_bytes(b"".join([r.data + b"\n" async for r in read_chain(fake_redis, PREFIX)]))
    return path


def show(*args: str) -> Any:
    return CliRunner().invoke(audit, ["show", *args], catch_exceptions=False)


def test_the_receipt_of_a_lease_tells_its_story_in_order(chain_file: Path) -> None:
    result = show("--lease", "L1", str(chain_file), "--json")
    assert result.exit_code == 0, result.output
    receipt = json.loads(result.output)
    assert (receipt["lease_id"], receipt["task_id"], receipt["principal"]) == ("L1", TASK, WHO)
    got = [(s["stage"], s["type"]) for s in receipt["steps"]]
    assert got == [
        ("identity", "principal"),
        ("decision", "decision"),
        ("approval", "approval.opened"),
        ("approval", "approval.reviewed"),
        ("approval", "approval.approved"),
        ("mint", "lease.minted"),
        ("approval", "approval.minted"),
        ("use", "lease.introspected"),
        ("use", "lease.used"),
        ("task", "task.completed"),
        ("revocation", "lease.revoked"),
    ]
    seqs = [s["seq"] for s in receipt["steps"][1:]]
    assert seqs == sorted(seqs)
    decision = receipt["steps"][1]
    assert "v42" in decision["summary"]
    assert "needs approval" in decision["summary"]
    assert decision["record"]["request_id"] == "rq-1"
    assert "trigger: task_completed" in receipt["steps"][-1]["summary"]
    # Nothing about the other lease, the other principal or the failed authentication.
    assert all(s.get("lease_id") in (None, "L1") for s in receipt["steps"])
    assert all(s["type"] != "audit.checkpoint" for s in receipt["steps"])


def test_the_human_readable_receipt_shows_each_stage(chain_file: Path) -> None:
    result = show("--lease", "L1", str(chain_file))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Credential receipt" in out
    for needle in (
        "decision",
        "approval.reviewed",
        "lease.minted",
        "lease.introspected",
        "lease.revoked",
        "task_completed",
    ):
        assert needle in out, needle
    assert out.index("approval.opened") < out.index("lease.minted") < out.index("lease.revoked")


def test_the_receipt_of_a_task_covers_all_its_leases(chain_file: Path) -> None:
    receipt = json.loads(show("--task", TASK, str(chain_file), "--json").output)
    assert receipt["leases"] == ["L1", "L2"]
    types = [s["type"] for s in receipt["steps"]]
    assert types.count("lease.minted") == 2
    assert types.count("lease.revoked") == 2
    assert types.count("decision") == 2


def test_a_direct_lease_finds_its_decision_without_a_request_id() -> None:
    records = [
        {
            "seq": 1,
            "type": "decision",
            "principal": WHO,
            "task_id": "t",
            "issuer": "jwt",
            "outcome": "ok",
            "detail": {"policy_version": "v1"},
        },
        {
            "seq": 2,
            "type": "decision",
            "principal": WHO,
            "task_id": "t",
            "issuer": "pg",
            "outcome": "ok",
        },
        {
            "seq": 3,
            "type": "lease.minted",
            "principal": WHO,
            "task_id": "t",
            "issuer": "jwt",
            "lease_id": "L",
        },
    ]
    receipt = build_receipt(records, lease_id="L")
    assert [s.seq for s in receipt.steps] == [None, 1, 3]


def test_an_unknown_lease_is_an_error(chain_file: Path) -> None:
    result = CliRunner().invoke(audit, ["show", "--lease", "nope", str(chain_file)])
    assert result.exit_code == 1
    assert "no audit records for lease nope" in result.output


def test_show_needs_exactly_one_of_lease_or_task(chain_file: Path) -> None:
    result = CliRunner().invoke(audit, ["show", str(chain_file)])
    assert result.exit_code == 2
    assert "exactly one" in result.output
