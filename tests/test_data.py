"""Benchmark data: load_dataset over every format, stable ids, few-shot, --evals-limit, and the metrics."""

from __future__ import annotations

import gzip
import json
import math
import re
from pathlib import Path

import pytest
from conftest import FAKE_BACKEND, require

from pytest_evals import Row, few_shot, load_dataset, metrics

ROWS = [{"question": "2+2", "answer": "4"}, {"question": "3+3", "answer": "6"}, {"question": "1+1", "answer": "2"}]


def write_all(folder: Path, rows: list[dict]) -> dict[str, Path]:
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = {name: folder / name for name in ("d.jsonl", "d.json", "d.csv", "d.parquet", "d.jsonl.gz")}
    paths["d.jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths["d.json"].write_text(json.dumps({"data": rows}))
    with open(paths["d.csv"], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), paths["d.parquet"])
    paths["d.jsonl.gz"].write_bytes(gzip.compress(paths["d.jsonl"].read_bytes()))
    return paths


def test_every_format_gives_the_same_rows_and_ids(tmp_path: Path) -> None:
    loaded = {name: load_dataset(path) for name, path in write_all(tmp_path, ROWS).items()}
    for name, rows in loaded.items():
        assert rows == ROWS, name
        assert all(isinstance(r, Row) for r in rows)
        assert [r.id for r in rows] == [r.id for r in loaded["d.jsonl"]], name
    assert load_dataset(tmp_path / "x.py", "d.csv") == ROWS  # beside a module, as load_jsonl


def test_ids_come_from_the_rows_and_survive_reordering(tmp_path: Path) -> None:
    with_ids = [{"id": "q-7", "x": 1}, {"id": "q-3", "x": 2}, {"id": "q-7", "x": 3}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in with_ids))
    assert [r.id for r in load_dataset(tmp_path / "a.jsonl")] == ["q-7", "q-3", "q-7-2"]
    assert [r.id for r in load_dataset(tmp_path / "a.jsonl", id_field="x")] == ["1", "2", "3"]
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(ROWS)))
    forward = {r["question"]: r.id for r in load_dataset(tmp_path / "b.jsonl")}
    backward = {r["question"]: r.id for r in load_dataset(tmp_path / "c.jsonl")}
    assert forward == backward and len(set(forward.values())) == 3  # a digest of the content, not a position


def test_bad_data_is_one_line_naming_the_file(tmp_path: Path) -> None:
    cases = {
        "missing.csv": "missing.csv: cannot read the data file (No such file or directory)",
        "d.txt": "d.txt: unknown data format '.txt'; use one of .jsonl, .json, .csv, .parquet",
        "bad.jsonl": "bad.jsonl:2: not valid JSON",
        "bad.json": "bad.json: expected a list of rows, or an object holding one list of rows",
        "empty.csv": "empty.csv: no rows",
        "bad.parquet": "bad.parquet: not a readable Parquet file",
    }
    (tmp_path / "d.txt").write_text("x")
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    (tmp_path / "bad.json").write_text('{"a": [1], "b": [2]}')
    (tmp_path / "empty.csv").write_text("a,b\n")
    (tmp_path / "bad.parquet").write_text("not parquet")
    for name, message in cases.items():
        with pytest.raises(ValueError) as info:
            load_dataset(tmp_path / name)
        assert str(info.value).startswith(str(tmp_path / name).removesuffix(name) + message), str(info.value)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="no field 'nope' for the ids; the fields are question, answer"):
        load_dataset(write_all(tmp_path, ROWS)["d.jsonl"], id_field="nope")


