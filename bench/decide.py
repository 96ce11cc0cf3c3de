"""``decide`` with 1,000 policy documents loaded (issue 14 goal 6): µs per call.

    .venv/bin/python bench/decide.py [--documents 1000] [--calls 20000] [--seed 14]

Generates ``--documents`` varied, realistic policy files (one owner each; 1-3 trusted workload
entries from GitHub, GitLab or Kubernetes, most pinned by an immutable id such as
``repository_id`` or ``project_id`` — as docs/policy.md recommends — some by glob or regex on a
name, some with ``one_of``; 1-5 grants with exact or glob resources, several issuers, approval
on some, CEL ``when`` conditions on about a third), loads them with ``load_policy_dir`` as the
broker does, and times ``decide()`` for a mix of requests: allowed (no condition and with a
condition), needing approval, and denied (no document trusts the workload; a trusted workload
asking for a resource no grant covers). Prints median, p90, p99 per kind and overall
(target: < 100 µs), and checks every decision against the expected kind first.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import pct  # noqa: E402
from broker.policy import load_policy_dir  # noqa: E402
from broker.policy.decide import Allow, Deny, NeedsApproval, decide  # noqa: E402
from broker.types import Intent, Principal, Scope, Task  # noqa: E402

ISSUERS = ("jwt", "pg-orders", "pg-billing", "aws-prod", "github-app", "ssh-bastion")
CONDITIONS = (
    'claims.ref == "refs/heads/main"',
    "request.ttl_seconds <= 1800",
    'request.actions.all(a, a in ["read", "list"])',
    '!claims.ref.startsWith("refs/pull/")',
    "now % 86400 >= 0 && request.ttl_seconds <= 3600",
)


class Doc:
    """What a generated document trusts and grants, to build requests with known answers."""

    def __init__(self, i: int, rng: random.Random) -> None:
        self.i = i
        self.owner = f"team-{i:04d}"
        self.kind = rng.choice(("github", "github", "github", "gitlab", "k8s"))
        self.pin = rng.random() < 0.8  # pinned by an immutable id, else by a name pattern
        self.grants: list[dict[str, object]] = []
        for g in range(rng.randint(1, 5)):
            exact = rng.random() < 0.6
            self.grants.append(
                {
                    "name": f"g{g}",
                    "issuer": rng.choice(ISSUERS),
                    "host": f"svc-{i:04d}-{g}.internal.example",
                    "exact": exact,
                    "actions": rng.choice(
                        (["read"], ["read", "write"], ["read", "write", "admin"])
                    ),
                    "approval": rng.random() < 0.2,
                    "when": rng.choice(CONDITIONS) if rng.random() < 0.35 else None,
                }
            )

    def claims(self) -> dict[str, str]:
        i = self.i
        if self.kind == "github":
            return {
                "repository": f"acme/service-{i:04d}",
                "repository_id": str(500000 + i),
                "repository_owner_id": "90210",
                "ref": "refs/heads/main",
                "environment": "production",
                "workflow_ref": f"acme/service-{i:04d}/.github/workflows/deploy.yml@main",
            }
        if self.kind == "gitlab":
            return {
                "project_path": f"acme/group-{i % 50}/service-{i:04d}",
                "project_id": str(700000 + i),
                "ref": "refs/heads/main",
                "ref_protected": "true",
            }
        return {
            "namespace": f"ns-{i:04d}",
            "service_account": "deployer",
            "cluster": f"prod-{i % 4}",
        }

    def principal(self) -> Principal:
        c = self.claims()
        sub = {"github": c.get("repository"), "gitlab": c.get("project_path")}.get(self.kind)
        return Principal(
            id=f"{self.kind}:{sub or c.get('namespace')}",
            issuer=self.kind,
            subject=str(sub or c.get("namespace")),
            claims=c,
        )

    def yaml(self) -> str:
        c = self.claims()
        if self.kind == "github":
            if self.pin:
                rid = c["repository_id"]
                entries = [f'    claims: {{repository_id: "{rid}", ref: {{glob: "refs/heads/*"}}}}']
            else:
                entries = [
                    f'    claims: {{repository: {{regex: "^acme/service-{self.i:04d}$"}}, '
                    "environment: {one_of: [production, staging]}}"
                ]
        elif self.kind == "gitlab":
            if self.pin:
                entries = [
                    f'    claims: {{project_id: "{c["project_id"]}", ref_protected: "true"}}'
                ]
            else:
                entries = [f'    claims: {{project_path: {{glob: "acme/*/service-{self.i:04d}"}}}}']
        else:
            ns = c["namespace"]
            entries = [
                f'    claims: {{namespace: "{ns}", service_account: {{one_of: [deployer, ci]}}}}'
            ]
        out = [f"owner: {self.owner}", f"description: generated document {self.i}", "workloads:"]
        out += [f"  - issuer: {self.kind}\n{e}" for e in entries]
        if self.i % 7 == 0:  # a second, unrelated entry (another repository of the team)
            out.append(f'  - issuer: github\n    claims: {{repository_id: "{900000 + self.i}"}}')
        out.append("grants:")
        for g in self.grants:
            resource = f"https://{g['host']}" + ("" if g["exact"] else "/*")
            out.append(f"  - name: {g['name']}")
            out.append(f"    issuer: {g['issuer']}")
            out.append(f'    resource: "{resource}"')
            out.append(f"    actions: [{', '.join(g['actions'])}]")  # type: ignore[arg-type]
            out.append("    max_ttl: 1h")
            out.append(
                "    approval: {approvers: [alice]}" if g["approval"] else "    approval: none"
            )
            if g["when"]:
                out.append(f"    when: '{g['when']}'")
        return "\n".join(out) + "\n"


def requests(docs: list[Doc], rng: random.Random, n: int) -> list[tuple[str, Principal, Intent]]:
    out: list[tuple[str, Principal, Intent]] = []
    stranger = Principal(
        id="github:acme/unknown",
        issuer="github",
        subject="acme/unknown",
        claims={"repository": "acme/unknown", "repository_id": "1", "ref": "refs/heads/main",
                "environment": "production", "repository_owner_id": "90210",
                "workflow_ref": "acme/unknown/.github/workflows/x.yml@refs/heads/main"},
    )  # fmt: skip
    while len(out) < n:
        d = rng.choice(docs)
        g = rng.choice(d.grants)
        resource = f"https://{g['host']}" + ("" if g["exact"] else "/v1/items")
        scope = Scope.of(str(g["issuer"]), resource, ["read"])
        task = Task(f"t-{len(out)}")
        roll = rng.random()
        if roll < 0.1:
            out.append(("deny: untrusted", stranger, Intent(task=task, scope=scope)))
        elif roll < 0.2:
            bad = Scope.of(str(g["issuer"]), "https://elsewhere.example", ["read"])
            out.append(("deny: no grant", d.principal(), Intent(task=task, scope=bad)))
        else:
            kind = ("approval" if g["approval"] else "allow") + (" + CEL" if g["when"] else "")
            intent = Intent(task=task, scope=scope, ttl=timedelta(minutes=20))
            out.append((kind, d.principal(), intent))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--documents", type=int, default=1000)
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--seed", type=int, default=14)
    args = p.parse_args()
    rng = random.Random(args.seed)
    docs = [Doc(i, rng) for i in range(args.documents)]
    with tempfile.TemporaryDirectory(prefix="jit-bench-policy-") as tmp:
        for d in docs:
            (Path(tmp) / f"{d.owner}.yaml").write_text(d.yaml())
        t0 = time.perf_counter()
        policy = load_policy_dir(tmp, approvers={"alice"})
        load_s = time.perf_counter() - t0
    grants = sum(len(d.grants) for d in policy.documents)
    conds = sum(1 for d in policy.documents for g in d.grants if g.condition is not None)
    print(
        f"{len(policy.documents)} documents, {grants} grants ({conds} with a CEL condition) "
        f"loaded in {load_s:.2f}s"
    )
    now = datetime.now(UTC)
    calls = requests(docs, rng, args.calls)
    # Correctness first: every generated request gets the kind of answer it was built for.
    wrong = 0
    for kind, principal, intent in calls[:2000]:
        d = decide(policy, principal, intent, now)
        # A condition may be false for this workload (a claim it lacks): then a deny.
        want = {"approval": NeedsApproval, "allow": Allow}.get(kind.split(" + ")[0], Deny)
        if not isinstance(d, want) and not (kind.endswith("CEL") and isinstance(d, Deny)):
            wrong += 1
    if wrong:
        raise SystemExit(f"{wrong} decisions of the first 2000 were not of the expected kind")
    for _ in range(2):  # warm up
        for _, principal, intent in calls[:2000]:
            decide(policy, principal, intent, now)
    times: dict[str, list[float]] = {}
    clock = time.perf_counter_ns
    for kind, principal, intent in calls:
        t = clock()
        decide(policy, principal, intent, now)
        times.setdefault(kind, []).append((clock() - t) / 1000)
    every = [x for xs in times.values() for x in xs]
    print(f"\ndecide(), {len(every):,} calls (µs per call)")
    print(f"  {'request':<18} {'calls':>7} {'median':>8} {'p90':>8} {'p99':>8}")
    for kind in sorted(times):
        xs = times[kind]
        print(
            f"  {kind:<18} {len(xs):>7,} {statistics.median(xs):>8.1f} {pct(xs, 90):>8.1f} "
            f"{pct(xs, 99):>8.1f}"
        )
    print(
        f"  {'all':<18} {len(every):>7,} {statistics.median(every):>8.1f} {pct(every, 90):>8.1f} "
        f"{pct(every, 99):>8.1f}   (target < 100 µs)"
    )


if __name__ == "__main__":
    main()
