"""The HTML reports (`pytest-evals report RUN [CAND] --html FILE`) on runs stored by real pytest sessions:
their structure, and how they look in a real Chromium."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import missing

from pytest_evals.report.html.cases import case_label
from pytest_evals.report.html.page import short_names

# Two benchmarks of plain answers (one with a long name), one with a tool conversation, one that errors
# and one that skips. EVALS_WRONG lists MODEL/CASE pairs that answer wrong.
SUITE = """
import os
import pytest

WRONG = set(os.environ.get("EVALS_WRONG", "").split(","))

def add(a: int, b: int) -> int:
    \"\"\"Add two numbers.\"\"\"
    return a + b

@pytest.mark.evals_threshold(0.5)
@pytest.mark.parametrize("i", range(8), ids=lambda i: f"c{i}")
def test_bench(model, evals_score, i):
    model.generate(f"question {i} <b>bold</b>")
    wrong = f"{model.spec}/c{i}" in WRONG
    evals_score(f1=0.1 if wrong else 0.8)
    assert not wrong, "wrong <answer> & more"

@pytest.mark.parametrize("i", range(3), ids=lambda i: f"q{i}")
def test_a_benchmark_whose_name_is_long_enough_to_need_cutting_in_charts(model, i):
    reply = model.generate("long question " + "word " * 40 + f"number {i}")
    assert f"{model.spec}/q{i}" not in WRONG

def test_tools(model):
    conversation = model.conversation(tools=[add])
    reply = conversation.say('call add {"a": 2, "b": 3}')
    assert reply.text == "the answer is 5"

@pytest.mark.evals_retry(attempts=1)
def test_server_fault(model):
    model.generate("boom")

def test_not_applicable(model):
    pytest.skip("not for this model")
