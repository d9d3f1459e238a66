"""load_jsonl: data beside the suite; bad files are one clear message."""

import pytest

from pytest_evals import load_jsonl


def test_reads_the_file_beside_the_module(tmp_path) -> None:
    (tmp_path / "cases.jsonl").write_text('{"id": "a", "q": 1}\n\n{"id": "b", "q": 2}\n')
    assert load_jsonl(tmp_path / "test_x.py", "cases.jsonl") == [{"id": "a", "q": 1}, {"id": "b", "q": 2}]
    assert load_jsonl(tmp_path / "cases.jsonl") == [{"id": "a", "q": 1}, {"id": "b", "q": 2}]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, r"cases.jsonl: cannot read the data file \(No such file or directory\)"),
        ('{"id": "a"}\n{"id": \n', r"cases.jsonl:2: not valid JSON"),
        ('{"id": "a"}\n[1, 2]\n', r"cases.jsonl:2: each line must be a JSON object"),
        ("\n\n", r"cases.jsonl: no cases"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, content, message) -> None:
    if content is not None:
        (tmp_path / "cases.jsonl").write_text(content)
    with pytest.raises(ValueError, match=message):
        load_jsonl(tmp_path / "cases.jsonl")
