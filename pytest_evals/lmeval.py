"""lm-evaluation-harness tasks as pytest cases (``pip install lm-eval``; optional).

    from pytest_evals.lmeval import load_task

    TASK = load_task("my_task", include_path=Path(__file__).parent / "tasks")

    @pytest.mark.parametrize("doc", TASK.docs)
    def test_my_task(model, evals_score, doc):
        TASK.check(model, doc, evals_score)

One case per document of the task's evaluation split (test, else validation), its id the document's
index. ``check`` builds the document's requests as lm-evaluation-harness does (``doc_to_text``,
``doc_to_choice``/``doc_to_target``, the target delimiter, few-shot examples drawn with its default seed
1234 in document order, so each document gets the prompt lm-eval builds for it), sends them through the ``model`` fixture (so routing, retries, the call cache, metering and
resume apply), applies the task's filters, records the task's own per-document metrics
(``process_results``: ``acc``, ``acc_norm``, ``exact_match``, ...) with ``evals_score``, and passes when
the task's first metric is at its best (``acc`` 1, ``exact_match`` 1).

The task's data is read with the Hugging Face hub offline: a task over local files (``dataset_path:
json`` with ``data_files``) works anywhere; a hub dataset must already be in the local cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from .data import Row, with_ids
from .errors import DataError

FEWSHOT_SEED = 1234  # lm-evaluation-harness's default fewshot_random_seed


@dataclass
class LmEvalTask:
    name: str
    task: Any  # lm_eval's ConfigurableTask
    docs: list[Row]
    num_fewshot: int
    metrics: list[str] = field(default_factory=list)
    contexts: dict[str, Any] = field(default_factory=dict)  # a document's id -> its prompt, few-shot included

    def requests(self, doc: dict[str, Any]) -> tuple[str, list[tuple[Any, ...]]]:
        """The task's output type and the arguments of each request for ``doc``."""
        context = self.contexts[doc.id] if isinstance(doc, Row) and doc.id in self.contexts else \
            self.task.fewshot_context(dict(doc), self.num_fewshot)
        instances = self.task.construct_requests(doc=dict(doc), ctx=context, metadata=(self.name, 0, 1))
        if not isinstance(instances, list):
            instances = [instances]
        return self.task.OUTPUT_TYPE, [inst.args for inst in instances]

    def run(self, model: Any, doc: dict[str, Any]) -> dict[str, float]:
        """The document's metrics, its requests answered by ``model``."""
        from lm_eval.api.instance import Instance

        kind, arguments = self.requests(doc)
        if kind in ("multiple_choice", "loglikelihood"):
            results: list[Any] = []
            for context in dict.fromkeys(c for c, _ in arguments):  # one call per context, in order
                continuations = [cont for ctx, cont in arguments if ctx == context]
                scored = model.score(context, continuations)
                results += [(r.logprob, bool(r.is_greedy)) for r in scored]
        elif kind == "generate_until":
            results = [self._generate(model, context, kwargs) for context, kwargs in arguments]
        else:
            raise NotImplementedError(f"lm-eval task {self.name}: output type {kind} is not supported yet "
                                      "(multiple_choice, loglikelihood and generate_until are)")
        instances = [Instance(request_type=kind, doc=dict(doc), arguments=args, idx=i, resps=[result])
                     for i, (args, result) in enumerate(zip(arguments, results))]
        metrics: dict[str, float] = {}
        for ensemble in getattr(self.task, "_filters", []) or []:
            ensemble.apply(instances)
            filtered = [inst.filtered_resps[ensemble.name] for inst in instances]
            found = self.task.process_results(dict(doc), filtered)
            suffix = "" if ensemble.name == "none" else f",{ensemble.name}"
            metrics.update({f"{k}{suffix}": float(v) for k, v in found.items() if _number(v)})
        return metrics

    @staticmethod
    def _generate(model: Any, context: str, kwargs: dict[str, Any]) -> str:
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(kwargs.get("temperature", 0.0) or 0.0) if kwargs.get("do_sample") else 0.0
        return model.generate(context, max_tokens=int(kwargs.get("max_gen_toks", 256)), stop=until,
                              temperature=temperature).text

    def check(self, model: Any, doc: dict[str, Any], evals_score: Callable[..., None]) -> dict[str, float]:
        """Run ``doc``, record its metrics, and fail the case unless the task's first metric is at its best."""
        metrics = self.run(model, doc)
        evals_score(**{_metric_name(k): v for k, v in metrics.items()})
        first = next((m for m in self.metrics if m in metrics), None) or next(iter(metrics), None)
        if first is not None:
            assert metrics[first] >= 1.0, f"{first} = {metrics[first]:g}"
        return metrics


def _number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _metric_name(name: str) -> str:
    """``exact_match,strict-match`` is not a keyword: ``exact_match__strict_match``."""
    return name.replace(",", "__").replace("-", "_")


def load_task(name: str, include_path: str | os.PathLike[str] | None = None, *,
              num_fewshot: int | None = None) -> LmEvalTask:
    """An lm-evaluation-harness task by name (its own, or a YAML under ``include_path``), with its
    documents ready for ``parametrize``. Raises ``DataError`` (a ``ValueError``) with one line where it cannot."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise DataError(f"lm-eval task {name}: needs lm-evaluation-harness: pip install lm-eval") from None
    previous = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    os.environ.update({k: "1" for k in previous})
    try:
        manager = TaskManager(include_path=str(include_path) if include_path is not None else None)
        if name not in manager.all_tasks:
            raise DataError(f"lm-eval task {name}: not found"
                             + (f" (nor under {include_path})" if include_path else "")
                             + "; name a task of lm-eval's list or a YAML under include_path")
        loaded = manager.load([name])
        if name not in loaded["tasks"]:
            children = ", ".join(loaded.get("group_map", {}).get(name, [])[:5])
            raise DataError(f"lm-eval task {name}: is a group; name one of its tasks ({children})")
        task = loaded["tasks"][name]
        task.set_fewshot_seed(seed=FEWSHOT_SEED)
        docs = list(task.test_docs() if task.has_test_docs() else task.validation_docs() or [])
    except ValueError:
        raise
    except Exception as exc:  # its dataset is not here (offline), a bad YAML, ...
        raise DataError(f"lm-eval task {name}: cannot load it ({type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})") from None
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if not docs:
        raise DataError(f"lm-eval task {name}: no documents in its test or validation split")
    shots = num_fewshot if num_fewshot is not None else int(task.config.num_fewshot or 0)
    metrics = [m["metric"] for m in (task.config.metric_list or []) if isinstance(m.get("metric"), str)]
    rows = with_ids([dict(doc) for doc in docs], f"lm-eval task {name}", id_field=None)
    for index, row in enumerate(rows):  # the document's index: as lm-eval's own doc_id
        row.__name__ = f"doc{index}"
    # The few-shot examples come from one seeded generator that every document's draw advances, as in
    # lm-evaluation-harness: drawn here in document order, each case gets the prompt lm-eval would build
    # for it, whatever order, subset (--evals-limit) or worker runs it.
    contexts = {row.id: task.fewshot_context(dict(row), shots) for row in rows}
    return LmEvalTask(name, task, rows, shots, metrics, contexts)

