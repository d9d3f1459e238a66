"""Fault mixes against the real llama.cpp server through the fault proxy of tests/, side by side.

    python benchmarks/faults.py

Starts llama.cpp's server (SmolLM2) on a free loopback port, runs the same 16-case suite fault-free
and under each fault mix with retries on, and prints: cases, retries made, cases whose reply equals
the fault-free run's, errors, and wall time.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import embedded_gguf_path, start_llama_server  # noqa: E402
from faultproxy import FaultMix, FaultProxy  # noqa: E402
from test_reliability import MIX, SERVED_SUITE  # noqa: E402

MIXES = {
    "none": {},
    "429 only (20%)": {"rate_limit": 0.15, "rate_limit_date": 0.05},
    "5xx only (20%)": {"server_500": 0.1, "server_503": 0.1},
    "resets + cut streams (20%)": {"reset": 0.1, "cut": 0.1},
    "stalls (10%)": {"stall": 0.1},
    "everything (40%)": MIX,
}
RETRY = "evals_retry=attempts=12 wait_s=0.05 max_wait_s=0.5"


def run(work: Path, url: str, db: str) -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--model=openai:smollm2@{url}",
                    f"--evals-db={db}", "--evals-timeout=1.5", "-o", RETRY], cwd=work, capture_output=True)
    return time.monotonic() - start


def replies(db: Path) -> dict[str, str]:
    con = sqlite3.connect(db)
    out = {n.split("-openai")[0]: o for n, o in con.execute("SELECT nodeid, output_text FROM cases")}
    retries = con.execute("SELECT count(*) FROM calls WHERE attempt > 1").fetchone()[0]
    errors = con.execute("SELECT count(*) FROM cases WHERE outcome = 'error'").fetchone()[0]
    con.close()
    return out, retries, errors


def main() -> None:
    work = Path(tempfile.mkdtemp())
    (work / "test_served.py").write_text(SERVED_SUITE)
    proc, url = start_llama_server(embedded_gguf_path(), work / "server.log")
    try:
        reference = None
        print(f"{'fault mix':<28} {'cases':>5} {'faults':>6} {'retries':>7} {'identical':>9} {'errors':>6} {'wall s':>7}")
        for name, rates in MIXES.items():
            mix = FaultMix(rates, seed=11, stall_s=2.5)
            with FaultProxy(url.rsplit("/v1", 1)[0], mix) as proxy:
                wall = run(work, proxy.url, f"{len(name)}-{abs(hash(name))}.sqlite")
            out, retries, errors = replies(work / f"{len(name)}-{abs(hash(name))}.sqlite")
            reference = reference or out
            same = sum(out.get(k) == v for k, v in reference.items())
            print(f"{name:<28} {len(out):>5} {sum(mix.counts.values()):>6} {retries:>7} {same:>9} {errors:>6} {wall:>7.1f}")
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
