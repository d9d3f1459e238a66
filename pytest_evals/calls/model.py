"""The object behind the ``model`` and ``judge`` fixtures: one case's view of a loaded backend.

Each call is answered by the batch planner (from a batch made across cases, where batching is on) or
by the backend alone (a list of one request, or a question's choices), with the case's retry policy,
the backend's circuit breaker and the spec's fallback; every attempt is logged as one ``calls`` row.
A backend exception becomes :class:`BackendError`, so the case ends as ``error`` and is never scored
as wrong. ``session.case_model.build_model`` builds it for a case.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any, Callable, Sequence, TypeVar

from ..backends.base import (
    Backend,
    BackendError,
    ChatRequest,
    GenerateRequest,
    Loglikelihood,
    LoglikelihoodRequest,
    Message,
    PartialBatch,
    Reply,
    Stopwatch,
    UnsupportedTask,
    likeliest,
)
from ..store.rows import CallRow, now
from .cache import CacheView
from .ceiling import BudgetRefused, Ceiling, Hold
from .conversation import MAX_ROUNDS, Conversation, Transcript
from .metering import Price
from .planner import NOT_SENT, Planner, Served
from .reliability import NO_RETRY, CircuitBreaker, RetryPolicy, call_with_retries
from .routing import KIND_TASK, cannot_serve
from .sampling import GreedyOnce, GreedyRepeat, Sample, greedy_line, greedy_once_line

T = TypeVar("T")


class Model:
    def __init__(self, backend: Backend, calls: list[CallRow], *, name: str | None = None,
                 policy: RetryPolicy = NO_RETRY, breaker: CircuitBreaker | None = None,
                 fallback: Callable[[], "Model"] | None = None, price: Price | None = None,
                 transcript: Transcript | None = None, role: str = "model", planner: Planner | None = None,
                 cache: CacheView | None = None, sample: Sample | None = None, ceiling: Ceiling | None = None) -> None:
        self._backend = backend
        self._ceiling = ceiling  # --evals-budget: a priced call reserves its worst case before it is sent
        self._sample = sample  # which sample of a repeated case this model answers (None: not repeated)
        self._cache = cache  # --evals-cache: this model's calls in the call cache
        self._planner = planner  # batching across cases; None: every call goes to the backend alone
        self._role = role
        self.transcript = transcript if transcript is not None else Transcript()
        self._calls = calls
        self._name = name or backend.spec.label
        self._policy = policy
        self._breaker = breaker
        self._fallback = fallback  # builds the Model of the fallback spec, on first need
        self._price = price

    @property
    def spec(self) -> str:
        return self._backend.spec.raw

    @property
    def capabilities(self) -> frozenset[str]:
        return self._backend.capabilities

    @property
    def backend(self) -> Backend:
        return self._backend

    def __repr__(self) -> str:
        return f"<Model {self._name}>"

    # --- the public calls -------------------------------------------------------------------------
    def generate(self, prompt: str, *, max_tokens: int = 256, temperature: float = 0.0,
                 stop: str | Sequence[str] | None = None) -> Reply:
        """Raw completion of ``prompt`` (no chat template)."""
        __tracebackhide__ = True
        _text("generate", "prompt", prompt, "to ask several prompts, call model.generate once for each (the calls "
              "of a window of cases are batched anyway)")
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        if not all(isinstance(s, str) for s in stops):
            raise TypeError(f"model.generate(stop=...): expected a string or a list of strings, got {stop!r}")
        request = GenerateRequest(prompt, max_tokens=max_tokens, temperature=temperature, stop=stops)
        self._check_sampling("generate", temperature)
        return self._call("generate", prompt, self._sender("generate", [request]))

    def chat(self, messages: str | Sequence[Message], *, max_tokens: int = 256, temperature: float = 0.0,
             tools: Sequence[Callable[..., Any]] | None = None, tool_choice: str = "auto",
             max_rounds: int = MAX_ROUNDS) -> Reply:
        """The assistant's answer to ``messages`` (OpenAI format; a string is one user message).

        With ``tools`` the tool loop runs: the model's calls are made and their results sent back until
        it answers; the answer's ``tool_calls`` are the calls made, with results or errors.
        """
        __tracebackhide__ = True
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if isinstance(messages, dict) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise TypeError("model.chat(messages): expected a string or a list of messages such as "
                            f"[{{'role': 'user', 'content': '...'}}], got {_shown(messages)}")
        conversation = Conversation(self, tools=tools, tool_choice=tool_choice, max_tokens=max_tokens,
                                    temperature=temperature, max_rounds=max_rounds, trim=False)
        conversation.seed(messages)
        return conversation.respond()

    def conversation(self, system: str | None = None, tools: Sequence[Callable[..., Any]] | None = None,
                     tool_choice: str = "auto", *, max_tokens: int = 256, temperature: float = 0.0,
                     max_rounds: int = MAX_ROUNDS, context_window: int | None = None) -> Conversation:
        """A multi-turn conversation: ``.say(text)`` returns the answer, ``.messages`` the history.

        When the history outgrows the context window (the model's, or ``context_window`` tokens), the
        oldest turns after the system prompt are dropped; ``.dropped`` keeps them and the store marks them.
        """
        __tracebackhide__ = True
        return Conversation(self, system, tools, tool_choice, max_tokens=max_tokens, temperature=temperature,
                            max_rounds=max_rounds, context_window=context_window)

    def chat_request(self, request: ChatRequest, *, conversation: int | None = None, dropped: int = 0) -> Reply:
        """One chat call to the backend, logged (the tool loop's unit)."""
        __tracebackhide__ = True
        shown = "\n".join(_show_message(m) for m in request.messages)
        task = "tools" if request.tools and request.tool_choice != "none" else "chat"
        self._check_sampling("chat", request.temperature)
        return self._call("chat", shown, self._sender("chat", [request]), task=task,
                          conversation=conversation, dropped_messages=dropped)

    def loglikelihood(self, context: str, continuation: str) -> float:
        """Sum of the log-probabilities of ``continuation``'s tokens after ``context``."""
        __tracebackhide__ = True
        _text("loglikelihood", "context", context)
        _text("loglikelihood", "continuation", continuation, "to score several continuations, call "
              "model.score(context, [...]) or model.choose(context, [...])")
        request = LoglikelihoodRequest(context, continuation)
        self._check_sampling("loglikelihood", None)
        result = self._call("loglikelihood", context + continuation, self._sender("loglikelihood", [request]))
        return result.logprob

    def choose(self, context: str, choices: Sequence[str], answer: int | None = None) -> int:
        """Index of the most likely continuation among ``choices`` (ties go to the first). ``answer``, the
        right choice's index, is only recorded: the call's output reads ``picked [2] Paris; right [2] Paris``,
        its log-probabilities on the next line (the test still asserts what is right)."""
        __tracebackhide__ = True
        if not choices:
            raise ValueError("choose() needs at least one choice")
        if answer is not None and (isinstance(answer, bool) or not isinstance(answer, int)
                                   or not 0 <= answer < len(choices)):
            raise ValueError(f"model.choose(answer={answer!r}): expected the right choice's index, 0 to "
                             f"{len(choices) - 1}")
        before = len(self._calls)
        picked = likeliest([r.logprob for r in self.score(context, choices)])
        answered = [row for row in self._calls[before:] if row.kind == "choose" and row.error is None]
        if answered:
            answered[-1].output_text = choice_text(choices, picked, answer, answered[-1].output_text)
        return picked

    def score(self, context: str, continuations: Sequence[str]) -> list[Loglikelihood]:
        """Each continuation's loglikelihood after ``context`` (with ``is_greedy`` and token counts), in one
        call: a question's choices, as lm-evaluation-harness scores them."""
        __tracebackhide__ = True
        _text("score", "context", context)
        if isinstance(continuations, str) or not all(isinstance(c, str) for c in continuations):
            raise TypeError(f"model.score(context, continuations): expected a list of strings, got {_shown(continuations)}")
        if not continuations:
            raise ValueError("score() needs at least one continuation")
        requests = [LoglikelihoodRequest(context, c) for c in continuations]
        self._check_sampling("choose", None)
        shown = context + "\n" + "\n".join(f"[{i}] {c}" for i, c in enumerate(continuations))
        return list(self._call("choose", shown, self._sender("loglikelihood", requests, one=False)))

    def _check_sampling(self, kind: str, temperature: float | None) -> None:
        """A repeated case's samples must be able to differ: a call at temperature 0 (or a loglikelihood,
        which has no randomness) gives every sample the same answer, unless greedy samples are meant."""
        __tracebackhide__ = True
        sample = self._sample
        if sample is None or sample.count < 2 or sample.greedy or (temperature is not None and temperature > 0):
            return
        shown = f"model.{kind}()" + (" (a loglikelihood has no randomness)" if temperature is None else "")
        if sample.once_if_greedy:  # a mixed suite under --evals-repeat: the greedy case runs once
            if sample.index == 0:
                return
            raise GreedyOnce(greedy_once_line(sample.count, shown))
        raise GreedyRepeat(greedy_line(sample.count, shown))

    # --- dispatch and logging ---------------------------------------------------------------------
    def _sender(self, method: str, requests: list[Any], one: bool = True) -> "Send":
        """What one attempt of the model that answers (this one, or its fallback) does: the call cache's
        answers where it holds them all, else the backend's batch method on ``requests`` (through the
        batch planner, which may serve them from a round of many cases' requests), with the call's worst
        case reserved against the budget first (in ``holds``, settled by the attempt). Returns the result
        (the one request's, or the list) and how it was served."""
        def send(model: Model, holds: list[Hold]) -> tuple[Any, Served]:
            view = model._cache
            if view is not None and view.cache.reads:
                found = view.lookup(method, requests)
                if found is not None:
                    return (found[0] if one else found), Served(found)
                if view.cache.mode == "replay":
                    raise view.miss(method, requests, model._backend.spec.raw)
            if model._ceiling is not None:
                aside = model._planner.aside() if model._planner is not None else None
                holds.append(model._ceiling.hold(model._price, method, requests, aside))
            try:
                if model._planner is not None:
                    sample = model._sample.index if model._sample is not None else 0
                    served = model._planner.serve(model._backend, method, requests, sample)
                else:
                    served = Served(getattr(model._backend, method)(requests))
            except PartialBatch as partial:  # a case's own call fails as its first failed request did
                raise partial.first_error from None
            if view is not None and view.cache.writes:
                view.store(method, requests, served.results)
            return (served.results[0] if one else served.results), served

        return send

    def _call(self, kind: str, shown_input: str, send: "Send", task: str | None = None,
              **fields: Any) -> T:
        __tracebackhide__ = True  # (here and above) a backend fault points at the test's own line
        task = task or KIND_TASK[kind]
        try:
            if task not in self._backend.capabilities:
                raise UnsupportedTask(cannot_serve(self._backend.spec.label, task, self._backend.capabilities))
            return self._attempts(kind, shown_input, send, fields)
        except BackendError:
            if self._fallback is None:
                raise
        # The primary failed for good (retries spent, circuit open, cannot serve the task): the fallback
        # answers, recorded as itself.
        return self._fallback()._call(kind, shown_input, send, task, **fields)

    def _attempts(self, kind: str, shown_input: str, send: "Send",
                  fields: dict[str, Any]) -> T:
        __tracebackhide__ = True

        def attempt(number: int) -> T:
            __tracebackhide__ = True
            row = CallRow(kind=kind, model=self._name, input_text=shown_input, started_at=now(), attempt=number,
                          role=self._role, spec=self._backend.spec.raw, **fields)
            self._calls.append(row)  # every attempt is a row, with its error
            watch = Stopwatch()
            holds: list[Hold] = []
            try:
                result, served = send(self, holds)
            except BudgetRefused:
                self._calls.remove(row)  # never sent: not a call
                raise
            except Exception as exc:  # a fault of the backend, not of the answer
                _settle(holds, None)  # what a failed call cost is unknown: it keeps all it reserved
                row.latency_s = watch.elapsed()
                row.error = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, BackendError):
                    raise
                raise BackendError(f"{self._name}: {type(exc).__name__}: {exc}") from exc
            except BaseException as exc:  # the run stops (Ctrl-C, a window's case skipped): never answered
                if getattr(exc, NOT_SENT, False):  # stopped before its requests were sent: not a call, no cost
                    self._calls.remove(row)
                    _settle(holds, 0.0)
                    raise
                _settle(holds, None)
                row.latency_s = watch.elapsed()
                row.error = f"not answered: {type(exc).__name__}: {exc}"
                raise
            row.latency_s = watch.elapsed()
            if _cached(result):  # nothing was called: this run's time is the lookup's, and it cost nothing
                return _fill_cached(row, result, self._price)
            own = _fill(row, result)
            if served.elapsed is not None:  # a window's round or flight made the backend call
                if served.shared:
                    row.batched = 1  # served from a batched call: the batch's time is kept beside the call's own
                    row.batch_s = served.elapsed
                if not own:  # the backend did not time this request on its own: its call's time is all
                    row.latency_s = served.elapsed  # (the case's wait for the others is not its latency)
            if self._price is not None:
                row.cost_usd = self._price.cost(row.input_tokens, row.output_tokens, row.latency_s)
                row.cost_basis = ("unknown" if row.cost_usd is None else "gpu_time" if self._price.gpu_hour is not None
                                  else "estimated" if row.input_tokens_estimated else "counted")
                if isinstance(result, Reply):
                    result = replace(result, cost_usd=row.cost_usd)
            _settle(holds, row.cost_usd)
            return result

        return call_with_retries(attempt, self._policy, self._breaker)


Send = Callable[[Model, list[Hold]], tuple[Any, Served]]


def _settle(holds: list[Hold], cost: float | None) -> None:
    for hold in holds:
        hold.settle(cost)


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:80]}{'...' if len(text) > 80 else ''}"


