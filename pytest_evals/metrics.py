"""Answer metrics for ``evals_score``: ``evals_score(f1=metrics.f1(reply.text, case["answer"]))``.

- :func:`exact_match` and :func:`f1`: SQuAD's (lower case, punctuation and the articles a/an/the
  removed, whitespace collapsed; F1 over the bag of tokens), the best over several references.
- :func:`rouge_l`: the ROUGE-L F-measure of Google's ``rouge-score`` package (its tokenizer, no stemmer
  unless asked), the best over several references.
- :func:`bleu`: sacrebleu's sentence BLEU (0-100, sacrebleu's scale and default settings) against all
  references at once.

``rouge-score`` and ``sacrebleu`` are the optional extra ``[metrics]``, imported on first use.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import lru_cache
from typing import Any, Sequence

References = str | Sequence[str]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def _references(references: References) -> list[str]:
    found = [references] if isinstance(references, str) else list(references)
    if not found:
        raise ValueError("at least one reference is needed")
    return [str(r) for r in found]


def normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, references: References) -> float:
    """1.0 when the normalised prediction equals a normalised reference, else 0.0."""
    target = normalize(prediction)
    return float(any(target == normalize(r) for r in _references(references)))


def f1(prediction: str, references: References) -> float:
    """SQuAD token F1 between the normalised texts, the best over the references."""
    return max(_token_f1(prediction, r) for r in _references(references))


def _token_f1(prediction: str, reference: str) -> float:
    predicted, expected = normalize(prediction).split(), normalize(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)  # both empty: a match; one empty: nothing in common
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def _require(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this metric needs {package}: pip install 'pytest-llm-evals[metrics]'") from None


@lru_cache(maxsize=4)
def _rouge_scorer(stemmer: bool) -> Any:
    rouge = _require("rouge_score.rouge_scorer", "rouge-score")
    return rouge.RougeScorer(["rougeL"], use_stemmer=stemmer)


def rouge_l(prediction: str, references: References, *, stemmer: bool = False) -> float:
    """ROUGE-L F-measure (``rouge-score``), the best over the references."""
    scorer = _rouge_scorer(stemmer)
    return max(scorer.score(reference, prediction)["rougeL"].fmeasure for reference in _references(references))


def bleu(prediction: str, references: References) -> float:
    """sacrebleu's sentence BLEU (0-100) of the prediction against every reference."""
    sacrebleu = _require("sacrebleu", "sacrebleu")
    return float(sacrebleu.sentence_bleu(prediction, _references(references)).score)
