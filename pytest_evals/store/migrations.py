"""The schema as an append-only list of migrations, run whenever the database opens.

Never edit or reorder a migration that has shipped: a database records the names it has applied
(``_evals_migrations``), and a new column or table is a new migration at the end of the list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import sqlite_utils

MIGRATIONS_TABLE = "_evals_migrations"


def _m001_initial(db: sqlite_utils.Database) -> None:
    db["runs"].create(
        {
            "id": int,
            "started_at": str,
            "ended_at": str,
            "status": str,  # running | finished | interrupted (finished: every collected test ended)
            "exit_status": int,
            "args": str,  # JSON list of the command-line arguments
            "rootdir": str,
            "git_revision": str,
            "models": str,  # JSON list of specs
            "hostname": str,
            "plugin_version": str,
        },
        pk="id",
    )
    db["cases"].create(
        {
            "id": int,
            "run_id": int,
            "nodeid": str,
            "benchmark": str,  # nodeid without the [...] part
            "model": str,
            "outcome": str,  # passed | failed | error | skipped
            "duration_s": float,
            "input_text": str,
            "output_text": str,
            "error": str,
            "scores": str,  # JSON object of named metrics
            "worker": str,
            "started_at": str,
            "ended_at": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["cases"].create_index(["run_id", "nodeid"], unique=True)
    db["cases"].create_index(["run_id", "benchmark", "model"])
    db["calls"].create(
        {
            "id": int,
            "run_id": int,
            "case_id": int,
            "model": str,
            "kind": str,  # generate | chat | loglikelihood | choose
            "input_text": str,
            "output_text": str,
            "input_tokens": int,
            "output_tokens": int,
            "latency_s": float,
            "ttft_s": float,
            "tpot_s": float,
            "cost_usd": float,
            "attempt": int,
            "error": str,
            "started_at": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id"), ("case_id", "cases", "id")],
    )
    db["calls"].create_index(["case_id"])


def _m002_benchmarks(db: sqlite_utils.Database) -> None:
    # One row per benchmark, model and metric of a run: the verdicts the run was gated on.
    db["benchmarks"].create(
        {
            "id": int,
            "run_id": int,
            "benchmark": str,
            "model": str,
            "metric": str,  # pass_rate or a name recorded with evals_score
            "n": int,  # cases scored (pass_rate: passed + failed)
            "errors": int,
            "value": float,
            "low": float,  # 95% interval
            "high": float,
            "minimum": float,  # the threshold, when one applies to this metric
            "threshold_source": str,
            "verdict": str,  # pass | fail
            "reason": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["benchmarks"].create_index(["run_id"])


def _m003_case_keys(db: sqlite_utils.Database) -> None:
    db["cases"].add_column("case_key", str)  # versioned identity (resume.case_key)
    db["cases"].add_column("resumed_from", int)  # the run whose result this case replays
    db["cases"].create_index(["run_id", "case_key"])


def _m004_metering(db: sqlite_utils.Database) -> None:
    db["calls"].add_column("gpu_peak_mib", float)  # peak GPU memory of the call; NULL without a GPU
    db["cases"].add_column("cost_usd", float)  # sum of the case's calls; NULL when no price applies
    db["runs"].add_column("cost_usd", float)


def _m005_conversations(db: sqlite_utils.Database) -> None:
    # Every message of a case's conversations, and every tool the plugin ran for the model.
    db["turns"].create(
        {
            "id": int,
            "run_id": int,
            "case_id": int,
            "conversation": int,  # 1, 2, ... within the case (each model.chat call or model.conversation)
            "position": int,  # order of the message within the case
            "role": str,  # system | user | assistant | tool
            "content": str,
            "tool_calls": str,  # JSON, the assistant's calls in OpenAI's format
            "tool_call_id": str,  # a tool message: the call it answers
            "name": str,  # a tool message: the tool's name
            "dropped": int,  # 1 when trimmed out of the context window later in the conversation
            "started_at": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id"), ("case_id", "cases", "id")],
    )
    db["turns"].create_index(["case_id"])
    db["tool_calls"].create(
        {
            "id": int,
            "run_id": int,
            "case_id": int,
            "conversation": int,
            "position": int,  # the assistant turn that asked for the call
            "call_id": str,
            "name": str,
            "arguments": str,  # JSON
            "result": str,  # as sent back to the model; NULL when the call failed
            "error": str,
            "duration_s": float,
            "started_at": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id"), ("case_id", "cases", "id")],
    )
    db["tool_calls"].create_index(["case_id"])
    db["calls"].add_column("conversation", int)  # chat calls: the conversation they belong to
    db["calls"].add_column("dropped_messages", int)  # messages trimmed from the history before this call


def _m006_routing(db: sqlite_utils.Database) -> None:
    db["calls"].add_column("role", str)  # model | judge
    db["calls"].add_column("spec", str)  # the spec whose backend served the call (routes, fallbacks)
    db["cases"].add_column("served_by", str)  # the specs that served the case's calls, comma-separated
    db["cases"].add_column("gpus", str)  # the GPUs its worker was pinned to (CUDA_VISIBLE_DEVICES)


def _m007_batching(db: sqlite_utils.Database) -> None:
    db["calls"].add_column("batched", int)  # 1: served from a call batched across cases


def _m008_fewer_indexes(db: sqlite_utils.Database) -> None:
    # Every query of cases is by run_id, which the unique (run_id, nodeid) index serves; these two only
    # cost each case's commit two more index pages.
    db.execute("DROP INDEX IF EXISTS idx_cases_run_id_benchmark_model")
    db.execute("DROP INDEX IF EXISTS idx_cases_run_id_case_key")


def _m009_completion_timings_costs(db: sqlite_utils.Database) -> None:
    db["runs"].add_column("tests", int)  # tests collected; NULL: not known (runs before this column)
    db["runs"].add_column("tests_not_run", int)  # of those, how many never ended (an interrupted run)
    db["runs"].add_column("pid", int)  # the process that ran it, so a later run can tell a dead one
    # a batched call's latency_s is its own (to its last token, or its forward pass's end); this is the
    # wall time of the whole batched call that served it
    db["calls"].add_column("batch_s", float)
    db["calls"].add_column("input_tokens_estimated", int)  # 1: the server could not count the prompt
    # what cost_usd rests on where a price applies: counted | estimated (input tokens) | gpu_time | unknown
    # (priced, but the figures its price needs do not exist) | cached (answered from the call cache, $0;
    # from migration 010); NULL: no price applies
    db["calls"].add_column("cost_basis", str)
    db["calls"].add_column("stream_cuts", int)  # times the server cut the call's stream before it came whole


def _m010_call_cache(db: sqlite_utils.Database) -> None:
    # A call answered from the call cache (--evals-cache) costs $0 and no tokens in this run (its
    # latency_s is the lookup's); the recorded call's figures are kept in these columns.
    db["calls"].add_column("cached", int)  # 1: answered from the call cache
    db["calls"].add_column("cached_latency_s", float)
    db["calls"].add_column("cached_ttft_s", float)
    db["calls"].add_column("cached_tpot_s", float)
    db["calls"].add_column("cached_input_tokens", int)
    db["calls"].add_column("cached_output_tokens", int)
    db["calls"].add_column("cached_cost_usd", float)  # what the recorded call would cost at this run's price


def _m011_repeats(db: sqlite_utils.Database) -> None:
    # --evals-repeat: each sample is a case row; these say which sample of which case it is
    db["cases"].add_column("sample", int)  # from 1
    db["cases"].add_column("samples", int)
    db["cases"].add_column("repeat_of", str)  # the case's nodeid without the sample id
    # one row per repeated case of a run: its samples taken together
    db["repeated_cases"].create(
        {
            "id": int,
            "run_id": int,
            "benchmark": str,
            "model": str,
            "nodeid": str,  # the case (repeat_of of its samples)
            "samples": int,  # asked for
            "scored": int,  # samples that passed or failed
            "passed": int,
            "errors": int,
            "pass_rate": float,  # passed / scored; NULL when none was scored
            "pass_at_k": str,  # JSON {"1": ..., "k": ...}: unbiased pass@k for k up to scored
            "flaky": int,  # 1: its scored samples disagree
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["repeated_cases"].create_index(["run_id"])


def _m012_shards(db: sqlite_utils.Database) -> None:
    db["runs"].add_column("shard", str)  # --evals-shard: "K/N", the K-th of N parts; NULL: not a shard
    # JSON: the suite the run collected before the shard split ({"digest": ..., "tests": {benchmark: eval
    # tests}}): the shards of one suite share it, and a merged run knows what it should hold
    db["runs"].add_column("suite", str)
    # JSON: what decided its verdicts besides its cases (threshold lines, markers, error rate, alpha, margin,
    # the baseline run's id): `pytest-evals gate` and `merge` decide them again from the stored cases
    db["runs"].add_column("gates", str)
    db["runs"].add_column("merged_from", str)  # JSON: a merged run's shards: [{"database", "run", "shard"}]


def _m013_servers(db: sqlite_utils.Database) -> None:
    # the URL of the server that answered the call (HTTP backends; of a spec naming several servers,
    # openai:NAME@URL1,URL2, the one chosen); NULL for local backends and calls answered from the cache
    db["calls"].add_column("server", str)


def _m014_resumed_runs(db: sqlite_utils.Database) -> None:
    # --evals-resume: the run this one resumed, whose finished cases it replays; a later resume of this run
    # also takes that run's finished cases that this one never copied (it was killed while replaying)
    db["runs"].add_column("resumed_run", int)


MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("001_initial", _m001_initial),
    ("002_benchmarks", _m002_benchmarks),
    ("003_case_keys", _m003_case_keys),
    ("004_metering", _m004_metering),
    ("005_conversations", _m005_conversations),
    ("006_routing", _m006_routing),
    ("007_batching", _m007_batching),
    ("008_fewer_indexes", _m008_fewer_indexes),
    ("009_completion_timings_costs", _m009_completion_timings_costs),
    ("010_call_cache", _m010_call_cache),
    ("011_repeats", _m011_repeats),
    ("012_shards", _m012_shards),
    ("013_servers", _m013_servers),
    ("014_resumed_runs", _m014_resumed_runs),
]
