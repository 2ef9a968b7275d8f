"""How many distinct architectures N workers on one study train (issue 17, point 2).

Starts N ``search run`` processes on one storage (PostgreSQL or SQLite), then a resume to a larger
budget, and counts distinct ``arch_id``s among completed trials. Prints a table, writes JSON to
``benchmarks/results/workers_distinct.json``.

    python benchmarks/bench_workers_distinct.py --storage sqlite --workers 3 --trials 9
    python benchmarks/bench_workers_distinct.py --storage postgresql://postgres@127.0.0.1:5432/i17_bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_protocols import commit


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--storage", default="sqlite")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--trials", type=int, default=9)
    p.add_argument("--resume-to", type=int, default=12)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="i17-workers-"))
    url = f"sqlite:///{tmp / 's.db'}" if a.storage == "sqlite" else a.storage
    study = f"distinct-{uuid.uuid4().hex[:6]}"
    fast = ["--epochs", "1", "--image-size", "32", "--complexity-size", "64", "--batch-size", "16", "--quiet"]
    common = ["run", "--storage", url, "--study", study, "--artifacts", str(tmp / "art"), *fast]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.time()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "search", *common, "--trials", str(a.trials), "--out", str(tmp / f"w{i}")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(a.workers)
    ]
    codes = [pr.wait() for pr in procs]
    first_s = time.time() - start
    s = optuna.load_study(study_name=study, storage=url)
    done = [t.user_attrs["arch_id"] for t in s.trials if t.state.name == "COMPLETE"]
    dups = sum(1 for t in s.trials if t.user_attrs.get("status") == "duplicate")
    r = subprocess.run(
        [sys.executable, "-m", "search", *common, "--trials", str(a.resume_to), "--out", str(tmp / "w0")],
        env=env,
        capture_output=True,
        text=True,
    )
    s = optuna.load_study(study_name=study, storage=url)
    after = [t.user_attrs["arch_id"] for t in s.trials if t.state.name == "COMPLETE"]
    row = {
        "commit": commit(),
        "storage": a.storage.split("://")[0].split(":")[0],
        "workers": a.workers,
        "trials": a.trials,
        "exit_codes": codes,
        "completed": len(done),
        "distinct": len(set(done)),
        "duplicates_redrawn": dups,
        "resume_to": a.resume_to,
        "resume_exit": r.returncode,
        "after_resume_completed": len(after),
        "after_resume_distinct": len(set(after)),
        "workers_wall_s": round(first_s, 1),
    }
    print(" | ".join(f"{k}={v}" for k, v in row.items()))
    out = Path(__file__).parent / "results" / "workers_distinct.json"
    out.parent.mkdir(exist_ok=True)
    rows = json.loads(out.read_text()) if out.is_file() else []
    out.write_text(json.dumps([*rows, row], indent=2))
    if a.storage != "sqlite":
        optuna.delete_study(study_name=study, storage=url)


if __name__ == "__main__":
    main()
