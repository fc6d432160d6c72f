"""The benchmark driver's per-round ratio and tables (tooling, no event loop involved)."""

from __future__ import annotations

import sys

import pytest
from loop_helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))
driver = pytest.importorskip("benchmarks.driver")


def sample(loop: str, rnd: int, value: float, **extra: object) -> dict[str, object]:
    return {"bench": "micro/x", "loop": loop, "round": rnd, "value": value, **extra}


def test_per_round_ratio_is_the_median_of_each_rounds_own_ratio() -> None:
    # Bimodal samples: ferroloop's median lands in the slow phase, uvloop's in
    # the fast one, yet ferroloop is 1.2x ahead in every round.
    samples = []
    for rnd, phase in enumerate([1.0, 1.0, 0.6, 0.6, 0.6, 1.0, 1.0], start=1):
        samples.append(sample("uvloop", rnd, 100 * phase))
        samples.append(sample("ferroloop", rnd, 120 * phase))
    samples.append(sample("asyncio", 1, 50.0))
    ratios = driver.paired_ratios(samples)["micro/x"]
    assert ratios["value"] == pytest.approx(1.2)
    assert "round" not in ratios and "attempts" not in ratios


def test_per_round_ratio_leaves_out_errors_and_disturbed_pairs() -> None:
    samples = [
        sample("uvloop", 1, 100.0),
        sample("ferroloop", 1, 150.0),
        sample("uvloop", 2, 100.0),
        sample("ferroloop", 2, 300.0, disturbed=True),
        sample("uvloop", 3, 100.0, error="boom"),
        sample("ferroloop", 3, 900.0),
        sample("ferroloop", 4, 900.0),  # no uvloop sample in round 4: no pair
    ]
    assert driver.paired_ratios(samples)["micro/x"]["value"] == pytest.approx(1.5)


def test_per_round_ratio_uses_disturbed_pairs_when_nothing_else_is_left() -> None:
    samples = [
        sample("uvloop", 1, 100.0, disturbed=True),
        sample("ferroloop", 1, 200.0),
    ]
    assert driver.paired_ratios(samples)["micro/x"]["value"] == pytest.approx(2.0)


def test_result_files_are_numbered_past_the_hosts_highest_on_any_date(tmp_path) -> None:
    import datetime

    day = datetime.date(2026, 12, 2)
    assert driver.next_result_path(tmp_path, day, "vm").name == "2026-12-02-vm.json"
    for name in [
        "2026-11-30-vm.json",
        "2026-11-30-vm-21.json",
        "2026-12-01-vm-29.json",
        "2026-12-01-vm-combined.json",
        "2026-12-01-other-40.json",
        "latest.md",
    ]:
        (tmp_path / name).write_text("{}")
    assert driver.next_result_path(tmp_path, day, "vm").name == "2026-12-02-vm-30.json"
    assert driver.next_result_path(tmp_path, day, "other").name == "2026-12-02-other-41.json"
    assert driver.next_result_path(tmp_path, day, "new").name == "2026-12-02-new.json"


def test_tables_add_a_column_for_another_loop_only_when_it_ran() -> None:
    samples = [sample(loop, 1, value) for loop, value in [("asyncio", 50.0), ("uvloop", 100.0)]]
    samples += [sample("ferroloop", 1, 150.0), sample("rloop", 1, 120.0, unit="ops/s")]
    summary = driver.summarize(samples)

    ((_, head, rows, _),) = driver.tables(summary, ["asyncio", "uvloop", "ferroloop", "rloop"])
    assert head == [
        "micro",
        "unit",
        "asyncio",
        "uvloop",
        "ferroloop",
        "rloop",
        "fl/uv",
        "fl/uv per round",
        "fl/aio",
        "uv/aio",
        "fl/rl",
    ]
    assert rows[0][head.index("rloop")] == driver.fmt_num(120.0)
    assert rows[0][-1] == driver.fmt_ratio(150.0 / 120.0)

    ((_, head, _, _),) = driver.tables(summary, ["asyncio", "uvloop", "ferroloop"])
    assert "rloop" not in head and "fl/rl" not in head


def test_loop_packages_get_bytecode_caches(tmp_path: object) -> None:
    # As an installed package has them: a loop run from a source tree where
    # Python writes no caches would otherwise compile itself in every server.
    from pathlib import Path

    package = Path(str(tmp_path)) / "someloop"
    package.mkdir()
    (package / "__init__.py").write_text("def new_event_loop():\n    pass\n")
    (package / "core.py").write_text("X = 1\n")
    driver.compile_loop_packages({"someloop": {"file": str(package / "__init__.py")}})
    cached = sorted(p.name.split(".")[0] for p in (package / "__pycache__").iterdir())
    assert cached == ["__init__", "core"]
