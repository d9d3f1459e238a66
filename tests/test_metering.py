"""Prices, cost per call/case/run, the run-wide budget under xdist, and the per-model usage table."""

from __future__ import annotations

import pytest
from conftest import FAKE_BACKEND, rows

from pytest_evals.backends.base import ChatRequest, GenerateRequest
from pytest_evals.calls.ceiling import SPECIAL_TOKENS, prompt_bound, worst_case
from pytest_evals.calls.metering import Price, PriceTable, parse_price_line
from pytest_evals.report.usage import percentile


def test_price_lines_and_globs() -> None:
    table = PriceTable([parse_price_line("openai:* 1 2"), parse_price_line("openai:gpt-4o-mini 0.15 0.60"),
                        parse_price_line("vllm:* gpu_hour=2.50")])
    mini = table.find("openai:gpt-4o-mini@https://api.openai.com/v1", "openai:gpt-4o-mini")
    assert mini == Price("openai:gpt-4o-mini", 0.15, 0.60)  # the later, more specific line wins
    assert mini.cost(1_000_000, 2_000_000, 3.0) == pytest.approx(0.15 + 1.20)
    assert mini.cost(None, 10, 1.0) is None  # unknown tokens: unknown cost, never 0
    assert table.find("vllm:/m", "vllm:/m").cost(None, None, 36.0) == pytest.approx(0.025)
    assert table.find("hf:/m", "hf:/m") is None
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.5 and percentile([], 0.5) is None


@pytest.mark.parametrize("line", ["openai:*", "openai:* 1", "openai:* one two", "x -1 2", "x gpu_hour=abc"])
def test_bad_price_lines(fake_project: pytest.Pytester, line: str) -> None:
    fake_project.makeini(f"[pytest]\nevals_prices =\n    {line}\n")
    fake_project.makepyfile("def test_x(model):\n    pass\n")
    result = fake_project.runpytest("--model=fake:a")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: ini evals_prices '{line}': *"])


SUITE = """
import pytest

@pytest.mark.evals_threshold(0.0)
@pytest.mark.parametrize("i", range(20))
def test_cost(model, i):
    reply = model.generate(f"q{i}")
    assert reply.cost_usd == len(f"q{i}") + 3  # price: 1 USD per token in and out
"""


def priced(project: pytest.Pytester, extra: str = "") -> None:
    project.makeini("[pytest]\nevals_prices =\n    fake:* 1000000 1000000\n" + extra)
    project.makepyfile(test_cost=SUITE)


def test_cost_per_call_case_and_run_and_the_usage_table(fake_project: pytest.Pytester) -> None:
    priced(fake_project)
    result = fake_project.runpytest("--model=fake:a")
    result.assert_outcomes(passed=20)
    assert rows(fake_project, "SELECT sum(cost_usd) FROM calls") == [(sum(len(f"q{i}") + 3 for i in range(20)),)]
    assert rows(fake_project, "SELECT count(*) FROM cases WHERE cost_usd = length(input_text) + 3") == [(20,)]
    assert rows(fake_project, "SELECT cost_usd FROM runs") == [(110.0,)]
    assert rows(fake_project, "SELECT count(*) FROM calls WHERE gpu_peak_mib IS NULL") == [(20,)]  # no GPU
    result.stdout.fnmatch_lines([
        "model*cases*input tok*output tok*cost USD*latency p50*latency p95*TTFT p50*TPOT p50*output tok/s*peak GPU MiB",
        "*",
        "fake:a*20*50*60*110.0000*s*s*0.001s*-*-",
    ])


