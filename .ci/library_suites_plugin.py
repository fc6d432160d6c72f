"""pytest plugin for `.ci/library-suites`: a library's own test suite on asyncio or on ferroloop.

Loaded with `-p library_suites_plugin` (`.ci` on PYTHONPATH); the suite's sources are not edited.

`--library-loop=asyncio` changes nothing: the suite runs as it does where uvloop is not
installed (its uvloop variants skip themselves).

`--library-loop=ferroloop` makes `import uvloop` return ferroloop, before the suite's conftest
imports it, so ferroloop is in every slot the suite gives uvloop: anyio's
`("asyncio", {"loop_factory": uvloop.new_event_loop})` backend and its `use_uvloop` option,
aiohttp's `--aiohttp-loop=uvloop` choice, its `uvloop_loop` fixture and its uvloop gunicorn
worker. Test ids keep the name `uvloop`. (aiohttp's loop names are a fixed list inside its
plugin's pytest_generate_tests; a name "ferroloop" would mean replacing that hook, importing
aiohttp's plugin before pytest marks it for assertion rewriting, which pytest warns about and
aiohttp's filterwarnings=error makes an error.) anyio tests whose `anyio_backend` is not
ferroloop's are deselected: they run on asyncio's loop (or trio), in the asyncio run.

`--library-anyio-asyncio` is for suites whose async tests run on anyio's pytest plugin with no
uvloop backend of their own (uvicorn's, httpx's): their tests on anyio backends other than
`"asyncio"` (trio) are deselected on both loops, and with `--library-loop=ferroloop` the
`"asyncio"` backend becomes `("asyncio", {"loop_factory": ferroloop.new_event_loop})`, the
form anyio's own suite gives uvloop, so anyio's runner creates ferroloop's loop. Test ids keep
the parameter id `asyncio`.

`--library-asyncio-policy` is for suites that make loops through asyncio's own API, outside
any uvloop slot they have (websockets' unittest test cases: `IsolatedAsyncioTestCase`,
`asyncio.run`, `asyncio.new_event_loop`; asyncpg's fuzzing proxy): with
`--library-loop=ferroloop` it installs ferroloop's event-loop policy (`ferroloop.install()`)
before any conftest or test module is imported, so every loop those make is ferroloop's.

Both runs count the times an event loop starts running, by the loop's class
(`asyncio.events._set_running_loop`, which asyncio's loops and ferroloop's call then, is
wrapped), and pytest's summary shows them: the check that a suite's tests really ran on the
loop meant for the run.

`--library-results=FILE` writes one JSON line per test phase report (node id, phase, outcome,
whether xfail applied), and per module skipped or failing as a whole, as it happens, so that a
run that dies still leaves what it finished. `library_suites_compare.py` reads two such files.
"""

from __future__ import annotations

import asyncio.events
import json
import sys
import types
from collections import Counter
from typing import IO, Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("library-suites", "ferroloop's .ci/library-suites")
    group.addoption(
        "--library-loop",
        choices=("asyncio", "ferroloop"),
        default="asyncio",
        help="asyncio: the suite as it is; ferroloop: ferroloop in the suite's uvloop slot",
    )
    group.addoption(
        "--library-anyio-asyncio",
        action="store_true",
        help="run anyio's asyncio backend only, on ferroloop with --library-loop=ferroloop",
    )
    group.addoption(
        "--library-asyncio-policy",
        action="store_true",
        help="with --library-loop=ferroloop, install ferroloop's event-loop policy",
    )
    group.addoption(
        "--library-results",
        metavar="FILE",
        default=None,
        help="write each test report's node id and outcome to FILE (JSON lines)",
    )


def _ferroloop_as_uvloop() -> None:
    """Make `import uvloop` (and `uvloop.loop`) return ferroloop's equivalents."""
    import ferroloop

    if "uvloop" in sys.modules:
        raise pytest.UsageError("uvloop was imported before ferroloop could take its place")
    loop_module = types.ModuleType("uvloop.loop", "ferroloop, standing in for uvloop.loop")
    loop_module.Loop = ferroloop.Loop  # type: ignore[attr-defined]
    shim = types.ModuleType("uvloop", "ferroloop, standing in for uvloop (.ci/library-suites)")
    for name in ("EventLoopPolicy", "Loop", "install", "new_event_loop", "run", "__version__"):
        setattr(shim, name, getattr(ferroloop, name))
    shim.loop = loop_module  # type: ignore[attr-defined]
    sys.modules["uvloop"] = shim
    sys.modules["uvloop.loop"] = loop_module


# How many times a loop of each class ("module.qualname") started running.
_loop_runs: Counter[str] = Counter()


