"""The ``Model`` a case calls: the spec that serves it (its own, the one its route names, or its judge),
its retry policy, the backend's circuit breaker, the spec's fallback, its price, its view of the call
cache, and the window's planner where its backend gains from batches across cases."""

from __future__ import annotations

import pytest

from ..backends.specs import ModelSpec
from ..calls.cache import CacheView
from ..calls.model import Model
from ..calls.planner import Planner
from ..calls.reliability import RetryPolicy
from ..calls.sampling import Sample
from .recorder import CaseLog
from .state import RunState, case_log_key, judge_key, model_name, retry_key, sample_of, served_spec, spec_of, state_of


def judge_spec(item: pytest.Item) -> ModelSpec | None:
    """The case's judge: its evals_judge marker, else --evals-judge / ini evals_judge."""
    return item.stash.get(judge_key, None) or state_of(item.config).judge


def build_model(item: pytest.Item, role: str = "model") -> Model:
    """The ``Model`` a case calls in ``role`` (``model``: its --model spec, or the spec its route names;
    ``judge``: its judge). Raises ``BackendError`` where the backend cannot be loaded."""
    state = state_of(item.config)
    if role == "judge":
        spec = judge_spec(item)
        if spec is None:
            raise LookupError("no judge spec")
        name = spec.label
    else:
        own = spec_of(item)
        if own is None:
            raise LookupError("not an eval case")
        spec = served_spec(item, own)
        name = model_name(item, own) if spec == own else spec.label
    # outside a case's setup hooks (a fixture built by hand): its log is a throwaway
    log = item.stash.get(case_log_key, None) or CaseLog(model=name)
    policy = item.stash.get(retry_key, None) or state.retry
    sample = sample_of(item) if role == "model" else None  # a judge grades each sample as it is
    return _model(state, spec, name, log, policy, role, state.planner, sample)


def _model(state: RunState, spec: ModelSpec, name: str, log: CaseLog, policy: RetryPolicy, role: str,
           planner: Planner | None, sample: Sample | None = None) -> Model:
    backend = state.pool.get(spec)
    fallback = spec.fallback

    def build_fallback() -> Model:  # loaded only when the primary fails; recorded under its own name
        assert fallback is not None
        return _model(state, fallback, fallback.label, log, policy, role, None, sample)

    view = None
    if state.cache is not None:
        model, weights = state.pool.model_and_weights(spec)
        view = CacheView(state.cache, spec.backend, model, weights, sample.index if sample is not None else 0)
    return Model(backend, log.calls, name=name, policy=policy, breaker=state.pool.breaker(spec, name),
                 fallback=build_fallback if fallback is not None else None, price=state.prices.find(spec.raw, name),
                 transcript=log.transcript, role=role,
                 planner=planner if backend.batches_across_cases else None, cache=view, sample=sample,
                 ceiling=state.ceiling)