def _text(call: str, name: str, value: Any, hint: str = "") -> None:
    """A call's text argument must be a string: one line naming the call (and the right one), not a fault
    deep inside a batch."""
    __tracebackhide__ = True
    if not isinstance(value, str):
        raise TypeError(f"model.{call}({name}): expected a string, got {_shown(value)}" + (f"; {hint}" if hint else ""))


def _show_message(message: Message) -> str:
    text = f"{message['role']}: {message.get('content') or ''}"
    for call in message.get("tool_calls") or []:
        function = call.get("function", {})
        text += f"\n  -> {function.get('name')}({function.get('arguments')})"
    return text


def _fill(row: CallRow, result: object) -> bool:
    """Fill ``row`` from a call's result; True where the result carries its own latency."""
    if isinstance(result, Reply):
        row.output_text = "\n".join([result.text] * bool(result.text) + [
            f"-> {c.name}({json.dumps(c.arguments)})" + (f" [{c.error}]" if c.error else "") for c in result.tool_calls])
        row.input_tokens = result.prompt_tokens
        row.input_tokens_estimated = 1 if result.prompt_tokens_estimated and result.prompt_tokens is not None else None
        row.output_tokens = result.completion_tokens
        row.stream_cuts = result.stream_cuts or None
        row.ttft_s = result.ttft_s
        row.tpot_s = result.tpot_s
        row.cost_usd = result.cost_usd
        row.gpu_peak_mib = result.gpu_peak_mib
        row.server = result.server
        if result.latency_s is not None:
            row.latency_s = result.latency_s
            return True
        return False
    results = [result] if isinstance(result, Loglikelihood) else result
    if isinstance(results, list) and results and all(isinstance(r, Loglikelihood) for r in results):
        _fill_loglikelihoods(row, results)
        peaks = [r.gpu_peak_mib for r in results if r.gpu_peak_mib is not None]
        row.gpu_peak_mib = max(peaks) if peaks else None
        # a question's choices may be scored by several servers of the spec: each named once
        row.server = ",".join(dict.fromkeys(r.server for r in results if r.server)) or None
        times = [r.latency_s for r in results]
        if all(t is not None for t in times):
            row.latency_s = max(times)  # a question's choices: until its last choice was scored
            return True
    return False