def test_hugging_face_datasets_from_disk_only(tmp_path: Path) -> None:
    datasets = require("datasets", "pip install datasets")
    saved = tmp_path / "saved"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS),
                          "train": datasets.Dataset.from_list(ROWS[:1])}).save_to_disk(str(saved))
    assert load_dataset(saved, split="test") == ROWS
    with pytest.raises(ValueError, match="has the splits test, train; pick one with split=..."):
        load_dataset(saved)
    files = tmp_path / "files"
    files.mkdir()
    (files / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert load_dataset(f"hf:{files}", split="test") == ROWS  # datasets' own loader over local files
    with pytest.raises(ValueError) as info:
        load_dataset("hf:nobody-has/this-dataset-9f3a", split="test")
    assert str(info.value).startswith("hf:nobody-has/this-dataset-9f3a: not in the local Hugging Face cache, and "
                                      "a run never downloads")
    assert "python -c \"import datasets; datasets.load_dataset('nobody-has/this-dataset-9f3a', None)\"" in str(
        info.value)


def test_few_shot_is_fixed_per_case_and_never_the_case() -> None:
    pool = load_dataset_rows(20)
    for case in pool:
        shots = few_shot(pool, 5, exclude=case)
        assert case not in shots and len(shots) == 5 and len({s.id for s in shots}) == 5
        assert [s.id for s in few_shot(pool, 5, exclude=case)] == [s.id for s in shots]  # the same every run
    assert few_shot(pool, 5, exclude=pool[0], seed=1) != few_shot(pool, 5, exclude=pool[0], seed=0)
    with pytest.raises(ValueError, match=r"few_shot\(k=20\): the pool has 19 examples besides the case"):
        few_shot(pool, 20, exclude=pool[0])


def load_dataset_rows(n: int) -> list[Row]:
    from pytest_evals.data import with_ids

    return with_ids([{"q": f"question {i}", "a": str(i)} for i in range(n)])


# --- --evals-limit ----------------------------------------------------------------------------------------
LIMITED = """
import pytest
from pytest_evals import load_dataset

ROWS = load_dataset(__file__, "rows.jsonl")

@pytest.mark.parametrize("case", ROWS)
def test_rows(model, case):
    assert model.generate(case["q"]).text

@pytest.mark.parametrize("n", range(7))
def test_numbers(model, n):
    assert model.generate(str(n)).text

def test_plain():
    pass
"""


@pytest.fixture
def limited(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(FAKE_BACKEND)
    pytester.makepyfile(test_limited=LIMITED)
    (pytester.path / "rows.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "q": f"q{i}"}) + "\n"
                                                      for i in range(12)))
    return pytester


def passed(result: pytest.RunResult, test: str, model: str) -> list[str]:
    """The nodeids -v reported PASSED (serial or under xdist) for one test function and model."""
    found = re.findall(r"(test_limited\.py::\S+)", "\n".join(l for l in result.outlines if "PASSED" in l))
    return sorted(n for n in found if f"::{test}[" in n and n.endswith(f"-{model}]"))


def test_limit_runs_the_same_seeded_subset_for_every_model(limited: pytest.Pytester) -> None:
    result = limited.runpytest("--model=fake:a", "--model=fake:b", "--evals-limit=3", "-v")
    result.assert_outcomes(passed=13)  # 3 rows and 3 numbers for each model, and the plain test
    result.stdout.fnmatch_lines(["*26 deselected*"])
    rows_a, rows_b = passed(result, "test_rows", "fake:a"), passed(result, "test_rows", "fake:b")
    assert len(rows_a) == 3 and [n.replace("fake:a", "fake:b") for n in rows_a] == rows_b
    result.stdout.fnmatch_lines(["evals-limit: a subset of cases (seed 0), cases run of cases in all: "
                                 "test_limited.py::test_numbers 3 of 7; test_limited.py::test_rows 3 of 12"])
    again = limited.runpytest_subprocess("--model=fake:a", "--model=fake:b", "--evals-limit=3", "-v", "-n", "2")
    again.assert_outcomes(passed=13)  # the workers choose alike (xdist refuses a run where they differ)
    assert passed(again, "test_rows", "fake:a") == rows_a
    other = limited.runpytest("--model=fake:a", "--evals-limit=3", "--evals-seed=5", "-v")
    rows_seed5 = passed(other, "test_rows", "fake:a")
    assert rows_seed5 != rows_a and len(rows_seed5) == 3


def test_a_bad_limit_is_a_usage_error(limited: pytest.Pytester) -> None:
    result = limited.runpytest("--model=fake:a", "--evals-limit=0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --evals-limit 0: must be a number of cases per benchmark (at least 1) "
                                 "or 'all'"])


def test_a_limit_marker_is_its_benchmarks_default_subset(limited: pytest.Pytester) -> None:
    """A test marked evals_limit(4) runs 4 seeded cases and says so; --evals-limit N on the command line
    sets every benchmark (marker included), --evals-limit all runs every case; ini evals_limit yields to it."""
    limited.makepyfile(test_limited=LIMITED.replace('@pytest.mark.parametrize("case"',
                                                    '@pytest.mark.evals_limit(4)\n@pytest.mark.parametrize("case"'))
    result = limited.runpytest("--model=fake:a", "-v")
    result.assert_outcomes(passed=4 + 7 + 1)
    assert len(passed(result, "test_rows", "fake:a")) == 4
    result.stdout.fnmatch_lines(["evals-limit: a subset of cases (seed 0), cases run of cases in all: "
                                 "test_limited.py::test_rows 4 of 12 (its evals_limit marker); "
                                 "--evals-limit all runs every case"])
    every = limited.runpytest("--model=fake:a", "--evals-limit", "all", "-v")
    every.assert_outcomes(passed=12 + 7 + 1)
    assert "evals-limit:" not in every.stdout.str()
    two = limited.runpytest("--model=fake:a", "--evals-limit=2", "-v")
    two.assert_outcomes(passed=2 + 2 + 1)
    limited.makeini("[pytest]\nevals_limit = 6\n")
    ini = limited.runpytest("--model=fake:a", "-v")
    ini.assert_outcomes(passed=4 + 6 + 1)  # the marker wins over the ini file's default