BUDGETED = """
import pytest

@pytest.mark.evals_threshold(0.0)
@pytest.mark.parametrize("i", range(40))
def test_cost(model, i):
    reply = model.generate(f"q{i}", max_tokens=3)
    assert reply.cost_usd == len(f"q{i}") + 3  # price: 1 USD per token in and out
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_the_budget_is_a_ceiling_with_windows_on(fake_project: pytest.Pytester, workers: list[str]) -> None:
    """Each call reserves its worst case before it is sent (its prompt's bound and max_tokens: $37 or $38
    here, for calls that cost $5 or $6), so the run never spends more than its budget; a call that does
    not fit waits while reservations held may free room, and is refused only when it would pass the
    budget with nothing reserved: the run spends all but less than one worst case."""
    fake_project.makeini("[pytest]\nevals_prices =\n    fake:* 1000000 1000000\n")
    fake_project.makepyfile(test_cost=BUDGETED)
    result = fake_project.runpytest_subprocess("--model=fake:a", *workers, "--evals-budget=100")
    (spent,) = rows(fake_project, "SELECT sum(cost_usd) FROM cases")[0]
    worst = worst_case(Price("fake:*", 1e6, 1e6), "generate", [GenerateRequest("q10", max_tokens=3)])
    assert worst == 3 + SPECIAL_TOKENS + 3
    assert 100 - worst < spent <= 100, spent
    refused = rows(fake_project, "SELECT count(*) FROM cases WHERE outcome = 'skipped' AND error LIKE "
                                 "'%not run: the evals budget would be passed by this call''s worst case%'")[0][0]
    assert refused >= 1 and rows(fake_project, "SELECT count(*) FROM calls WHERE cost_usd IS NULL") == [(0,)]
    assert rows(fake_project, "SELECT count(*) FROM cases WHERE outcome = 'passed'")[0][0] < 40
    result.stdout.fnmatch_lines(["*evals-budget: the budget of $100 stopped the run: $* spent on * tests; "
                                 "* tests not run (budget spent); calls reserved their worst case first (at most "
                                 "$* at once); * refused (the largest would have reserved $3?.0000)"])
    assert result.ret == pytest.ExitCode.INTERRUPTED
    # what the budget did not run, a resumed run runs (with a budget of its own)
    again = fake_project.runpytest_subprocess("--model=fake:a", *workers, "--evals-resume")
    assert again.ret == 0
    assert rows(fake_project, "SELECT count(*) FROM cases WHERE run_id = 2 AND outcome = 'passed'") == [(40,)]


def test_budget_needs_prices(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_cost=SUITE)
    result = fake_project.runpytest("--model=fake:a", "--evals-budget=5")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --evals-budget 5.0: no prices are set*evals_prices*"])


def test_a_plugin_can_supply_prices(fake_project: pytest.Pytester) -> None:
    fake_project.makeconftest(fake_project.path.joinpath("conftest.py").read_text() + """
def pytest_evals_prices(register):
    register("fake:*", input_per_m=1000000, output_per_m=1000000)
