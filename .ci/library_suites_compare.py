"""Compares a library suite's run on asyncio's loop with its run on ferroloop.

Reads the JSON-lines results `library_suites_plugin.py` writes (one line per test phase) for
the two runs, prints each run's counts, the tests failing on both, on asyncio only and on
ferroloop only, and exits 1 when a test fails (or errors) on ferroloop but not on asyncio.

A test's id names the loop in its parameters (anyio's `asyncio+uvloop`, aiohttp's `uvloop`);
`--same FERROLOOP_ID=ASYNCIO_ID` names the parameter id that stands for ferroloop and the one
for asyncio's loop, and a ferroloop test id is compared with the asyncio id it maps to.

The tests that fail only on ferroloop are run again on ferroloop, by themselves
(`.ci/library-suites` runs the ids `--candidates FILE` writes and passes the results as
`--rerun FILE`): one that passes then is reported as flaky, not counted. Some tests of these
suites fail now and then on either loop, depending on what ran before them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

FAILING = ("failed", "error")
ORDER = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


def read_outcomes(path: Path) -> dict[str, str]:
    """Each test's outcome as pytest's summary counts it, from a results file."""
    reports: dict[str, dict[str, tuple[str, bool]]] = {}
    with path.open(encoding="utf-8") as results:
        for line in results:
            record = json.loads(line)
            phases = reports.setdefault(record["nodeid"], {})
            phases[record["when"]] = (record["outcome"], record["xfail"])
    return {nodeid: outcome_of(phases) for nodeid, phases in reports.items()}


def outcome_of(phases: dict[str, tuple[str, bool]]) -> str:
    call = phases.get("call")
    if call is not None and call[0] == "failed":
        return "failed"
    if any(outcome == "failed" for outcome, _ in phases.values()):
        return "error"  # setup, teardown or the module's collection failed
    if call is None:  # skipped (or xfailed) in setup or collection, or a run cut short
        outcome, xfail = phases.get("setup", phases.get("collect", ("skipped", False)))
        return "xfailed" if xfail else outcome
    outcome, xfail = call
    if xfail:
        return "xfailed" if outcome == "skipped" else "xpassed"
    return outcome


def rename(nodeid: str, same: dict[str, str]) -> str:
    """The asyncio run's id for a ferroloop run's id: parameter ids swapped by `same`."""
    if not same or "[" not in nodeid or not nodeid.endswith("]"):
        return nodeid
    head, _, params = nodeid[:-1].partition("[")
    parts = [same.get(part, part) for part in re.split(r"(-)", params)]
    return f"{head}[{''.join(parts)}]"


def counts(outcomes: dict[str, str]) -> str:
    tally = Counter(outcomes.values())
    return ", ".join(f"{tally[name]} {name}" for name in ORDER if tally[name])


def show(title: str, nodeids: list[str]) -> None:
    print(f"{title} ({len(nodeids)}):")
    for nodeid in nodeids:
        print(f"    {nodeid}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("asyncio_results", type=Path)
    parser.add_argument("ferroloop_results", type=Path)
    parser.add_argument(
        "--same",
        action="append",
        default=[],
        metavar="FERROLOOP_ID=ASYNCIO_ID",
        help="a parameter id of the ferroloop run and its asyncio run equivalent",
    )
    parser.add_argument(
        "--candidates",
        type=Path,
        metavar="FILE",
        help="only write the ferroloop run's ids of the tests failing on ferroloop only to FILE",
    )
    parser.add_argument(
        "--rerun",
        type=Path,
        metavar="FILE",
        help="results of those tests run again on ferroloop",
    )
    args = parser.parse_args()
    same = dict(pair.split("=", 1) for pair in args.same)

    on_asyncio = read_outcomes(args.asyncio_results)
    ferroloop_outcomes = read_outcomes(args.ferroloop_results)
    ferroloop_ids = {rename(nodeid, same): nodeid for nodeid in ferroloop_outcomes}
    on_ferroloop = {rename(nodeid, same): outcome for nodeid, outcome in ferroloop_outcomes.items()}
    failing_asyncio = {n for n, outcome in on_asyncio.items() if outcome in FAILING}
    failing_ferroloop = {n for n, outcome in on_ferroloop.items() if outcome in FAILING}
    only_ferroloop = failing_ferroloop - failing_asyncio

    if args.candidates is not None:
        lines = "".join(f"{ferroloop_ids[n]}\n" for n in sorted(only_ferroloop))
        args.candidates.write_text(lines, encoding="utf-8")
        return 0

    rerun: dict[str, str] = {}
    if args.rerun is not None and args.rerun.exists():
        rerun = {rename(n, same): outcome for n, outcome in read_outcomes(args.rerun).items()}
    flaky = sorted(n for n in only_ferroloop if rerun.get(n) == "passed")
    only_ferroloop -= set(flaky)
    # Tests the asyncio run skipped or never had (those of the uvloop slot that are not
    # parametrised by loop) are kept apart from those that passed there.
    passed_asyncio = sorted(n for n in only_ferroloop if on_asyncio.get(n) == "passed")
    not_run_asyncio = sorted(only_ferroloop - set(passed_asyncio))

    print(f"asyncio:   {counts(on_asyncio)}")
    print(f"ferroloop: {counts(on_ferroloop)}")
    show("failing on both loops", sorted(failing_asyncio & failing_ferroloop))
    show("failing on asyncio only", sorted(failing_asyncio - failing_ferroloop))
    show("flaky: failing on ferroloop in the whole run, passing when run again", flaky)
    show("FERROLOOP-ONLY: failing on ferroloop, passing on asyncio", passed_asyncio)
    show("FERROLOOP-ONLY: failing on ferroloop, not run (or skipped) on asyncio", not_run_asyncio)
    return 1 if only_ferroloop else 0


if __name__ == "__main__":
    sys.exit(main())
