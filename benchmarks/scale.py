"""Growth with the number of cases: 1k, 10k and 100k trivial cases, the plugin against bare pytest.

    python benchmarks/scale.py [--sizes 1000,10000,100000] [--json FILE] [--no-chromium] [--no-bytecode-cache]

For each size N, one folder holds a test file of two parametrized tests (two benchmarks, N/2 cases
each) that each make one model call to an instant in-process backend (only the plugin's work is
timed). Measured in order, each a whole process (wall time and the process's own peak RSS, from
``wait4``):

- bare pytest (``-p no:evals``, a ``model`` fixture that answers at once) and the plugin recording a
  run; their difference per case;
- ``--evals-resume`` of that finished run (every case replayed, none run), against the run itself;
- ``pytest --co`` with the plugin;
- ``pytest-evals report RUN --html``: the time to write it, its size (the page and any case pages
  beside it), and the time headless Chromium takes to load the page and print its DOM
  (``--dump-dom``; an empty page's time is shown for the browser's own start-up);
- ``pytest-evals export`` (JSON Lines to a file) and ``pytest-evals cases -k`` (a pattern that matches
  one case in ten): time and peak RSS, to see whether memory grows with the run;
- the database's size.

The processes run with Python's own default, bytecode caching on (``PYTHONDONTWRITEBYTECODE`` is taken
out of their environment), after one warm-up ``--co`` per folder has written the caches (pytest's
rewritten test and plugin modules too), as on a user's machine from the second run on.
``--no-bytecode-cache`` keeps the variable where it is set (this project's development machine sets it):
every process then compiles every module it imports, about half a second more per process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from overhead import BACKEND, BARE_FIXTURE  # the same instant backend and bare model fixture

SUITE = '''
import pytest


@pytest.mark.parametrize("i", range({half}))
def test_short(model, i):
    assert model.generate(f"q{{i}}").text == f"q{{i}}"


@pytest.mark.parametrize("i", range({rest}))
def test_long(model, i):
    assert model.generate(f"question {{i}}: what is {{i}} + 1?").text.startswith("question")
'''


CPU: dict[str, float] = {}  # the last measure's CPU seconds (user + system, with its waited-for children)
BYTECODE = {"cache": True}  # whether the measured processes may write and read bytecode caches


def measure(argv: list[str], cwd: Path, out: Path | None = None) -> tuple[float, float]:
    """Run argv to completion: (wall seconds, peak RSS in MiB of that process); its CPU seconds in CPU."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")
           and not (BYTECODE["cache"] and k == "PYTHONDONTWRITEBYTECODE")}
    sink = open(out if out is not None else os.devnull, "wb")
    errors = tempfile.TemporaryFile()
    with sink:
        start = time.perf_counter()
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=sink, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        errors.seek(0)
        tail = errors.read()[-3000:].decode(errors="replace")
        raise SystemExit(f"{' '.join(argv)} failed (exit {process.returncode}):\n{tail}")
    CPU["last"] = usage.ru_utime + usage.ru_stime
    return elapsed, usage.ru_maxrss / 1024


def pytest_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest_evals.cli", *args]