""")
    fake_project.makepyfile(test_cost=SUITE)
    fake_project.runpytest("--model=fake:a").assert_outcomes(passed=20)


def test_gpu_memory_is_none_without_a_gpu_never_zero() -> None:
    import importlib.util

    from pytest_evals.backends.gpu_memory import nvml_used_mib

    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            assert nvml_used_mib() > 0
            return
    assert nvml_used_mib() is None


@pytest.mark.slow
@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_the_budget_is_a_ceiling_against_the_real_server(pytester: pytest.Pytester, llama_server,
                                                         workers: list[str]) -> None:
    """The server's own token counts price each call, with windows on (the default); each call reserved
    its worst case first, so the run spends at most its budget, and all of it but less than one worst case."""
    pytester.makeini("[pytest]\nevals_prices =\n    openai:* 1000000 1000000\n")  # 1 USD per token
    pytester.makepyfile(
        test_served="""
        import pytest

        @pytest.mark.evals_threshold(0.0)
        @pytest.mark.parametrize("n", range(24))
        def test_count(model, n):
            reply = model.generate(f"Count from {n}: {n}, {n + 1},", max_tokens=6)
            assert reply.cost_usd == reply.prompt_tokens + reply.completion_tokens
        """
    )
    result = pytester.runpytest_subprocess(*workers, f"--model=openai:smollm2@{llama_server}", "--evals-budget=200")
    calls = rows(pytester, "SELECT input_text, input_tokens, output_tokens, cost_usd FROM calls")
    assert calls and all(c[3] is not None and c[3] == c[1] + c[2] for c in calls)
    # the server's count of each prompt is within the bound reserved for it
    assert all(c[1] <= prompt_bound("generate", GenerateRequest(c[0])) for c in calls)
    worst = max(worst_case(Price("*", 1e6, 1e6), "generate", [GenerateRequest(f"Count from {n}: {n}, {n + 1},", 6)])
                for n in range(24))
    spent = sum(c[3] for c in calls)
    assert 200 - worst < spent <= 200, (spent, worst)
    assert len(calls) < 24
    result.stdout.fnmatch_lines(["*evals-budget: the budget of $200 stopped the run*not run (budget spent); calls "
                                 "reserved their worst case first*refused*"])
    assert rows(pytester, "SELECT cost_usd FROM runs")[0][0] == pytest.approx(spent)


@pytest.mark.slow
def test_a_chat_the_server_cannot_count_is_priced_from_an_estimate_and_the_budget_holds(
        pytester: pytest.Pytester, llama_server) -> None:
    """llama-cpp-python's server sends no usage and cannot count a chat's prompt: the prompt is counted
    with its tokenizer on the messages' text plus the template's tokens, marked estimated, and the budget
    counts it (before, such calls cost NULL and the run reported $0.0000 spent)."""
    pytester.makeini("[pytest]\nevals_prices =\n    openai:* 2000 2000\n")  # $2,000 per million tokens
    pytester.makepyfile(test_chat="""
        import pytest

        @pytest.mark.evals_threshold(0.0)
        @pytest.mark.parametrize("n", range(21))
        def test_chat(model, n):
            assert model.chat(f"Say the number {n} in words.", max_tokens=8).text
        """)
    result = pytester.runpytest_subprocess(f"--model=openai:smollm2@{llama_server}", "--evals-budget=0.5",
                                           "--evals-concurrency=2")
    assert rows(pytester, "SELECT count(*) FROM calls WHERE error IS NOT NULL") == [(0,)]  # refused: never sent
    calls = rows(pytester, "SELECT input_tokens, input_tokens_estimated, output_tokens, cost_usd, cost_basis FROM calls")
    assert calls and all(c[1] == 1 and c[4] == "estimated" and c[0] > 5 for c in calls)
    assert all(c[3] == pytest.approx((c[0] + c[2]) * 2000 / 1e6) for c in calls)
    spent = sum(c[3] for c in calls)
    price = Price("*", 2000, 2000)
    worst = max(worst_case(price, "chat", [ChatRequest(({"role": "user", "content": f"Say the number {n} in words."},),
                                                       max_tokens=8)]) for n in range(21))
    assert len(calls) < 21 and 0.5 - worst < spent <= 0.5  # the budget stopped the run, within it
    result.stdout.fnmatch_lines([f"openai:smollm2 *~{spent:.4f} *",
                                 f"cost: {len(calls)} calls priced from estimated prompt tokens*",
                                 f"*evals-budget: the budget of $0.5 stopped the run: ${spent:.4f} spent on * tests; "
                                 f"* tests not run (budget spent); {len(calls)} calls priced from estimated prompt "
                                 "tokens; calls reserved their worst case first*"])
    assert "$0.0000" not in result.stdout.str()
    # the estimate is close to the server's own count of the same chat, which it reports unstreamed
    import httpx

    (nodeid, estimate), = rows(pytester, "SELECT nodeid, input_tokens FROM calls JOIN cases ON cases.id = calls.case_id "
                                         "ORDER BY calls.id LIMIT 1")
    n = nodeid.split("[")[1].split("-")[0]  # (a case that ran: the budget skipped others)
    true = httpx.post(f"{llama_server}/chat/completions", timeout=60, json={
        "model": "smollm2", "messages": [{"role": "user", "content": f"Say the number {n} in words."}], "max_tokens": 1,
    }).json()["usage"]["prompt_tokens"]
    assert abs(estimate - true) <= 2, (estimate, true)
    assert true <= prompt_bound("chat", ChatRequest(({"role": "user", "content": f"Say the number {n} in words."},)))


def test_calls_whose_cost_is_unknown_are_never_shown_as_free(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FAKE_BACKEND.replace(
        'replies.append(Reply(text=f"{self.spec.target}:{r.prompt.upper()}", prompt_tokens=len(r.prompt),',
        'replies.append(Reply(text=f"{self.spec.target}:{r.prompt.upper()}", prompt_tokens=None,'))
    pytester.makeini("[pytest]\nevals_prices =\n    fake:* 1 1\n")
    pytester.makepyfile(test_x="""
        import pytest

        @pytest.mark.parametrize("i", range(3))
        def test_x(model, i):
            assert model.generate(f"q{i}").cost_usd is None
        """)
    result = pytester.runpytest("--model=fake:m", "--evals-budget=1")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["cost: 3 calls of priced models have no cost (the tokens their price needs are "
                                 "unknown)", "evals-budget: an unknown amount of $1 spent; 3 calls of priced models "
                                 "with no cost (their token counts are unknown); calls reserved their worst case first*"])
    assert "$0.0000" not in result.stdout.str()
    assert rows(pytester, "SELECT cost_basis, count(*) FROM calls GROUP BY 1") == [("unknown", 3)]


def test_output_tokens_per_second_count_the_time_spent_generating_once() -> None:
    """A batch's calls ran together: its time counts once, not once per call (a batch of 32 read as 1/32 of
    its rate), and calls that generate nothing (a loglikelihood) do not dilute it."""
    from pytest_evals.report.usage import Usage
    from pytest_evals.store.rows import CallRow

    def call(kind: str, at: str, latency: float, tokens: int) -> CallRow:
        return CallRow(kind=kind, model="m", started_at=f"2026-12-02T12:00:{at}+00:00", latency_s=latency,
                       output_tokens=tokens)

    usage = Usage()
    batch = [call("generate", "00.000", 2.0, 10) for _ in range(4)]  # four calls served together for 2 s
    usage.add("m", [*batch, call("generate", "01.000", 2.0, 10),  # overlaps the batch's last second
                    call("loglikelihood", "10.000", 5.0, 0), call("chat", "20.000", 1.0, 6)])
    (row,) = usage.rows()
    assert row[Usage.HEADER.index("output tok/s")] == f"{(40 + 10 + 6) / (3.0 + 1.0):.1f}"  # 14.0