def _count_running_loops() -> None:
    """Wrap asyncio.events._set_running_loop to count the classes of the loops it is given."""
    set_running_loop = asyncio.events._set_running_loop

    def counting_set_running_loop(loop: Any) -> None:
        if loop is not None:
            _loop_runs[f"{type(loop).__module__}.{type(loop).__qualname__}"] += 1
        set_running_loop(loop)

    # asyncio's loops look it up in asyncio.events at each run; ferroloop looks it up there
    # once, on its first run, which comes after this.
    asyncio.events._set_running_loop = counting_set_running_loop


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # Runs before any conftest is imported: conftests import uvloop at module level, and
    # test modules may make loops at import.
    _count_running_loops()
    options = early_config.known_args_namespace
    if options.library_loop == "ferroloop":
        _ferroloop_as_uvloop()
        if options.library_asyncio_policy:
            import ferroloop

            ferroloop.install()


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("library_results")
    if path is not None:
        results = open(path, "w", encoding="utf-8")  # closed at unconfigure
        config.pluginmanager.register(_ReportWriter(results), "library-suites-writer")


def pytest_report_header(config: pytest.Config) -> str:
    if config.getoption("library_loop") == "asyncio":
        return "library-suites: asyncio's own event loop (uvloop not installed)"
    import ferroloop

    slots = "uvloop's slot"
    if config.getoption("library_anyio_asyncio"):
        slots += " and anyio's asyncio backend"
    if config.getoption("library_asyncio_policy"):
        slots += " and asyncio's event-loop policy"
    return f"library-suites: ferroloop {ferroloop.__version__} in {slots} ({ferroloop.__file__})"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_sep("-", "library-suites: event loop runs, by the loop's class")
    for name, count in _loop_runs.most_common():
        terminalreporter.write_line(f"{count:6d} {name}")


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Any:
    # The suite's anyio_backend fixture (its conftest's or anyio's default, parametrised or
    # not) stays in charge, and its value "asyncio" is swapped for ferroloop's backend: the
    # fixture function is wrapped while pytest calls it, as anyio's own plugin wraps async
    # fixtures. Everything that reads the backend (anyio's runner for the tests and async
    # fixtures, anyio_backend_name and _options) then sees ferroloop's.
    config = request.config
    if (
        fixturedef.argname != "anyio_backend"
        or config.getoption("library_loop") != "ferroloop"
        or not config.getoption("library_anyio_asyncio")
    ):
        return (yield)
    import ferroloop

    make_backend = fixturedef.func

    def backend_on_ferroloop(*args: Any, **kwargs: Any) -> Any:
        backend = make_backend(*args, **kwargs)
        if backend == "asyncio":
            return ("asyncio", {"loop_factory": ferroloop.new_event_loop})
        return backend

    fixturedef.func = backend_on_ferroloop  # type: ignore[misc]
    try:
        return (yield)
    finally:
        fixturedef.func = make_backend  # type: ignore[misc]


def _is_ferroloop_backend(backend: Any) -> bool:
    """Whether an anyio_backend parameter is ("asyncio", {"loop_factory": ferroloop's})."""
    import ferroloop

    return (
        isinstance(backend, tuple)
        and len(backend) == 2
        and backend[0] == "asyncio"
        and isinstance(backend[1], dict)
        and backend[1].get("loop_factory") is ferroloop.new_event_loop
    )


def _runs_here(backend: Any, anyio_asyncio: bool) -> bool:
    """Whether this run keeps the tests on an anyio_backend parameter."""
    if anyio_asyncio:
        return backend == "asyncio"  # on ferroloop in ferroloop's run (pytest_fixture_setup)
    return _is_ferroloop_backend(backend)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    anyio_asyncio = config.getoption("library_anyio_asyncio")
    if config.getoption("library_loop") != "ferroloop" and not anyio_asyncio:
        return
    selected: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params: dict[str, Any] = callspec.params if callspec is not None else {}
        if "anyio_backend" not in params or _runs_here(params["anyio_backend"], anyio_asyncio):
            selected.append(item)
        else:
            deselected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


class _ReportWriter:
    """Writes each test report as a JSON line as soon as pytest has it."""

    def __init__(self, results: IO[str]) -> None:
        self._results = results

    def _write(self, nodeid: str, when: str, outcome: str, xfail: bool) -> None:
        record = {"nodeid": nodeid, "when": when, "outcome": outcome, "xfail": xfail}
        self._results.write(json.dumps(record) + "\n")
        self._results.flush()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._write(report.nodeid, report.when, report.outcome, hasattr(report, "wasxfail"))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        # A module skipped or failing as a whole: pytest counts it as one skip or error.
        if not report.passed:
            self._write(report.nodeid, "collect", report.outcome, False)

    def pytest_unconfigure(self) -> None:
        self._results.close()