def chromium_open(page: Path, browser: str) -> float:
    """Seconds headless Chromium takes to load ``page`` and print its DOM."""
    profile = tempfile.mkdtemp(prefix="scale-chromium-")
    try:
        argv = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                "--virtual-time-budget=1", "--dump-dom", page.resolve().as_uri()]
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{browser} could not open {page}")
        CPU["last"] = usage.ru_utime + usage.ru_stime
        return elapsed
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def one_size(n: int, root: Path, browser: str | None) -> dict[str, float]:
    bare, plugin = root / f"bare{n}", root / f"plugin{n}"
    for folder, conftest in ((bare, BARE_FIXTURE), (plugin, BACKEND)):
        folder.mkdir()
        (folder / "conftest.py").write_text(conftest)
        (folder / "test_scale.py").write_text(SUITE.format(half=n // 2, rest=n - n // 2))
    db = plugin / "evals.sqlite"
    row: dict[str, float] = {"cases": n}
    if BYTECODE["cache"]:  # warm-up: the bytecode caches written, as from a user's second run on
        measure(pytest_argv("--co", "-p", "no:evals"), bare)
        measure(pytest_argv("--co", "--model=instant:m", f"--evals-db={db}"), plugin)
    row["bare_s"], row["bare_rss"] = measure(pytest_argv("-p", "no:evals"), bare)
    row["bare_cpu"] = CPU["last"]
    row["run_s"], row["run_rss"] = measure(pytest_argv("--model=instant:m", f"--evals-db={db}"), plugin)
    row["run_cpu"] = CPU["last"]
    row["ms_per_case"] = (row["run_s"] - row["bare_s"]) / n * 1000
    row["cpu_ms_per_case"] = (row["run_cpu"] - row["bare_cpu"]) / n * 1000
    row["db_mb"] = size_of(db) / 2**20
    row["resume_s"], row["resume_rss"] = measure(
        pytest_argv("--model=instant:m", f"--evals-db={db}", "--evals-resume"), plugin)
    row["resume_cpu"] = CPU["last"]
    row["resume_ratio"] = row["resume_s"] / row["run_s"]
    row["resume_cpu_ratio"] = row["resume_cpu"] / row["run_cpu"]
    row["co_s"], row["co_rss"] = measure(pytest_argv("--co", "--model=instant:m", f"--evals-db={db}"), plugin)
    row["co_cpu"] = CPU["last"]
    html = root / f"report{n}.html"
    row["html_s"], row["html_rss"] = measure(cli_argv("--db", str(db), "report", "1", "--html", str(html)), plugin)
    row["html_cpu"] = CPU["last"]
    row["html_mb"] = size_of(html) / 2**20
    row["html_all_mb"] = (size_of(html) + size_of(html.with_suffix(""))) / 2**20
    if browser is not None:
        row["chromium_s"] = chromium_open(html, browser)
        row["chromium_cpu"] = CPU["last"]
        pages = sorted(html.with_suffix("").rglob("*.html")) if html.with_suffix("").is_dir() else []
        if pages:
            row["chromium_case_page_s"] = max(chromium_open(p, browser) for p in pages[:2])
    export = root / f"export{n}.jsonl"
    row["export_s"], row["export_rss"] = measure(cli_argv("--db", str(db), "export", "1", "-o", str(export)), plugin)
    row["export_cpu"] = CPU["last"]
    row["cases_s"], row["cases_rss"] = measure(cli_argv("--db", str(db), "cases", "1", "-k", "7]"), plugin)
    row["cases_cpu"] = CPU["last"]
    return row


COLUMNS = [
    ("cases", "cases", "{:.0f}"),
    ("bare_s", "bare s", "{:.1f}"),
    ("run_s", "plugin s", "{:.1f}"),
    ("ms_per_case", "ms/case", "{:.3f}"),
    ("bare_cpu", "bare CPU s", "{:.1f}"),
    ("run_cpu", "plugin CPU s", "{:.1f}"),
    ("cpu_ms_per_case", "CPU ms/case", "{:.3f}"),
    ("bare_rss", "bare MiB", "{:.0f}"),
    ("run_rss", "plugin MiB", "{:.0f}"),
    ("resume_s", "resume s", "{:.1f}"),
    ("resume_ratio", "resume/run", "{:.2f}"),
    ("resume_cpu", "resume CPU s", "{:.1f}"),
    ("resume_cpu_ratio", "resume/run CPU", "{:.2f}"),
    ("resume_rss", "resume MiB", "{:.0f}"),
    ("co_s", "--co s", "{:.1f}"),
    ("co_cpu", "--co CPU s", "{:.1f}"),
    ("html_s", "html s", "{:.1f}"),
    ("html_cpu", "html CPU s", "{:.1f}"),
    ("html_rss", "html MiB", "{:.0f}"),
    ("html_mb", "page MB", "{:.1f}"),
    ("html_all_mb", "all MB", "{:.1f}"),
    ("chromium_s", "open s", "{:.2f}"),
    ("chromium_cpu", "open CPU s", "{:.2f}"),
    ("chromium_case_page_s", "case page s", "{:.2f}"),
    ("export_s", "export s", "{:.1f}"),
    ("export_cpu", "export CPU s", "{:.1f}"),
    ("export_rss", "export MiB", "{:.0f}"),
    ("cases_s", "cases -k s", "{:.1f}"),
    ("cases_cpu", "cases CPU s", "{:.1f}"),
    ("cases_rss", "cases MiB", "{:.0f}"),
    ("db_mb", "db MB", "{:.1f}"),
]


def table(rows: list[dict[str, float]], blank: tuple[float, float] | None) -> str:
    shown = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    head = "| " + " | ".join(title for _, title, _ in shown) + " |"
    lines = [head, "|" + " ---: |" * len(shown)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[key]) if key in r else "-" for key, _, fmt in shown) + " |")
    if blank is not None:
        lines.append(f"\n(headless Chromium on an empty page: {blank[0]:.2f} s, CPU {blank[1]:.2f} s)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--no-chromium", action="store_true")
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="keep PYTHONDONTWRITEBYTECODE where it is set: every process compiles what it imports")
    args = parser.parse_args()
    BYTECODE["cache"] = not args.no_bytecode_cache
    print(f"bytecode caches: {'on (warmed up)' if BYTECODE['cache'] else 'as the environment says'}; "
          f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '(unset)')} here", flush=True)
    browser = None if args.no_chromium else next(
        (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        blank = None
        if browser is not None:
            empty = root / "empty.html"
            empty.write_text("<!doctype html><title>empty</title>")
            blank = chromium_open(empty, browser), CPU["last"]
        for n in (int(s) for s in args.sizes.split(",")):
            rows.append(one_size(n, root, browser))
            print(table(rows[-1:], None).splitlines()[-1], flush=True)
    print(table(rows, blank))
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "chromium_blank_s": blank}, indent=1))


if __name__ == "__main__":
    main()
