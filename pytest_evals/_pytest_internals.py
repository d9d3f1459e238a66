"""Every private pytest and pytest-xdist attribute the plugin touches, in one place.

An upgrade of pytest or xdist that changes one of these breaks here, and only here. What is used, and why:

pytest (checked against 8.3 to 9.x):

- ``session._setupstate`` (``SetupState``): its ``stack`` (node -> (finalizers, exception)) and
  ``teardown_exact(nextitem)``. A window of cases sets up several sibling cases at once: each case is
  taken off the stack while its body waits and put back to be torn down through pytest's own hooks
  (``batching.parking``); a replayed case tears down what the item before it left (``session.cases``);
  Ctrl-C inside a window tears down what the waiting cases set up (``batching.windows``).
- ``FixtureDef.cached_result`` and ``FixtureDef._finalizers``: a parked case's function-scoped fixture
  values and finalizers, taken out of their definitions so that the next sibling sets up its own.
- ``item._request``, ``request._fixture_defs``, ``item._initrequest()``, ``item.funcargs``: a window sets
  a case up before pytest's own protocol would, and forgets its fixture values after its teardown, as
  the protocol does.
- ``item._fixtureinfo`` (``argnames``, ``name2fixturedefs``): which fixtures a test takes.
- ``callspec._arg2scope`` and ``callspec.indices``: a case is set up beside another only when every
  parametrized fixture broader than a function has the same value.
- ``item._report_sections``: what a parked body printed, joined into one section per phase.
- ``_pytest.junitxml.xml_key``: the stash key of the JUnit writer, to add the gates' verdicts as
  properties.
- ``TerminalReporter._tw`` (its ``_current_line``), ``TerminalReporter.currentfspath`` and ``startpath``:
  status lines written between pytest's own lines (an open line of dots or a test's name is ended first
  and opened again after ours, so pytest goes on writing as it would have), with ``_pytest.pathlib``'s
  ``bestrelpath`` for the file's name as pytest shows it.
- ``CaptureManager._global_capturing.out.writeorg(text)``: a status line written while a test's phase runs
  under capture goes to the terminal (the stream pytest saved), not into the test's captured output.
- ``_pytest.mark.expression.Expression``: ``pytest-evals cases -k EXPR`` matches as ``pytest -k`` does.

pytest-xdist (checked against 3.7 to 3.8; ``torun.lock()`` exists from 3.7):

- the worker loop (``WorkerInteractor``): ``torun`` (its queue, read under ``lock()``), ``nextitem_index``
  and ``item_index``. A window takes the cases queued for this worker, and reports each under its own
  index (the controller checks the index of every report).
- ``DSession.shouldstop`` (the plugin ``dsession``): the controller's loop reads its own flag, so a spent
  budget stops it there too.
- ``WorkerController.gateway`` (a node's execnet gateway): under a budget the controller opens one more
  channel to each worker (``gateway.newchannel()``) and sends it in the worker's ``workerinput``; the
  worker's calls reserve their worst case through it (``calls.ceiling``).
- the options ``numprocesses``, ``dist``, ``tx`` and ``maxschedchunk`` (their ``dest`` names): how many
  workers a run starts, and few tests queued per worker under a budget.
- ``workermanage.make_reltoroot`` and the rsync roots ``NodeManager`` computes (pytest's own packages,
  ``rsyncdir`` and the ini's ``rsyncdirs``): for a worker in a folder of its own (``ssh=``, ``//chdir=``)
  xdist rewrites each path argument under one of those roots and stops with a traceback at one under none;
  the controller says so first, in one line.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from _pytest.pathlib import bestrelpath


# --- pytest: the setup stack and fixture values --------------------------------------------------------
def setup_stack(session: pytest.Session) -> Any:
    """The nodes set up now, outermost first: ``{node: (finalizers, exception)}``."""
    return session._setupstate.stack


def teardown_until(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Tear down what ``nextitem`` does not share, as a teardown phase would."""
    item.session._setupstate.teardown_exact(nextitem)