"""
MODELS = ("--model=fake:a", "--model=fake:b")


@pytest.fixture
def project(fake_project: pytest.Pytester, monkeypatch) -> pytest.Pytester:
    """Run 1: model a misses c7, model b misses c0-c3 and q1. Run 2: model a misses c0-c5 and q0."""
    fake_project.makepyfile(test_suite=SUITE)
    monkeypatch.setenv("EVALS_WRONG", "fake:a/c7,fake:b/c0,fake:b/c1,fake:b/c2,fake:b/c3,fake:b/q1")
    fake_project.runpytest(*MODELS)
    monkeypatch.setenv("EVALS_WRONG", ",".join([f"fake:a/c{i}" for i in range(6)] + ["fake:a/q0", "fake:b/q1"]))
    fake_project.runpytest(*MODELS)
    return fake_project


def cli(pytester: pytest.Pytester, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest_evals.cli", *args], cwd=pytester.path,
                          capture_output=True, text=True, timeout=120)


def write_page(pytester: pytest.Pytester, *runs: str, name: str = "report.html") -> str:
    out = cli(pytester, "report", *runs, "--html", name)
    assert out.returncode == 0, out.stderr
    return (pytester.path / name).read_text()


def assert_self_contained(page: str) -> None:
    # no external resource: no script, no stylesheet link, no src/href anywhere
    assert "<script" not in page and not re.search(r"\b(src|href)=", page)
    assert re.findall(r"https?://[^\"' ]+", page) == ["http://www.w3.org/2000/svg"] * page.count("<svg")


def section(page: str, name: str) -> str:
    start = page.index(f'<section class="{name}">')
    return page[start:page.index("</section>", start)]


def test_case_label_drops_the_model_id_and_short_names_stay_unique() -> None:
    assert case_label({"nodeid": "t.py::test_x[c3-fake:a]", "model": "fake:a"}) == "c3"
    assert case_label({"nodeid": "t.py::test_x[fake:a-c3-fake:a]", "model": "fake:a"}) == "fake:a-c3"
    assert case_label({"nodeid": "t.py::test_x[fake:a]", "model": "fake:a"}) == "test_x"
    assert case_label({"nodeid": "t.py::test_x[c1-m-s2]", "repeat_of": "t.py::test_x[c1-m]", "model": "m"}) == "c1"
    assert short_names(["a/t.py::test_x", "b/t.py::test_x", "a/t.py::test_y"]) == {
        "a/t.py::test_x": "a/t.py::test_x", "b/t.py::test_x": "b/t.py::test_x", "a/t.py::test_y": "test_y"}


def test_run_page_has_every_case_filters_matrix_and_compact_charts(project: pytest.Pytester) -> None:
    page = write_page(project, "1")
    assert_self_contained(page)
    # every case of both models: 8 + 3 + 1 + 1 + 1 per model, each a <tbody> classed for the filters
    cases = section(page, "cases")
    assert cases.count('<tbody class="case ') == 28
    outcome = {o: len(re.findall(rf'<tbody class="case o-{o} ', cases)) for o in ("passed", "failed", "error", "skipped")}
    assert outcome == {"passed": 18, "failed": 6, "error": 2, "skipped": 2}
    assert len(re.findall(r'<tbody class="case o-\w+ b-0 m-1"', cases)) == 8  # test_bench on fake:b
    # the filters: one radio group per outcome, benchmark and model, and the CSS that hides the others
    for group, values in (("fo", ["all", "o-passed", "o-failed", "o-error", "o-skipped"]),
                          ("fb", ["all"] + [f"b-{i}" for i in range(5)]), ("fm", ["all", "m-0", "m-1"])):
        assert re.findall(rf'<input type="radio" class="f" name="{group}" id="{group}-([\w-]+)"', cases) == values
    assert "#fo-o-failed:checked~.rows tbody:not(.o-failed){display:none}" in page
    assert "#fb-b-4:checked~.rows tbody:not(.b-4){display:none}" in page
    assert '<label for="fo-o-failed" title="wrong">wrong (6)</label>' in cases  # as the terminal labels it
    assert '" of 28 cases shown"' in page  # the CSS counter of shown cases
    # texts are escaped, long ones collapsed, the error kept
    assert "question 0 &lt;b&gt;bold&lt;/b&gt;" in cases and "<b>bold</b>" not in page
    assert "wrong &lt;answer&gt; &amp; more" in cases and "server went away" in cases
    assert cases.count("<details><summary>long question word word") == 6
    # the tool conversation: a transcript per model with the call, its arguments and its result
    assert cases.count('<tr class="transcript">') == 2
    assert cases.count("conversation: 3 messages, 1 tool call</summary>") == 2
    assert cases.count("→ tool <b>add</b>") == 2
    assert cases.count("arguments <code>{&quot;a&quot;: 2, &quot;b&quot;: 3}</code> result <code>5</code>") == 2
    assert cases.count('<span class="role">assistant</span><pre>the answer is 5</pre>') == 2
    # the matrix: a row per case without its model id, a column per model, coloured outcomes
    matrix = section(page, "matrix")
    assert matrix.count("<tr class=") == 14 and matrix.count('<tr class="differ">') == 6  # c0-c3, c7, q1
    assert re.search(r'<tr class="differ"><td class="name" title="test_suite.py::test_bench">test_bench</td><td>c7</td>'
                     r'<td class="o-failed" title="a:QUESTION 7 &lt;B&gt;BOLD&lt;/B&gt;">.*?</td>'
                     r'<td class="o-passed"', matrix)
    assert '<td>test_tools</td><td class="o-passed"' in matrix  # one row for both models' test_tools[MODEL]
    assert matrix.count('<td class="o-error"') == 2 and matrix.count('<td class="o-skipped"') == 2
    assert '<input type="checkbox" class="f" id="mx-differ">' in matrix
    assert "#mx-differ:checked~table tr.same{display:none}" in page
    assert re.findall(r">(\d+ / \d+) passed</td>", matrix) == ["11 / 14", "7 / 14"]
    # compact charts: per metric one chart, 20 px per benchmark and model with a score (f1 only where
    # evals_score recorded it; the errored and skipped benchmarks have no pass rate)
    charts = re.findall(r'<svg class="bars" data-metric="([^"]+)" width="\d+" height="(\d+)"', page)
    assert charts == [("pass_rate", str(26 + 20 * 6)), ("f1", str(26 + 20 * 2))]
    bars = page[page.index('<svg class="bars"'):page.index("</svg>", page.index('data-metric="f1"'))]
    assert bars.count('class="bar"') == 8 and bars.count('class="interval"') == 8
    assert bars.count('class="threshold"') == 6  # 50% on test_bench, the default 100% on the others
    assert ">test_a_benchmark…utting_in_charts</text>" in bars  # cut in the middle to fit; in full in <title>
    assert "<title>test_suite.py::test_a_benchmark_whose_name_is_long_enough_to_need_cutting_in_charts [fake:a]" in bars
    assert page.count('class="histogram"') == 2
    # the table's strength column: 7 of 8 clears 50% with one wrong answer to spare; the default gate has none
    table = page[page.index("<th>strength</th>"):]
    assert re.search(r"<td>test_suite.py::test_bench</td><td>fake:a</td><td>pass rate</td><td class='num'>8</td>"
                     r".*?<td class='pass'>PASS</td><td>interval clears it by 1 case</td></tr>", table)
    assert table.count("<td>interval") == 2 and table.count("<td></td></tr>") == len(re.findall("<tr><td>", table)) - 2


def test_comparison_page_has_changes_with_intervals_and_flips_side_by_side(project: pytest.Pytester) -> None:
    out = cli(project, "report", "1", "latest", "--html", "compare.html")
    assert out.returncode == 0 and out.stdout.strip() == "wrote compare.html (run 2 against run 1)"
    page = (project.path / "compare.html").read_text()
    assert_self_contained(page)
    # a chart per metric with a row per benchmark and model: both scores, the change and its interval
    assert re.findall(r'<svg class="comparison" data-metric="(\w+)"', page) == ["pass_rate", "f1"]
    assert page.count('<g class="diff"') == 8  # the errored and skipped benchmarks have nothing to compare
    assert page.count('<g class="diff" data-verdict="worse"') == 1 and page.count('data-verdict="better"') == 1
    # fake:a's f1 on test_bench: 0.7125 -> 0.275 (c0-c5 -0.7, c7 +0.7); significantly worse (paired bootstrap)
    assert re.search(r"<td>test_suite.py::test_bench</td><td>fake:a</td><td>f1</td><td class='num'>8</td>"
                     r"<td class='num'>0.71\d \[[^]]+\]</td><td class='num'>0.275 \[[^]]+\]</td>"
                     r"<td class='num'>-0.43\d \[-0.\d+, -0.\d+\]</td><td>interval excludes 0</td>"
                     r"<td class='fail'>WORSE</td>", page)
    # its pass rate: 6 now fail, 1 now pass; McNemar p = 0.125, not significant
    assert re.search(r"<td>pass rate</td><td class='num'>8</td><td class='num'>87.5% \[52.9%, 97.8%\]</td>"
                     r"<td class='num'>25.0% \[7.1%, 59.1%\]</td><td class='num'>-62.5% \[[^]]+\]</td>"
                     r"<td>McNemar p=0.125; 80% power for a drop of 83.8 points</td><td class=''>-</td>", page)
    # flips: fake:a c0-c5 and q0 now fail, c7 now passes; fake:b c0-c3 now pass
    assert page.count('<tr class="flip to-fail">') == 7 and page.count('<tr class="flip to-pass">') == 5
    flip = re.search(r'<tr class="flip to-fail"><td title="test_suite.py::test_bench\[c0-fake:a\]">c0<br>.*?</tr>', page,
                     re.S)
    assert flip is not None
    assert 'passed → failed' in flip.group() and "question 0 &lt;b&gt;bold&lt;/b&gt;" in flip.group()
    assert re.search(r'<td class="side o-passed"><span class="outcome">passed</span><pre>a:QUESTION 0 &lt;B&gt;', flip.group())
    assert re.search(r'<td class="side o-failed"><span class="outcome">failed</span><pre>a:QUESTION 0.*'
                     r"wrong &lt;answer&gt; &amp; more", flip.group())


def test_one_model_has_no_matrix_and_repeated_samples_share_a_matrix_cell(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_rep="""
import pytest

