"""Regression guard: ferroloop's pass counts on CPython's test_asyncio.

Runs the conformance harness (run_cpython_asyncio.py) for a fast subset of
modules on ferroloop and checks each module's pass count against the floor
recorded in floor.json.  The floor only ever goes up: when ferroloop passes
more tests, raise it with

    PYTHONPATH=python python3 tests/conformance/test_cpython_conformance.py --update-floor

Tests listed under "flaky" in floor.json count as failing for the floor even
when they pass, so an unlucky run cannot fail the guard.

Select with ``pytest -m conformance tests/conformance``.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_harness():
    # Loaded by path: putting tests/conformance on sys.path would let its
    # conftest.py shadow tests/conftest.py for any later `import conftest`.
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "run_cpython_asyncio", os.path.join(HERE, "run_cpython_asyncio.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = _load_harness()

FLOOR_FILE = os.path.join(HERE, "floor.json")


def load_floor() -> dict:
    with open(FLOOR_FILE) as f:
        return json.load(f)


FLOOR = load_floor()
FAST_MODULES = FLOOR["fast_modules"]

pytestmark = [pytest.mark.conformance, pytest.mark.timeout(600)]

try:
    import test.test_asyncio  # noqa: F401  (CPython's own test package)
except ImportError:  # some distributions ship Python without its test suite
    pytest.skip("CPython's test.test_asyncio is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def run():
    return harness.run_modules(
        FAST_MODULES,
        ["ferroloop"],
        jobs=min(2, os.cpu_count() or 1),
        test_timeout=30,
        module_timeout=240,
        progress=False,
    )


@pytest.fixture(scope="module")
def report(run):
    return run["results"]["ferroloop"]


@pytest.mark.parametrize("module", FAST_MODULES)
def test_pass_count_at_least_floor(run, report, module):
    res = report[module]
    floor = FLOOR["floor"][module]
    failing = [p["id"].rsplit(".", 2)[-2:] for p in res["problems"]][:15]
    tested = f"(ferroloop from {run['meta'].get('ferroloop_source')})"
    assert not res["aborted"], f"{res['aborted']} {tested}"
    assert res["passed"] >= floor["passed"], (
        f"{module}: {res['passed']} passed, floor is {floor['passed']}; "
        f"failing now (first 15): {failing} {tested}"
    )
    assert res["passed_on_loop"] >= floor["passed_on_loop"], (
        f"{module}: {res['passed_on_loop']} passed on a ferroloop loop, floor is "
        f"{floor['passed_on_loop']}; failing now (first 15): {failing} {tested}"
    )


def floor_counts(res: dict, flaky: dict) -> dict:
    """A module's counts for the floor: flaky tests count as failing even when they passed."""
    counts = {"passed": res["passed"], "passed_on_loop": res["passed_on_loop"]}
    for short in flaky:
        rec = res["tests"].get(f"test.test_asyncio.{res['module']}.{short}")
        if rec is not None and rec["outcome"] == "passed":
            counts["passed"] -= 1
            if rec["on_loop"]:
                counts["passed_on_loop"] -= 1
    return counts


def _update_floor() -> None:
    """Raise the floor to today's counts (never lowers it); flaky tests count as failing."""
    run = harness.run_modules(FAST_MODULES, ["ferroloop"], jobs=2)
    res = run["results"]["ferroloop"]
    data = load_floor()
    for m in FAST_MODULES:
        old = data["floor"].get(m, {"passed": 0, "passed_on_loop": 0})
        new = floor_counts(res[m], data.get("flaky", {}).get(m, {}))
        data["floor"][m] = {k: max(old.get(k, 0), new[k]) for k in ("passed", "passed_on_loop")}
    meta = run["meta"]
    data["recorded"] = (
        f"{meta['date']}, git {meta.get('git_rev')} "
        f"(+{meta.get('uncommitted_core_files', '?')} uncommitted files in src/ python/), "
        f"core sha256 {meta['ferroloop_build'].get('core_sha256')}, CPython {meta['python']}"
    )
    with open(FLOOR_FILE, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    print(json.dumps(data["floor"], indent=2))


if __name__ == "__main__":
    if sys.argv[1:] == ["--update-floor"]:
        _update_floor()
    else:
        sys.exit(pytest.main([__file__, "-m", "conformance", *sys.argv[1:]]))
