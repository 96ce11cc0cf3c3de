"""Print the surviving (and timed-out) mutants of a cosmic-ray session: where, which operator,
and the diff. Usage: python tests/mutation/survivors.py session.sqlite"""

from __future__ import annotations

import sqlite3
import sys


def main(path: str) -> int:
    db = sqlite3.connect(path)
    counts = dict(
        db.execute(
            "select coalesce(test_outcome, worker_outcome), count(*) from work_results group by 1"
        ).fetchall()
    )
    pending = db.execute(
        "select count(*) from work_items where job_id not in (select job_id from work_results)"
    ).fetchone()[0]
    rows = db.execute(
        """select s.module_path, s.start_pos_row, s.operator_name, r.test_outcome,
                  r.worker_outcome, r.diff
           from work_results r join mutation_specs s using (job_id)
           where r.test_outcome = 'SURVIVED' or r.worker_outcome in ('TIMEOUT', 'EXCEPTION')
           order by s.module_path, s.start_pos_row"""
    ).fetchall()
    for module, row, op, test, worker, diff in rows:
        print(f"--- {module}:{row} {op.removeprefix('core/')} ({test or worker})")
        for line in (diff or "").splitlines():
            if line.startswith(("+", "-")) and not line.startswith(("+++", "---")):
                print(f"    {line}")
    run = {k: v for k, v in counts.items() if k != "SKIPPED"}
    total = sum(run.values())
    killed = run.get("KILLED", 0)
    print(
        f"mutants run: {total}, killed: {killed}, survived: {run.get('SURVIVED', 0)}, "
        f"other: {total - killed - run.get('SURVIVED', 0)}, pending: {pending}"
        + (f", score {100 * killed / total:.1f}%" if total else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
