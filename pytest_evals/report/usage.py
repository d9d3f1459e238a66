"""What the model calls of a run used, per model: cases, tokens, cost, latency percentiles, GPU memory;
and the lines that say what those figures rest on (estimated tokens, cached calls, cut streams).

The controller adds each recorded case's calls (``calls`` rows) as its report arrives; the terminal
summary prints the table. No pytest import.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..scoring.stats import sorted_quantile


def percentile(values: list[float], q: float) -> float | None:
    return sorted_quantile(sorted(values), q) if values else None


class Usage:
    """Per model: cases, tokens, cost, and the latency figures of the calls that succeeded."""

    def __init__(self) -> None:
        self.models: dict[str, dict[str, list]] = {}
        self.batched = 0  # calls served from batches across cases
        self.cost_bases: dict[str | None, int] = {}  # calls by what their cost rests on (None: no price applies)
        self.stream_cuts: dict[str, int] = {}  # spec -> streams its server cut (each sent again)
        self.calls = 0  # every call attempt
        self.cached = 0  # calls answered from the call cache
        self.cached_costs: list[float] = []  # what those would have cost, where their price is known
        self.cached_unpriced = 0  # cached calls of priced models whose cost the recorded figures cannot give
        self.cache_misses = 0  # replayed calls the cache did not hold (their cases errored)
        self.model_calls = 0  # calls made to the models under test (not a judge's, not the cache's)
        self.shared_calls = 0  # of those, served from a batch that carried other cases' requests too

    def note(self) -> str | None:
        """What the latency columns show, where batches could blur it."""
        if not self.batched:
            return None
        return (f"latency: each call's own time, batched ones too ({self.batched} calls): a generation to its own "
                "last token from its sub-batch's start, a loglikelihood to its forward pass's end; a batch's "
                "wall time is in calls.batch_s")

    def add(self, model: str, calls: list) -> None:
        """A case's calls: the model's under the case's model, a judge's on a row of its own."""
        groups: dict[str, list] = {model: []}
        for call in calls:
            key = f"{call.model} (judge)" if call.role == "judge" else model
            groups.setdefault(key, []).append(call)
            if call.role == "model" and not call.cached:
                self.model_calls += 1
                self.shared_calls += bool(call.batched)
        for key, group in groups.items():
            self._add(key, group)

    def _add(self, model: str, calls: list) -> None:
        data = self.models.setdefault(model, {k: [] for k in (
            "cases", "input_tokens", "output_tokens", "cost_usd", "latency_s", "ttft_s", "tpot_s", "gpu_peak_mib",
            "generating")})
        data["cases"].append(1)
        for call in calls:
            self.calls += 1
            if call.cached:
                self._add_cached(call)
                continue
            if call.error and call.error.startswith("CacheMiss:"):
                self.cache_misses += 1
            if call.batched:
                self.batched += 1
            self.cost_bases[call.cost_basis] = self.cost_bases.get(call.cost_basis, 0) + 1
            if call.stream_cuts:
                server = call.spec or call.model
                self.stream_cuts[server] = self.stream_cuts.get(server, 0) + call.stream_cuts
            if call.cost_basis == "estimated":
                data.setdefault("estimated", []).append(1)
            for name in ("input_tokens", "output_tokens", "cost_usd", "gpu_peak_mib"):
                value = getattr(call, name)
                if value is not None:
                    data[name].append(value)
            if call.error is None:
                for name in ("latency_s", "ttft_s", "tpot_s"):
                    value = getattr(call, name)
                    if value is not None:
                        data[name].append(value)
                span = _span(call)
                if span is not None:
                    data["generating"].append((*span, call.output_tokens))

    def _add_cached(self, call: Any) -> None:
        """A call the cache answered: it cost nothing and took no model time, so it stays out of the token,
        latency and cost columns; its recorded cost is what it would have cost."""
        self.cached += 1
        if call.cached_cost_usd is not None:
            self.cached_costs.append(call.cached_cost_usd)
        elif call.cost_basis == "cached":  # a price applies, but the recorded figures it needs are missing
            self.cached_unpriced += 1

    def cache_line(self, path: str, mode: str, priced: bool) -> str:
        """How many calls the call cache answered, what they would have cost, and what it missed."""
        made = self.calls - self.cached - self.cache_misses
        line = f"evals-cache ({mode}): {self.cached} of {self.calls} model calls answered from {path}"
        if self.cached:
            if self.cached_costs and priced:
                line += f" (they would have cost {'at least ' if self.cached_unpriced else ''}${sum(self.cached_costs):.4f})"
            elif priced:
                line += " (what they would have cost is unknown: their recorded tokens or times are missing)"
            else:
                line += " (no prices are set, so what they would have cost is unknown)"
        if mode == "replay":
            line += (f"; {self.cache_misses} calls were not in it, and their cases ended as errors "
                     "(record them with --evals-cache=use)" if self.cache_misses else "; none was missing")
        else:
            line += f"; {made} calls made" + (", their answers stored" if made else "")
        return line

    def cost_note(self) -> str | None:
        """What the costs rest on, where part of them is estimated or unknown; None where all were counted."""
        estimated, unknown = self.cost_bases.get("estimated", 0), self.cost_bases.get("unknown", 0)
        parts = []
        if estimated:
            parts.append(f"{estimated} calls priced from estimated prompt tokens (the server did not count them; "
                         "marked ~)")
        if unknown:
            parts.append(f"{unknown} calls of priced models have no cost (the tokens their price needs are unknown)")
        return "cost: " + "; ".join(parts) if parts else None

    def cut_notes(self) -> list[str]:
        """Servers that cut streams when another request arrived: what the backend did, and the fix."""
        return [f"evals-http: {spec} cut {n} streams when another request arrived (llama-cpp-python's server does "
                "so by default); each cut halved the concurrency limit (down to one request at a time) and the cut "
                "request was sent again, so the answers are whole, only slower; start the server with "
                "--interrupt_requests False to run at full concurrency" for spec, n in self.stream_cuts.items()]

    @property
    def cost_unknown(self) -> int:
        return self.cost_bases.get("unknown", 0)

    HEADER = ["model", "cases", "input tok", "output tok", "cost USD", "latency p50", "latency p95", "TTFT p50",
              "TPOT p50", "output tok/s", "peak GPU MiB"]

    def rows(self) -> list[list[str]]:
        def seconds(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f}s"

        rows = []
        for model, d in self.models.items():
            rows.append([
                model, str(len(d["cases"])),
                str(sum(d["input_tokens"])) if d["input_tokens"] else "-",
                str(sum(d["output_tokens"])) if d["output_tokens"] else "-",
                ("~" if d.get("estimated") else "") + f"{sum(d['cost_usd']):.4f}" if d["cost_usd"] else "-",
                seconds(percentile(d["latency_s"], 0.5)), seconds(percentile(d["latency_s"], 0.95)),
                seconds(percentile(d["ttft_s"], 0.5)), seconds(percentile(d["tpot_s"], 0.5)),
                _rate(d["generating"]),
                f"{max(d['gpu_peak_mib']):.0f}" if d["gpu_peak_mib"] else "-",
            ])
        return rows


def _span(call: Any) -> tuple[float, float] | None:
    """When a call that generated tokens ran: (start, end) in seconds since the epoch; None for one that
    generated none (a loglikelihood) or whose times are unknown."""
    if not call.output_tokens or call.latency_s is None or not call.started_at:
        return None
    try:
        start = datetime.fromisoformat(call.started_at).timestamp()
    except ValueError:
        return None
    return start, start + call.latency_s


def _rate(spans: list[tuple[float, float, int]]) -> str:
    """Output tokens per second of the time the model was generating: the calls' tokens over the union of
    their spans (calls of a batch, or in flight together, overlap: counted once). Not a sum of per-call
    times (a batch of 32 would count its time 32 times) and not diluted by calls that generate nothing."""
    busy, end = 0.0, float("-inf")
    for start, stop, _ in sorted(spans):
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    return f"{sum(tokens for _, _, tokens in spans) / busy:.1f}" if spans and busy > 0 else "-"
