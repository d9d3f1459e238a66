"""`import pytest_evals` and `pytest --help` import nothing heavy."""

import json
import subprocess
import sys

HEAVY = ["torch", "transformers", "vllm", "pynvml", "llama_cpp", "sqlite_utils", "pandas", "numpy"]


def loaded_after(code: str, cwd: str | None = None) -> list[str]:
    probe = code + f"\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=cwd)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_is_light() -> None:
    assert loaded_after("import pytest_evals, pytest_evals.plugin, pytest_evals.backends.hf, "
                        "pytest_evals.backends.vllm, pytest_evals.backends.openai") == []


def test_pytest_help_is_light(tmp_path) -> None:
    # in a project of its own: this repository's tests/conftest.py imports torch on purpose
    code = ("import io, contextlib, pytest\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    pytest.main(['--help'])")
    assert loaded_after(code, cwd=str(tmp_path)) == []


def test_the_store_opens_without_pandas_or_numpy(tmp_path) -> None:
    # sqlite-utils imports both when installed; the store never needs them, and they cost start-up
    code = f"from pytest_evals.store.database import Store\nStore({str(tmp_path / 'evals.sqlite')!r}).close()"
    assert loaded_after(code) == ["sqlite_utils"]
    # both stay importable afterwards
    code += "\nimport numpy, pandas"
    assert set(loaded_after(code)) == {"sqlite_utils", "numpy", "pandas"}
