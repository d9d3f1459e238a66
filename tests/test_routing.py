"""Capabilities, evals_task routing, the judge fixture (plugin logic, fake backends)."""

from __future__ import annotations

import pytest
from conftest import FAKE_BACKEND, require_hf, rows

NO_LOGLIKELIHOOD = FAKE_BACKEND.replace('''def pytest_evals_register_backends(register):
    register("fake", FakeBackend)''', '''class ChatOnly(FakeBackend):
    capabilities = frozenset({"generate", "chat"})


def pytest_evals_register_backends(register):
    register("fake", FakeBackend)
    register("chatonly", ChatOnly)''')

SUITE = '''
import pytest

@pytest.mark.evals_task("loglikelihood")
def test_choice(model):
    assert model.choose("q", ["aa", "b"]) == 1

def test_unmarked(model):
    assert model.choose("q", ["aa", "b"]) == 1

def test_generate(model):
    assert model.generate("x").text
'''


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(NO_LOGLIKELIHOOD)
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def test_a_task_the_model_cannot_serve_is_skipped_with_the_fix(project: pytest.Pytester) -> None:
    result = project.runpytest("--model=chatonly:m", "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=1, errors=1)
    assert ("SKIPPED [1] test_suite.py:3: chatonly:m cannot serve loglikelihood (it serves chat, generate); send such "
            "cases elsewhere with --evals-route loglikelihood=SPEC (e.g. hf:ORG/NAME or vllm:ORG/NAME)\n"
            in result.stdout.str())
    # an unmarked case that calls what its backend lacks ends in error with the same reason
    result.stdout.fnmatch_lines(["*UnsupportedTask: chatonly:m cannot serve loglikelihood*and mark them "
                                 "@pytest.mark.evals_task('loglikelihood')"])
    assert rows(project, "SELECT outcome FROM cases WHERE nodeid LIKE '%test_unmarked%'") == [("error",)]


def test_a_route_serves_the_marked_cases_and_the_rows_say_which_spec_did(project: pytest.Pytester) -> None:
    result = project.runpytest("--model=chatonly:m", "--evals-route", "loglikelihood=fake:big", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines([
        "evals: models chatonly:m (chat, generate); database *",
        "evals: routes loglikelihood -> fake:big (chat, generate, loglikelihood, tools)",
    ])
    served = dict(rows(project, "SELECT substr(nodeid, 16, 12), served_by FROM cases"))
    assert served == {"test_choice[": "fake:big", "test_generat": "chatonly:m", "test_unmarke": None}
    assert ("fake:big", "model", "fake:big") in rows(project, "SELECT model, role, spec FROM calls")
    # the case stays the parametrized model's case
    assert rows(project, "SELECT model FROM cases WHERE nodeid LIKE '%test_choice%'") == [("chatonly:m",)]


@pytest.mark.parametrize("args, message", [
    (["--evals-route", "logprobs=fake:x"], "--evals-route 'logprobs=fake:x': expected TASK=SPEC with TASK one of "
                                           "generate, chat, loglikelihood, tools, e.g. loglikelihood=hf:/models/smol"),
    (["--evals-route", "loglikelihood=chatonly:x"], "--evals-route 'loglikelihood=chatonly:x': chatonly:x cannot "
                                                    "serve loglikelihood either (it serves chat, generate)"),
    (["--evals-route", "chat=nope:x"], "--evals-route 'chat=nope:x': *"),
    (["--evals-judge", "nope:x"], "--evals-judge: *"),
])
def test_bad_routes_and_judges_are_one_line_at_start_up(project: pytest.Pytester, args, message) -> None:
    result = project.runpytest("--model=chatonly:m", *args, "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


def test_a_bad_task_marker_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FAKE_BACKEND)
    pytester.makepyfile(test_t='''
        import pytest

        @pytest.mark.evals_task("logprobs")
        def test_x(model):
            pass
    ''')
    result = pytester.runpytest("--model=fake:m", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: test_t.py::test_x: @pytest.mark.evals_task takes one of 'generate', "
                                 "'chat', 'loglikelihood', 'tools', got 'logprobs'"])


def test_markers_are_documented(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.evals_task(task): what the case needs: generate, chat, loglikelihood, tools.*",
                                 "@pytest.mark.evals_judge(spec): the model behind this case's judge fixture*"])


JUDGED = '''
import pytest

@pytest.mark.evals_judge("fake:strict")
def test_marked(model, judge):
    answer = model.generate("paris").text
    verdict = judge.chat(f"grade: {answer}").text
    assert verdict

def test_default(model, judge):
    assert judge.chat("abc").text == "cba"
'''


def test_the_judge_is_routed_recorded_and_priced_on_its_own(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FAKE_BACKEND)
    pytester.makepyfile(test_j=JUDGED)
    pytester.makeini('''
        [pytest]
        evals_judge = fake:lenient
        evals_prices =
            fake:m 1000 1000
            fake:strict 5000000 0
    ''')
    result = pytester.runpytest("--model=fake:m", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["evals: judge fake:lenient (*)", "fake:strict (judge) *", "fake:lenient (judge) *"])
    calls = rows(pytester, "SELECT c.nodeid, k.model, k.role, k.cost_usd FROM calls k JOIN cases c ON c.id = k.case_id "
                           "ORDER BY k.id")
    marked = [(model, role, cost) for nodeid, model, role, cost in calls if "test_marked" in nodeid]
    assert marked[0][:2] == ("fake:m", "model") and marked[1] == ("fake:strict", "judge", 5.0)  # 1 token at $5/token
    assert [(m, r) for n, m, r, _ in calls if "test_default" in n] == [("fake:lenient", "judge")]


def test_without_a_judge_spec_the_fixture_says_how_to_name_one(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FAKE_BACKEND)
    pytester.makepyfile(test_j='''
        def test_x(model, judge):
            pass
    ''')
    result = pytester.runpytest("--model=fake:m", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*the judge fixture needs a model: mark the test @pytest.mark.evals_judge('SPEC') "
                                 "or pass --evals-judge SPEC (ini evals_judge)"])


def test_a_server_without_prompt_logprobs_routes_choices_to_the_embedded_default(pytester: pytest.Pytester,
                                                                                 llama_server) -> None:
    """llama.cpp's echoed logprobs are misaligned, so its spec does not serve loglikelihood: the marked
    case goes to the route (the embedded default through transformers), the rest stay on the server."""
    require_hf()
    pytester.makepyfile(test_mixed='''
        import pytest

        @pytest.mark.evals_task("loglikelihood")
        def test_choice(model):
            assert model.choose("The capital of France is", [" Paris", " Berlin"]) == 0

        def test_generate(model):
            assert model.generate("The capital of France is", max_tokens=4).text
    ''')
    result = pytester.runpytest_subprocess(f"--model=openai:smollm2@{llama_server}", "--evals-route",
                                           "loglikelihood=smollm2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"evals: models openai:smollm2@{llama_server} (chat, generate, streaming, tools)*",
                                 "evals: routes loglikelihood -> smollm2 (chat, generate, loglikelihood, tools)"])
    served = dict(rows(pytester, "SELECT substr(nodeid, 16, 11), served_by FROM cases"))
    assert served == {"test_choice": "smollm2", "test_genera": f"openai:smollm2@{llama_server}"}