@pytest.mark.parametrize("i", [1, 2], ids=lambda i: f"c{i}")
def test_rep(model, evals_sample, i):
    model.generate(f"q{i}")
    assert model.spec == "fake:b" or evals_sample.index == 0 or i == 2
""")
    fake_project.runpytest("--model=fake:a")
    one = write_page(fake_project, "1")
    assert '<section class="matrix">' not in one and 'name="fm"' not in one
    assert one.count('<tbody class="case ') == 2 and 'name="fo"' in one and 'name="fb"' in one
    fake_project.runpytest("--model=fake:a", "--model=fake:b", "--evals-repeat=2", "--evals-repeat-greedy")
    matrix = section(write_page(fake_project, "2"), "matrix")
    # a row per case (its samples together), a cell per model saying how many samples passed
    assert matrix.count("<tr class=") == 2
    assert re.search(r'<tr class="differ"><td class="name"[^>]*>test_rep</td><td>c1</td><td class="o-mixed" '
                     r'title="[^"]*"><details><summary>1/2 passed</summary>.*?</td><td class="o-passed" '
                     r'title="[^"]*"><details><summary>2/2 passed</summary>', matrix, re.S)
    assert "sample 1 (passed): a:Q1\nsample 2 (wrong): a:Q1" in matrix
    assert '<tr class="same"><td class="name" title="test_rep.py::test_rep">test_rep</td><td>c2</td>' in matrix


@pytest.mark.parametrize("args, message", [
    (["1", "2", "3"], "pytest-evals: report takes one run, or two to compare (BASE CAND), not 3: 1 2 3"),
    (["1", "9"], "pytest-evals: no run 9 in .evals/evals.sqlite; `pytest-evals runs` lists them"),
])
def test_report_rejects_bad_runs_in_one_line(fake_project: pytest.Pytester, args: list[str], message: str) -> None:
    fake_project.makepyfile(test_one="def test_one(model):\n    model.generate('x')\n")
    fake_project.runpytest("--model=fake:a")
    out = cli(fake_project, "report", *args, "--html", "x.html")
    assert out.returncode == 2 and out.stderr.strip() == message
    assert not (fake_project.path / "x.html").exists()


FEW_SHOT_AND_CHOICE = """
import pytest

