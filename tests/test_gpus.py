"""GPU discovery and pinning of xdist workers (the count is stubbed: this machine has no GPU; the
gpu-marked check in benchmarks/gpu_check.py runs the real thing)."""

from __future__ import annotations

import pytest
from conftest import FAKE_BACKEND, rows

from pytest_evals.session.gpus import plan, visible_gpus, worker_index


def test_visible_gpus_respect_an_outer_cuda_visible_devices() -> None:
    assert visible_gpus(4, None) == ["0", "1", "2", "3"]
    assert visible_gpus(4, "2,3") == ["2", "3"]
    assert visible_gpus(4, "1,7,2") == ["1"]  # CUDA stops at the first ordinal that does not exist
    assert visible_gpus(2, "GPU-3f2a,GPU-77aa") == ["GPU-3f2a", "GPU-77aa"]
    assert visible_gpus(4, "") == [] and visible_gpus(4, "-1") == []


def test_plans_cut_groups_and_say_what_they_did() -> None:
    four = plan(2, 2, count=4)
    assert four.groups == (("0", "1"), ("2", "3"))
    assert [four.for_worker(i) for i in range(3)] == ["0,1", "2,3", "0,1"]
    assert four.note == "evals-gpus: 4 GPU(s) visible, 2 group(s) of 2: [0,1] [2,3]; one per worker (2 workers)"
    assert plan(1, 3, count=2).note.endswith("; 3 workers share them round-robin")
    assert plan(2, 1, count=3).note.endswith("; 1 left unused")
    assert plan(1, None, count=1).note.endswith("; this process uses the first")
    assert plan(1, 2, count=2, outer="1").groups == (("1",),)
    none = plan(1, 2, count=0, problem="NVML: Driver Not Loaded")
    assert none.groups == () and none.for_worker(0) is None
    assert none.note == "evals-gpus: workers are not pinned to GPUs (NVML: Driver Not Loaded)"
    assert plan(4, 2, count=2).note == ("evals-gpus: workers are not pinned: 2 GPU(s) visible, fewer than "
                                        "--evals-gpus-per-worker 4")
    assert worker_index("gw11") == 11


FOUR_GPUS = FAKE_BACKEND + '''
import pytest_evals.session.gpus

pytest_evals.session.gpus.count_gpus = lambda: (4, None)  # as if the driver saw four GPUs
'''

PINNED = '''
import os

import pytest

@pytest.mark.parametrize("i", range(8))
def test_case(model, i):
    assert os.environ["CUDA_VISIBLE_DEVICES"] in ("0,1", "2,3")
    assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert model.generate("x").text
'''


@pytest.fixture
def gpu_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID",
                 "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"):
        monkeypatch.delenv(name, raising=False)
    pytester.makeconftest(FOUR_GPUS)
    pytester.makepyfile(test_pinned=PINNED)
    return pytester


def test_each_worker_gets_its_own_gpus_and_the_cases_record_them(gpu_project: pytest.Pytester) -> None:
    result = gpu_project.runpytest_subprocess("-n", "2", "--evals-gpus-per-worker", "2", "--model=fake:m",
                                              "-p", "no:cacheprovider")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["evals-gpus: 4 GPU(s) visible, 2 group(s) of 2: ?0,1? ?2,3?; one per worker (2 workers)"])
    pinned = set(rows(gpu_project, "SELECT worker, gpus FROM cases"))
    assert pinned == {("gw0", "0,1"), ("gw1", "2,3")}


SIX_GPUS = FAKE_BACKEND + '''
import pytest_evals.session.gpus

pytest_evals.session.gpus.count_gpus = lambda: (6, None)  # three groups of 2
'''


@pytest.mark.parametrize("xdist_env", [None, "5"], ids=["cpu-count", "env-var"])
def test_n_auto_starts_one_worker_per_gpu_group(gpu_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                xdist_env: str | None) -> None:
    """Three groups: xdist's own answer would differ (this machine's 2 CPUs; 5 from its env var)."""
    if xdist_env is None:
        monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    else:
        monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", xdist_env)
    gpu_project.makeconftest(SIX_GPUS)
    gpu_project.makepyfile(test_pinned=PINNED.replace('("0,1", "2,3")', '("0,1", "2,3", "4,5")'))
    result = gpu_project.runpytest_subprocess("-n", "auto", "--evals-gpus-per-worker", "2", "--model=fake:m",
                                              "-p", "no:cacheprovider")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["evals-gpus: 6 GPU(s) visible, 3 group(s) of 2: ?0,1? ?2,3? ?4,5?; "
                                 "one per worker (3 workers)", "3 workers ?8 items?"])
    pinned = set(rows(gpu_project, "SELECT worker, gpus FROM cases"))  # xdist hands each worker 2 first
    assert pinned == {("gw0", "0,1"), ("gw1", "2,3"), ("gw2", "4,5")}


def test_without_gpus_nothing_is_pinned_and_the_header_says_why(pytester: pytest.Pytester,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    pytester.makeconftest(FAKE_BACKEND + '''
import pytest_evals.session.gpus

pytest_evals.session.gpus.count_gpus = lambda: (0, "NVML: NVML Shared Library Not Found")
''')
    pytester.makepyfile(test_t='''
        import os

        def test_x(model):
            assert "CUDA_VISIBLE_DEVICES" not in os.environ
    ''')
    result = pytester.runpytest_subprocess("--evals-gpus-per-worker", "1", "--model=fake:m", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["evals-gpus: workers are not pinned to GPUs (NVML: NVML Shared Library Not Found)"])
    assert rows(pytester, "SELECT gpus FROM cases") == [(None,)]


def test_a_lone_process_pins_itself_to_the_first_group(gpu_project: pytest.Pytester) -> None:
    gpu_project.makepyfile(test_pinned='''
        import os

        def test_x(model):
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    ''')
    result = gpu_project.runpytest_subprocess("--evals-gpus-per-worker", "2", "--model=fake:m", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert rows(gpu_project, "SELECT worker, gpus FROM cases") == [(None, "0,1")]
