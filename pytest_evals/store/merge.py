"""One run from the runs of several shards (``pytest-evals merge --into ALL.sqlite SHARD.sqlite...``).

Each shard's database holds the run ``pytest --evals-shard K/N`` stored there: its newest run that records
a shard (a shard killed and resumed stores the resumed run whole, its replayed cases included, so that
run stands for the shard as if it had never stopped). :func:`problems` says, one line each, what keeps
the shards from making one run of one suite; :func:`merge` copies every case once, with its calls,
turns and tool calls, into one new run of the target database, in one transaction. The verdicts of the
new run are decided afterwards from its cases and the gate settings the shards ran with
(``report.gate``), so the merged run is gated exactly as one run of every case would have been.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .database import CASE_TABLES, Store, StoreError

FORCE = "pass --force to merge anyway"
RUN_SETTINGS_IGNORED = ("markers", "usage", "baseline")  # per shard by nature; compared otherwise


class MergeError(Exception):
    """A database that cannot be a shard of the merge (one line naming it and the fix); --force cannot help."""


@dataclass
class ShardRun:
    path: Path
    store: Store
    run: dict[str, Any]
    cases: list[dict[str, Any]] = field(default_factory=list)

    @property
    def index(self) -> int:
        return int(self.run["shard"].split("/")[0])

    @property
    def count(self) -> int:
        return int(self.run["shard"].split("/")[1])

    @property
    def label(self) -> str:
        return f"{self.run['shard']} ({self.path})"

    def column(self, name: str) -> Any:
        """A JSON column of its run (``suite``, ``gates``), decoded; None where it was not stored."""
        return json.loads(self.run[name]) if self.run.get(name) else None


def open_shard(path: Path) -> ShardRun:
    """The shard run a database holds: its newest run that records a shard."""
    if not path.is_file():
        raise MergeError(f"{path}: no such database; pass each shard's --evals-db file")
    try:
        store = Store(path, write=False)
    except StoreError as exc:
        raise MergeError(str(exc).replace("pass another --evals-db PATH", "pass each shard's database")) from None
    rows = list(store.db.query("SELECT * FROM runs WHERE shard IS NOT NULL ORDER BY id DESC LIMIT 1"))
    if not rows:
        store.close()
        raise MergeError(f"{path}: holds no shard's run; merge the databases of runs of pytest --evals-shard K/N")
    shard = ShardRun(path, store, rows[0])
    shard.cases = store.cases(shard.run["id"])
    return shard


def _differ(shards: list[ShardRun], value: Any) -> str | None:
    """Where ``value(shard)`` is not the same for every shard: 'K/N X, K/N Y' (None where it is)."""
    values = {shard.label: value(shard) for shard in shards}
    if len({json.dumps(v, sort_keys=True) for v in values.values()}) < 2:
        return None
    return ", ".join(f"{label}: {v if v is not None else 'none'}" for label, v in values.items())


def _gate_settings(shard: ShardRun) -> dict[str, Any] | None:
    settings = shard.column("gates")
    return {k: v for k, v in settings.items() if k not in RUN_SETTINGS_IGNORED} if settings else None


def _baseline_identity(shard: ShardRun) -> list[Any] | None:
    """The baseline run the shard was gated against, by what names a run in any database."""
    settings = shard.column("gates") or {}
    row = shard.store.run(settings["baseline"]) if settings.get("baseline") is not None else None
    return None if row is None else [row["started_at"], row["hostname"], row["pid"]]


def problems(shards: list[ShardRun]) -> list[str]:
    """What keeps the shards from making one run of one suite, one line each (naming the fix)."""
    lines = []
    counts = sorted({shard.count for shard in shards})
    if len(counts) > 1:
        lines.append("the shards split the cases in different numbers of parts: "
                     f"{', '.join(s.label for s in shards)}; merge the shards of one split, or {FORCE}")
    else:
        missing = sorted(set(range(1, counts[0] + 1)) - {s.index for s in shards})
        if missing:
            shown = ", ".join(f"{k}/{counts[0]}" for k in missing)
            lines.append(f"shard{'s' * (len(missing) > 1)} {shown} {'are' if len(missing) > 1 else 'is'} missing "
                         f"(given: {', '.join(s.label for s in shards)}); pass every shard's database, or {FORCE} "
                         "(the merged run then lacks their cases: gate exits 2)")
    for shard in shards:
        run = shard.run
        if run["status"] != "finished":
            detail = (f": {run['tests_not_run']} of {run['tests']} tests did not run" if run.get("tests_not_run")
                      else "")
            lines.append(f"shard {shard.label} did not finish (run {run['id']} is {run['status']}{detail}); resume it "
                         f"(pytest --evals-resume with its --evals-shard and --evals-db) and merge again, or {FORCE}")
    checks = (("ran different git revisions", lambda s: (s.run["git_revision"] or "")[:12] or None,
               "merge shards of one commit"),
              ("collected different suites", lambda s: (s.column("suite") or {}).get("digest"),
               "run every shard with the same tests, -k, --evals-limit, --evals-seed and --model"),
              ("ran with different gates", _gate_settings,
               "run every shard with the same thresholds, --evals-max-error-rate, --evals-alpha and --evals-margin"),
              ("ran against different baselines", _baseline_identity,
               "give every shard a copy of the database that holds the baseline, and the same --evals-baseline"))
    for what, value, fix in checks:
        found = _differ(shards, value)
        if found:
            lines.append(f"the shards {what} ({found}); {fix}, or {FORCE}")
    twice = _duplicates(shards)
    if twice:
        nodeid, labels = next(iter(twice.items()))
        more = f" and {len(twice) - 1} more" if len(twice) > 1 else ""
        lines.append(f"{len(twice)} case{'s' * (len(twice) > 1)} {'are' if len(twice) > 1 else 'is'} in more than one "
                     f"shard: {nodeid} ({', '.join(labels)}){more}; merge each shard once, or {FORCE} (the lowest "
                     "shard's result is kept)")
    return lines


def _duplicates(shards: list[ShardRun]) -> dict[str, list[str]]:
    where: dict[str, list[str]] = {}
    for shard in shards:
        for case in shard.cases:
            where.setdefault(case["nodeid"], []).append(shard.label)
    return {nodeid: labels for nodeid, labels in where.items() if len(labels) > 1}


@dataclass
class Merged:
    run_id: int
    cases: int  # cases copied
    tests: int | None  # eval tests of the suite (None: no shard stored its suite)
    incomplete: set[str]  # benchmarks with fewer cases than the suite has
    complete: bool


def merge(shards: list[ShardRun], target: Store, hostname: str, pid: int) -> Merged:
    """Copy every case of the shards once (the lowest shard's, where one is in two) into one new run."""
    ordered = sorted(shards, key=lambda s: s.index)  # stable: shards given twice keep their order
    first = ordered[0]
    settings = _merged_settings(ordered)
    suite = next((s.column("suite") for s in ordered if s.column("suite")), None)
    models: list[str] = []
    for shard in ordered:
        models += [m for m in json.loads(shard.run["models"] or "[]") if m not in models]
    args = _without_shard(json.loads(first.run["args"] or "[]"))
    copied: dict[str, int] = {}  # benchmark -> cases copied
    with target.transaction():
        if settings and settings.get("baseline") is not None:
            settings["baseline"] = _baseline_in(target, first, settings["baseline"])
        run_id = target._insert("runs", (), {
            "started_at": min(s.run["started_at"] for s in ordered), "status": "running", "args": json.dumps(args),
            "rootdir": first.run["rootdir"], "git_revision": first.run["git_revision"], "models": json.dumps(models),
            "hostname": hostname, "plugin_version": first.run["plugin_version"], "pid": pid,
            "suite": json.dumps(suite) if suite else None, "gates": json.dumps(settings) if settings else None,
            "merged_from": json.dumps([{"database": str(s.path), "run": s.run["id"], "shard": s.run["shard"]}
                                       for s in ordered])})
        seen: set[str] = set()
        for shard in ordered:
            keep = [case for case in shard.cases if case["nodeid"] not in seen]
            seen.update(case["nodeid"] for case in keep)
            _copy_cases(shard.store, shard.run["id"], keep, target, run_id, resumed_from=None)
            for case in keep:
                copied[case["benchmark"]] = copied.get(case["benchmark"], 0) + 1
    count = max(s.count for s in shards)
    whole = (len({s.count for s in shards}) == 1 and {s.index for s in shards} == set(range(1, count + 1))
             and all(s.run["status"] == "finished" for s in shards))
    if suite:
        incomplete = {b for b, n in suite["tests"].items() if copied.get(b, 0) < n}
        tests = sum(suite["tests"].values())
    else:
        incomplete, tests = (set() if whole else set(copied)), None
    return Merged(run_id, sum(copied.values()), tests, incomplete, whole and not incomplete)


def _without_shard(args: list[str]) -> list[str]:
    """A shard's command line without its --evals-shard: the one run the shards make together."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--evals-shard":
            skip = True
        elif not arg.startswith("--evals-shard="):
            kept.append(arg)
    return kept


def _merged_settings(shards: list[ShardRun]) -> dict[str, Any] | None:
    """The first shard's gate settings, with every shard's threshold markers and usage errors (a shard
    sees the markers of its own cases' benchmarks only)."""
    found = [s.column("gates") for s in shards if s.column("gates")]
    if not found:
        return None
    settings = dict(found[0], markers={}, usage=[])
    for other in found:
        settings["markers"].update(other["markers"])
        settings["usage"] += [u for u in other["usage"] if u not in settings["usage"]]
    return settings


def _baseline_in(target: Store, shard: ShardRun, baseline_id: int) -> int | None:
    """The baseline's id in the target: the same run where the target holds it (a shard whose database
    was a copy of the target), else a copy of it from the shard's database."""
    row = shard.store.run(baseline_id)
    if row is None:
        return None
    found = target.db.execute("SELECT id FROM runs WHERE started_at = ? AND hostname IS ? AND pid IS ?",
                              [row["started_at"], row["hostname"], row["pid"]]).fetchone()
    if found:
        return int(found[0])
    fields = {k: v for k, v in row.items() if k != "id"}
    fields["gates"] = None  # its own baseline's id means nothing here; its stored verdicts are copied
    run_id = target._insert("runs", (), fields)
    _copy_cases(shard.store, baseline_id, shard.store.cases(baseline_id), target, run_id, resumed_from=...)
    for table in ("benchmarks", "repeated_cases"):
        for item in shard.store.db.query(f"SELECT * FROM {table} WHERE run_id = ? ORDER BY id", [baseline_id]):
            target._insert(table, (run_id,), {k: v for k, v in item.items() if k not in ("id", "run_id")})
    return run_id


def _copy_cases(source: Store, source_run: int, cases: list[dict[str, Any]], target: Store, run_id: int,
                resumed_from: Any) -> None:
    """``cases`` of ``source_run`` with their rows, into ``run_id`` of ``target`` (inside its transaction).
    ``resumed_from``: None clears it (the run it names is in another database); ``...`` keeps it."""
    rows: dict[int, dict[str, list[dict[str, Any]]]] = {case["id"]: {t: [] for t in CASE_TABLES} for case in cases}
    for table in CASE_TABLES:
        for item in source.db.query(f"SELECT * FROM {table} WHERE run_id = ? ORDER BY id", [source_run]):
            if item["case_id"] in rows:
                rows[item["case_id"]][table].append(item)
    for case in cases:
        fields = {k: v for k, v in case.items() if k not in ("id", "run_id")}
        if resumed_from is not ...:
            fields["resumed_from"] = resumed_from
        case_id = target._insert("cases", (run_id,), fields)
        for table in CASE_TABLES:
            for item in rows[case["id"]][table]:
                target._insert(table, (run_id, case_id), {k: v for k, v in item.items()
                                                          if k not in ("id", "run_id", "case_id")})