def test_a_bad_limit_marker_is_one_line(limited: pytest.Pytester) -> None:
    limited.makepyfile(test_limited=LIMITED.replace('@pytest.mark.parametrize("case"',
                                                    '@pytest.mark.evals_limit(0)\n@pytest.mark.parametrize("case"'))
    result = limited.runpytest("--model=fake:a")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: test_limited.py::test_rows: @pytest.mark.evals_limit takes a number of "
                                 "cases (at least 1), e.g. @pytest.mark.evals_limit(20)"])


# --- metrics --------------------------------------------------------------------------------------------------
def test_exact_match_and_f1_are_squads() -> None:
    assert metrics.normalize("The  Cat, sat!") == "cat sat"
    assert metrics.exact_match("The  Cat!", ["dog", "a cat"]) == 1.0
    assert metrics.exact_match("cats", "cat") == 0.0
    assert metrics.f1("The cat sat", "a cat sat down") == pytest.approx(0.8)  # P 2/2, R 2/3
    assert metrics.f1("cat cat dog", "cat dog dog") == pytest.approx(2 / 3)  # bag of tokens, counted
    assert metrics.f1("nothing shared", ["cat", "the sat cat"]) == 0.0
    assert metrics.f1("", "") == 1.0 and metrics.f1("", "cat") == 0.0  # SQuAD 2.0's rule for empty answers
    with pytest.raises(ValueError, match="at least one reference"):
        metrics.f1("x", [])


def test_rouge_l_is_the_f_measure_of_the_longest_common_subsequence() -> None:
    """By hand: P = LCS / prediction's words, R = LCS / reference's words, F = 2PR / (P + R). F is symmetric
    in P and R, so the order of prediction and reference cannot change it; P != R here, so a wrapper that
    returned precision or recall instead would."""
    require("rouge_score", "pip install rouge-score")
    # LCS "the cat was under the bed": P 6/7, R 6/6
    assert metrics.rouge_l("the cat was found under the bed", "the cat was under the bed") == pytest.approx(12 / 13)
    # LCS "quick brown jumps": P 3/5, R 3/6
    assert metrics.rouge_l("the quick brown fox jumps", "a quick brown dog jumps over") == pytest.approx(6 / 11)
    # lower-cased, punctuation dropped; LCS "the capital of france": P = R = 4/6
    assert metrics.rouge_l("Paris is the capital of France.", "The capital of France is Paris.") == pytest.approx(2 / 3)
    assert metrics.rouge_l("hello world", ["nothing", "world hello"]) == 0.5  # the best reference, not the first
    assert metrics.rouge_l("cats running", "cat run") == 0.0
    assert metrics.rouge_l("cats running", "cat run", stemmer=True) == 1.0  # Porter: cats -> cat, running -> run


def test_bleu_is_sacrebleus_sentence_bleu_of_the_prediction() -> None:
    """By hand: 100 x the brevity penalty x the geometric mean of the clipped n-gram precisions, n = 1..4
    (sacrebleu's defaults: 13a tokens, exp smoothing of an order with no match)."""
    require("sacrebleu", "pip install sacrebleu")
    # 6 words against 7: n-grams 6/6, 4/5, 3/4, 2/3; brevity penalty exp(1 - 7/6)
    short = 100 * math.exp(1 - 7 / 6) * (6 / 6 * 4 / 5 * 3 / 4 * 2 / 3) ** (1 / 4)
    assert metrics.bleu("the cat sat on the mat", "the cat sat on the red mat") == pytest.approx(short)  # 67.3
    # the other way round: 7 words against 6: 6/7, 4/6, 3/5, 2/4, no penalty (the order matters)
    long = 100 * (6 / 7 * 4 / 6 * 3 / 5 * 2 / 4) ** (1 / 4)
    assert metrics.bleu("the cat sat on the red mat", "the cat sat on the mat") == pytest.approx(long)  # 64.3
    assert math.isclose(metrics.bleu("the cat sat on the mat", "the cat sat on the mat"), 100.0)
    # two references: n-grams clipped by either, 6/6, 3/5, 1/4; no 4-gram matches: exp smoothing counts it as
    # 1/(2 x 3); the reference length is the closest (6, the first's): no penalty
    refs = ["the cat sat on the mat", "there is a cat on the mat"]
    both = 100 * (6 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** (1 / 4)
    assert metrics.bleu("the cat is on the mat", refs) == pytest.approx(both)  # 39.8


def test_a_suite_skipped_whole_is_named_with_its_reason(limited: pytest.Pytester) -> None:
    """A suite whose package is missing skips at import; the evals summary says which and why (pytest
    itself shows only an 's', and the reason with -rs)."""
    limited.makepyfile(test_needs_pkg="import pytest\npytest.skip('needs the nothere package (pip install nothere)', "
                       "allow_module_level=True)\n")
    for args in ([], ["-n", "2"]):
        result = limited.runpytest_subprocess("--model=fake:a", *args)
        result.stdout.fnmatch_lines(["skipped: test_needs_pkg.py: needs the nothere package (pip install nothere)"])