SHOTS = "Q: What animal says meow?\\nA: cat\\n\\nQ: What color is the sky?\\nA: blue\\n\\n"
QUESTIONS = [("France", " Paris"), ("Japan", " Tokyo"), ("Italy", " Rome")]


@pytest.mark.evals_threshold(0.0)
@pytest.mark.parametrize("country,capital", QUESTIONS)
def test_few_shot(model, country, capital):
    assert model.generate(f"{SHOTS}Q: What is the capital of {country}?\\nA:").text == capital


@pytest.mark.evals_threshold(0.0)
@pytest.mark.parametrize("right", [0, 1])
def test_choice(model, right):
    choices = [" Paris", " Rome and more"]
    assert model.choose("Capital of France?", choices, answer=right) == right


def test_chat(model):
    chat = model.conversation(system="Be brief.")
    assert chat.say("Name a red fruit.").text
    assert chat.say("And a yellow one?").text
"""


def test_inputs_show_the_cases_own_part_and_choices_the_option_picked(fake_project: pytest.Pytester) -> None:
    """The input column's summary is what a case does not share with its benchmark's others (the question
    after the few-shot examples; the user's message after the system prompt), the whole prompt folded
    under it; a multiple-choice case's output is the option picked and the right one, as text, with the
    log-probabilities below; cases and export carry the same text."""
    fake_project.makepyfile(test_suite=FEW_SHOT_AND_CHOICE)
    fake_project.runpytest("--model=fake:a")
    page = section(write_page(fake_project, "1"), "cases")
    assert "<summary>Q: What is the capital of Japan?</summary>" in page
    assert "Q: What animal says meow?\nA: cat" in page  # the whole prompt, folded
    assert "<summary>What animal" not in page
    assert "<summary>picked [0] Paris; right [1] Rome and more</summary>" in page
    assert "log-probabilities: -6.000000 -14.000000" in page
    assert "<summary>user: And a yellow one?</summary>" in page  # the last user message, not "system: Be brief."
    reply = re.search(r"<summary>user: And a yellow one\?</summary>.*?</td><td>(.*?)</td>", page, re.S).group(1)
    assert "<summary>?eno wolley a dnA</summary>" in reply  # beside it, the last reply (the fake reverses the message)
    out = cli(fake_project, "cases", "1", "-k", "test_choice")
    assert "picked [0] Paris; right [0] Paris" in out.stdout, out.stdout
    exported = cli(fake_project, "export", "1", "--format", "jsonl", "-k", "test_choice")
    assert "picked [0] Paris; right [1] Rome and more" in exported.stdout


@pytest.fixture
def browser() -> str:
    """Chromium's path; where it is missing the test skips, except in CI (``in_ci``), where it fails."""
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        missing("chromium is not installed (apt-get install chromium): the HTML report's look is unchecked")
    return found


def screenshot(browser: str, html: Path, png: Path, height: int) -> tuple[int, int]:
    """A PNG of the page in headless Chromium; its (width, height)."""
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={html.parent / 'profile'}", f"--window-size=1400,{height}",
                    f"--screenshot={png}", html.as_uri()], capture_output=True, timeout=120)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_pages_render_in_headless_chromium(browser: str, project: pytest.Pytester) -> None:
    """The pages as a person sees them, and the CSS filters at work: the page with 'failed' and 'only the
    cases where the models differ' chosen must look exactly like the page without the other rows."""
    run_page = write_page(project, "1")
    write_page(project, "1", "2", name="compare.html")
    chosen = (run_page.replace('id="fo-all" checked>', 'id="fo-all">')
              .replace('id="fo-o-failed">', 'id="fo-o-failed" checked>')
              .replace('id="mx-differ">', 'id="mx-differ" checked>'))
    pruned = re.sub(r'<tbody class="case o-(?!failed )[^"]*">.*?</tbody>', "", chosen, flags=re.S)
    pruned = re.sub(r'<tr class="same">.*?</tr>', "", pruned, flags=re.S)
    assert pruned.count('<tbody class="case') == 6 and chosen.count('<tbody class="case') == 28
    (project.path / "chosen.html").write_text(chosen)
    (project.path / "pruned.html").write_text(pruned)
    shots = {}
    for name in ("report", "compare", "chosen", "pruned"):
        png = project.path / f"{name}.png"
        assert screenshot(browser, project.path / f"{name}.html", png, 2400) == (1400, 2400)
        shots[name] = png.read_bytes()
        assert len(shots[name]) > 40_000, f"{name}.png looks blank ({len(shots[name])} bytes)"
    assert shots["chosen"] != shots["report"]
    assert shots["chosen"] == shots["pruned"], "the CSS filters do not hide the rows they should"


def test_a_run_gated_on_a_baseline_says_what_drop_it_could_detect(project: pytest.Pytester) -> None:
    """The single-run page's strength column, as the terminal's: against the baseline the run was gated on
    (stored with the run), the drop its comparison had 80% power to detect."""
    result = project.runpytest(*MODELS, "--evals-baseline=1")
    terminal = [l for l in result.outlines if "test_suite.py::test_bench" in l and "fake:a" in l and "pass_rate" in l]
    detect = re.search(r"80% power for a drop of [\d.]+ points", terminal[0]).group(0)
    table = write_page(project, "3").split("the same figures as a table", 1)[1]
    row = re.search(r"<tr><td>test_suite.py::test_bench</td><td>fake:a</td><td>pass rate</td>.*?</tr>", table).group(0)
    assert detect in row
    assert "power for a drop" not in write_page(project, "2", name="two.html").split("the same figures as a table")[1]