def function_fixtures(item: pytest.Item) -> list[Any]:
    """The function-scoped fixture definitions set up for ``item``: the ones it uses, and the ones they
    override (a fixture that takes the one it overrides)."""
    found: dict[int, Any] = {}
    request = getattr(item, "_request", None)
    info = getattr(item, "_fixtureinfo", None)
    candidates = list(getattr(request, "_fixture_defs", {}).values())
    for definitions in getattr(info, "name2fixturedefs", {}).values():
        candidates.extend(definitions)
    for definition in candidates:
        if (getattr(definition, "scope", None) == "function" and getattr(definition, "cached_result", None) is not None
                and hasattr(definition, "_finalizers")):
            found[id(definition)] = definition
    return list(found.values())


def take_fixture_value(definition: Any) -> tuple[Any, list[Any]]:
    """A fixture definition's cached value and finalizers, taken out of it (it is then not set up)."""
    taken = (definition.cached_result, list(definition._finalizers))
    definition.cached_result = None
    definition._finalizers.clear()
    return taken


def put_fixture_value(definition: Any, cached: Any, finalizers: list[Any]) -> None:
    definition.cached_result = cached
    definition._finalizers[:] = finalizers


def prepare_request(item: pytest.Item) -> None:
    """A fixture request for an item whose last one was forgotten (set up again after a rerun)."""
    if hasattr(item, "_request") and not item._request:  # type: ignore[attr-defined]
        item._initrequest()  # type: ignore[attr-defined]


def forget_request(item: pytest.Item) -> None:
    """As pytest's protocol leaves an item: no fixture values kept past its teardown."""
    if hasattr(item, "_request"):
        item._request = False  # type: ignore[attr-defined]
        item.funcargs = None  # type: ignore[attr-defined]


def test_arguments(item: pytest.Item) -> set[str]:
    """The test function's own arguments (not the fixtures those take)."""
    info = getattr(item, "_fixtureinfo", None)
    return set(getattr(info, "argnames", ()))


def broad_params(item: pytest.Item) -> dict[str, Any]:
    """The item's parametrized arguments whose fixtures live longer than a function, with their index."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return {}
    scopes = getattr(callspec, "_arg2scope", {})
    return {name: index for name, index in callspec.indices.items()
            if getattr(scopes.get(name), "value", "function") != "function"}


def join_report_sections(item: pytest.Item) -> None:
    """Output taken in several pieces, as one section per phase and stream (as pytest shows it)."""
    joined: dict[tuple[str, str], list[str]] = {}
    for when, key, content in item._report_sections:
        joined.setdefault((when, key), []).append(content)
    item._report_sections = [(when, key, "".join(parts)) for (when, key), parts in joined.items()]


# --- pytest: reporting ------------------------------------------------------------------------------
def junit_xml(config: pytest.Config) -> Any:
    """The JUnit XML writer of this run (``--junitxml``), or None."""
    from _pytest.junitxml import xml_key

    return config.stash.get(xml_key, None)


def terminal_writer(reporter: Any) -> Any:
    return reporter._tw


def capture_stream(config: pytest.Config) -> Any:
    """The stream to the terminal that pytest's capture saved (``writeorg``), or None (capture is off)."""
    capman = config.pluginmanager.getplugin("capturemanager")
    return getattr(getattr(capman, "_global_capturing", None), "out", None)


def write_between_lines(reporter: Any, verbose: bool, text: str, out: Any = None) -> bool:
    """``text`` as a whole line of its own among pytest's. An open line is ended first; a line of dots is
    opened again after it with its file's name (not its dots), and with -v pytest writes the test's name
    again (after an empty line), so pytest goes on writing as it would have. ``out``: the capture's stream
    to the terminal, while a test's phase may be captured. False where nothing could be written (the
    capture stopped meanwhile)."""
    tw = reporter._tw
    current = tw._current_line
    reopen = ""
    if verbose:  # an open line is a test's name (its word to come) or its result: pytest writes the name again
        reporter.currentfspath = -2
    elif current and reporter.showfspath and isinstance(reporter.currentfspath, Path):
        reopen = bestrelpath(reporter.startpath, reporter.currentfspath) + " "
    data = ("\n" if current else "") + text + "\n" + reopen
    if out is None:
        tw.write(data, flush=True)
        return True
    try:
        out.writeorg(data)
    except (AssertionError, OSError, ValueError):  # capture stopped meanwhile
        return False
    tw._current_line = reopen  # what the terminal shows of the open line now
    return True