def _cached(result: object) -> bool:
    if isinstance(result, list):
        return bool(result) and all(getattr(r, "cached", False) for r in result)
    return bool(getattr(result, "cached", False))


def _fill_cached(row: CallRow, result: T, price: Price | None) -> T:
    """A call answered from the call cache: the recorded call's timings and tokens in their own columns,
    and what it would have cost; in this run it cost $0 and processed no tokens."""
    recorded = CallRow(kind=row.kind, model=row.model)
    _fill(recorded, result)
    row.output_text = recorded.output_text
    row.cached = 1
    row.cached_latency_s = recorded.latency_s if _own_latency(result) else None
    row.cached_ttft_s, row.cached_tpot_s = recorded.ttft_s, recorded.tpot_s
    row.cached_input_tokens, row.cached_output_tokens = recorded.input_tokens, recorded.output_tokens
    row.cost_usd = 0.0
    if price is not None:
        row.cost_basis = "cached"
        row.cached_cost_usd = price.cost(recorded.input_tokens, recorded.output_tokens, row.cached_latency_s)
    if isinstance(result, Reply):
        return replace(result, cost_usd=0.0)  # type: ignore[return-value]
    return result


def _own_latency(result: object) -> bool:
    results = result if isinstance(result, list) else [result]
    return all(getattr(r, "latency_s", None) is not None for r in results)


def choice_text(choices: Sequence[str], picked: int, answer: int | None, logprobs: str | None) -> str:
    """What a person reads of a multiple-choice call: the option picked (and the right one, where the test
    said), as text; the log-probabilities below it."""
    def option(i: int) -> str:
        text = choices[i].strip()
        return f"[{i}] {text if text and len(text) <= 80 else repr(choices[i][:77])}"

    line = f"picked {option(picked)}" + ("" if answer is None else f"; right {option(answer)}")
    return line + (f"\nlog-probabilities: {logprobs}" if logprobs else "")


def _fill_loglikelihoods(row: CallRow, results: list[Loglikelihood]) -> None:
    row.output_text = " ".join(f"{r.logprob:.6f}" if math.isfinite(r.logprob) else str(r.logprob) for r in results)
    counts = [(r.context_tokens or 0) + (r.continuation_tokens or 0) for r in results]
    row.input_tokens = sum(counts) if all(r.context_tokens is not None for r in results) else None
    row.output_tokens = 0