def keyword_expression(expr: str) -> Callable[[Callable[..., bool]], bool]:
    """``pytest -k``'s expression, compiled: call it with a matcher of one name. A malformed one is a
    ValueError saying where."""
    from _pytest.mark import expression

    errors = (SyntaxError, getattr(expression, "ParseError", SyntaxError))  # ParseError: pytest < 9
    try:
        compiled = expression.Expression.compile(expr)
    except errors as exc:
        raise ValueError(f"at column {exc.offset}: {exc.msg}" if isinstance(exc, SyntaxError) else str(exc)) from None
    return compiled.evaluate


# --- pytest-xdist -----------------------------------------------------------------------------------
def xdist_worker_loop(config: pytest.Config) -> Any:
    """xdist's worker loop, where this process is a worker (it holds the queue and the item running)."""
    return next((p for p in config.pluginmanager.get_plugins()
                 if hasattr(p, "torun") and hasattr(p, "nextitem_index")), None)


def queued_indices(loop: Any) -> list[int]:
    """The indices (into ``session.items``) of the items this worker runs next, in order."""
    with loop.torun.lock() as queue:
        pending = [i for i in queue if isinstance(i, int)]
    following = loop.nextitem_index
    return ([following] if isinstance(following, int) else []) + pending


@contextlib.contextmanager
def reporting_as(loop: Any, index: int) -> Iterator[None]:
    """Reports sent meanwhile carry ``index`` as the item running (the controller checks it)."""
    saved = loop.item_index
    loop.item_index = index
    try:
        yield
    finally:
        loop.item_index = saved


def new_worker_channel(node: Any) -> Any:
    """A new execnet channel to a worker (before it starts: sent to it inside its workerinput)."""
    return node.gateway.newchannel()


def stop_xdist(config: pytest.Config, message: str) -> None:
    """The controller's loop stops scheduling (it reads its own flag, not the session's)."""
    dsession = config.pluginmanager.getplugin("dsession")
    if dsession is not None:
        dsession.shouldstop = message


def xdist_workers(config: pytest.Config) -> int | None:
    """How many xdist workers this controller starts; None when the run does not distribute."""
    if not config.pluginmanager.hasplugin("xdist") or getattr(config.option, "dist", "no") == "no":
        return None
    numprocesses = getattr(config.option, "numprocesses", None)
    if isinstance(numprocesses, int):
        return numprocesses or None
    return len(getattr(config.option, "tx", None) or []) or None


def planned_workers(config: pytest.Config) -> int | None:
    """``-n N`` as given (an int once xdist resolved ``auto``); None without it."""
    workers = getattr(config.option, "numprocesses", None)
    return workers if isinstance(workers, int) and workers > 0 else None


def dist_mode(config: pytest.Config) -> str:
    return getattr(config.option, "dist", "no")


def paths_remote_workers_miss(config: pytest.Config) -> list[str]:
    """Path arguments that xdist cannot hand to this run's remote ``--tx`` workers: where a worker runs in a
    folder of its own (any spec but a plain ``popen``), xdist rewrites a path that exists here relative to
    an rsync root (``workermanage.make_reltoroot``), and stops with a traceback at one under no root."""
    if dist_mode(config) == "no" or not getattr(config.option, "tx", None):
        return []
    import _pytest
    from execnet import XSpec
    from xdist.workermanage import make_reltoroot, parse_tx_spec_config

    specs = [XSpec(spec) for spec in parse_tx_spec_config(config)]  # "3*ssh=..." is three
    if all(spec.popen and not spec.chdir for spec in specs):
        return []
    roots = [Path(pytest.__file__).parent, Path(_pytest.__file__).parent,
             *config.option.rsyncdir, *config.getini("rsyncdirs")]
    roots = list(dict.fromkeys(Path(root).resolve() for root in roots))
    missed = []
    for arg in config.invocation_params.args:
        try:
            make_reltoroot(roots, [str(arg)])
        except ValueError:
            missed.append(str(arg))
    return missed


def queue_one_test_per_worker(config: pytest.Config) -> None:
    """Few tests queued per worker (unless the user chose ``--maxschedchunk``)."""
    if getattr(config.option, "maxschedchunk", 0) is None:
        config.option.maxschedchunk = 1
