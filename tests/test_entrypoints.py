"""Entry points: ferroloop.run, asyncio.Runner(loop_factory=...), ferroloop.install(),
and ``python -m ferroloop`` (compared against plain ``python``, the oracle)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import textwrap
from pathlib import Path

import pytest
from loop_helpers import current_policy, run_python, set_policy


async def loop_info(value: object = None) -> tuple[object, asyncio.AbstractEventLoop]:
    await asyncio.sleep(0.01)
    return value, asyncio.get_running_loop()


# -- in-process entry points ---------------------------------------------------------


def test_ferroloop_run_returns_value_on_ferroloop_loop():
    import ferroloop

    value, lp = ferroloop.run(loop_info(42))
    assert value == 42
    assert isinstance(lp, ferroloop.EventLoop)
    assert isinstance(lp, asyncio.AbstractEventLoop)
    assert lp.is_closed()


def test_ferroloop_run_propagates_exceptions():
    import ferroloop

    async def boom():
        raise ArithmeticError("from main")

    with pytest.raises(ArithmeticError, match="from main"):
        ferroloop.run(boom())


@pytest.mark.parametrize("debug", [True, False, None])
def test_ferroloop_run_debug_keyword(debug):
    import ferroloop

    async def main():
        return asyncio.get_running_loop().get_debug()

    assert ferroloop.run(main(), debug=debug) is bool(debug)


def test_ferroloop_run_inside_running_loop_raises():
    import ferroloop

    async def outer():
        inner = loop_info()
        try:
            with pytest.raises(RuntimeError):
                ferroloop.run(inner)
        finally:
            inner.close()
        return "ok"

    assert ferroloop.run(outer()) == "ok"


def test_ferroloop_run_cancels_leftover_tasks_and_shuts_down_asyncgens():
    import ferroloop

    events: list[str] = []

    async def leftover():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            events.append("task cancelled")
            raise

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            events.append("agen closed")

    gens = []

    async def main():
        gens.append(asyncio.create_task(leftover()))
        g = agen()
        gens.append(g)
        await g.__anext__()
        await asyncio.sleep(0)

    ferroloop.run(main())
    assert sorted(events) == ["agen closed", "task cancelled"]


def test_asyncio_runner_with_ferroloop_factory():
    import ferroloop

    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        v1, lp1 = runner.run(loop_info(1))
        v2, lp2 = runner.run(loop_info(2))
        assert runner.get_loop() is lp1 is lp2
        assert isinstance(lp1, ferroloop.EventLoop)
    assert (v1, v2) == (1, 2)
    assert lp1.is_closed()


def test_new_event_loop_returns_fresh_loops():
    import ferroloop

    a = ferroloop.new_event_loop()
    b = ferroloop.new_event_loop()
    try:
        assert a is not b
        assert isinstance(a, ferroloop.EventLoop)
        assert not a.is_running() and not a.is_closed()
    finally:
        a.close()
        b.close()


def test_install_makes_asyncio_run_use_ferroloop():
    import ferroloop

    saved = current_policy()
    try:
        ferroloop.install()
        assert isinstance(current_policy(), ferroloop.EventLoopPolicy)
        _, lp = asyncio.run(loop_info())
        assert isinstance(lp, ferroloop.EventLoop)
        fresh = asyncio.new_event_loop()
        try:
            assert isinstance(fresh, ferroloop.EventLoop)
        finally:
            fresh.close()
    finally:
        set_policy(saved)
    _, lp = asyncio.run(loop_info())
    assert not isinstance(lp, ferroloop.EventLoop)


# -- python -m ferroloop ---------------------------------------------------------------
#
# The asyncio parameter runs the very same script with plain `python script.py`
# (the oracle); the ferroloop parameter runs `python -m ferroloop script.py`.

PROBE = textwrap.dedent(
    """
    import asyncio, json, os, sys

    async def main():
        await asyncio.sleep(0.01)
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    loop_module = asyncio.run(main())
    print(json.dumps({
        "name": __name__,
        "args": sys.argv[1:],
        "argv0": os.path.basename(sys.argv[0]),
        "path0": os.path.realpath(sys.path[0]),
        "file": os.path.realpath(__file__),
        "file_is_abs": os.path.isabs(__file__),
        "loop": loop_module,
    }))
    """
)


def launch(loop_name: str, *args: str, **kwargs) -> object:
    prefix = ["-m", "ferroloop"] if loop_name == "ferroloop" else []
    return run_python(*prefix, *args, **kwargs)


@pytest.fixture
def script_dir(tmp_path: Path) -> Path:
    d = tmp_path / "scripts"
    d.mkdir()
    return d


def write(directory: Path, name: str, source: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(source))
    return path


def test_script_argv_name_path_and_loop(loop_name, script_dir, tmp_path):
    script = write(script_dir, "probe.py", PROBE)
    proc = launch(loop_name, str(script), "a", "-b", "--c=d", "-m", "x", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info == {
        "name": "__main__",
        "args": ["a", "-b", "--c=d", "-m", "x"],
        "argv0": "probe.py",
        "path0": str(script_dir.resolve()),
        "file": str(script.resolve()),
        "file_is_abs": True,
        "loop": loop_name,
    }


def test_script_with_relative_path_can_import_siblings(loop_name, script_dir, tmp_path):
    write(script_dir, "helper_mod.py", "VALUE = 'sibling import works'\n")
    write(
        script_dir,
        "main.py",
        """
        import asyncio
        import helper_mod

        async def main():
            return helper_mod.VALUE

        print(asyncio.run(main()))
        """,
    )
    proc = launch(loop_name, "scripts/main.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "sibling import works"


def test_script_sys_exit_code(loop_name, script_dir):
    script = write(
        script_dir,
        "exit3.py",
        """
        import asyncio, sys

        async def main():
            await asyncio.sleep(0)
            sys.exit(3)

        asyncio.run(main())
        """,
    )
    proc = launch(loop_name, str(script))
    assert proc.returncode == 3, proc.stderr


def test_script_uncaught_exception_traceback_and_exit_1(loop_name, script_dir):
    script = write(
        script_dir,
        "fail.py",
        """
        import asyncio

        async def failing_coroutine():
            await asyncio.sleep(0)
            raise ValueError("boom from script")

        asyncio.run(failing_coroutine())
        """,
    )
    proc = launch(loop_name, str(script))
    assert proc.returncode == 1
    err = proc.stderr
    assert err.startswith("Traceback (most recent call last):"), err
    assert "ValueError: boom from script" in err
    assert "failing_coroutine" in err
    assert f'File "{script}"' in err
    # The launcher's own frames are not shown.
    assert "ferroloop/__main__.py" not in err
    assert "runpy" not in err


def test_script_keyboard_interrupt_exit_status(loop_name, script_dir):
    script = write(script_dir, "kbi.py", "raise KeyboardInterrupt\n")
    proc = launch(loop_name, str(script))
    assert proc.returncode == -signal.SIGINT
    assert "KeyboardInterrupt" in proc.stderr


def test_legacy_get_event_loop_idiom(loop_name, script_dir):
    script = write(
        script_dir,
        "legacy.py",
        """
        import asyncio, warnings
        warnings.simplefilter("ignore", DeprecationWarning)

        async def main():
            await asyncio.sleep(0.01)
            return type(asyncio.get_running_loop()).__module__.split(".")[0]

        if hasattr(asyncio, "EventLoop") and __import__("sys").version_info >= (3, 14):
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
        else:
            loop = asyncio.get_event_loop()
        print(loop.run_until_complete(main()))
        loop.close()
        """,
    )
    proc = launch(loop_name, str(script))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == loop_name


def test_runner_and_new_event_loop_in_script(loop_name, script_dir):
    script = write(
        script_dir,
        "runner.py",
        """
        import asyncio

        async def main():
            return type(asyncio.get_running_loop()).__module__.split(".")[0]

        with asyncio.Runner() as runner:
            print(runner.run(main()))
        loop = asyncio.new_event_loop()
        print(loop.run_until_complete(main()))
        loop.close()
        """,
    )
    proc = launch(loop_name, str(script))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [loop_name, loop_name]


def test_script_choosing_its_own_loop_keeps_it(loop_name, script_dir):
    """A program that explicitly picks asyncio's loop gets it, as under plain python."""
    script = write(
        script_dir,
        "own_loop.py",
        """
        import asyncio

        async def main():
            return type(asyncio.get_running_loop()).__module__.split(".")[0]

        cls = getattr(asyncio, "EventLoop", None) or asyncio.SelectorEventLoop
        with asyncio.Runner(loop_factory=cls) as runner:
            print(runner.run(main()))
        """,
    )
    proc = launch(loop_name, str(script))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "asyncio"


def test_dash_m_module(loop_name, tmp_path):
    pkg = tmp_path / "demo_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    write(pkg, "tool.py", PROBE)
    proc = launch(loop_name, "-m", "demo_pkg.tool", "x", "--flag", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["name"] == "__main__"
    assert info["args"] == ["x", "--flag"]
    assert info["argv0"] == "tool.py"
    assert info["path0"] == str(tmp_path.resolve())
    assert info["loop"] == loop_name


def test_dash_m_package_main(loop_name, tmp_path):
    pkg = tmp_path / "runnable_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    write(pkg, "__main__.py", PROBE)
    proc = launch(loop_name, "-m", "runnable_pkg", "arg", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["args"] == ["arg"]
    assert info["loop"] == loop_name


def test_dash_m_module_sys_exit(loop_name, tmp_path):
    write(tmp_path, "exiter.py", "import sys\nsys.exit(7)\n")
    proc = launch(loop_name, "-m", "exiter", cwd=tmp_path)
    assert proc.returncode == 7, proc.stderr


def test_missing_script_exit_status_2(loop_name, tmp_path):
    proc = launch(loop_name, str(tmp_path / "does_not_exist.py"))
    assert proc.returncode == 2
    assert "does_not_exist.py" in proc.stderr


def test_missing_module_fails(loop_name, tmp_path):
    proc = launch(loop_name, "-m", "no_such_module_ferroloop_test", cwd=tmp_path)
    assert proc.returncode == 1
    assert "no_such_module_ferroloop_test" in proc.stderr


def test_python_m_ferroloop_without_arguments_prints_usage():
    proc = run_python("-m", "ferroloop")
    assert proc.returncode == 2
    assert "usage" in proc.stderr.lower()
    help_proc = run_python("-m", "ferroloop", "--help")
    assert help_proc.returncode == 0
    assert "usage" in help_proc.stdout.lower()


def test_seed_tutorial_script_runs_unmodified(loop_name, script_dir):
    script = write(
        script_dir,
        "tutorial.py",
        """
        import asyncio
        import time

        async def async_task(name, delay):
            await asyncio.sleep(delay)
            return f"{name} done"

        async def main():
            start = time.perf_counter()
            results = await asyncio.gather(
                async_task("A", 0.2), async_task("B", 0.2), async_task("C", 0.2)
            )
            elapsed = time.perf_counter() - start
            print(results, "concurrent" if elapsed < 0.5 else f"too slow: {elapsed}")

        asyncio.run(main())
        """,
    )
    proc = launch(loop_name, str(script))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['A done', 'B done', 'C done'] concurrent"


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.run(loop_factory=) is 3.12+")
def test_explicit_loop_factory_in_asyncio_run_is_respected(loop_name, script_dir):
    script = write(
        script_dir,
        "factory.py",
        """
        import asyncio

        async def main():
            return type(asyncio.get_running_loop()).__module__.split(".")[0]

        # asyncio.EventLoop is 3.13+; SelectorEventLoop is the same class on Linux.
        factory = getattr(asyncio, "EventLoop", asyncio.SelectorEventLoop)
        print(asyncio.run(main(), loop_factory=factory))
        """,
    )
    proc = launch(loop_name, str(script))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "asyncio"


def test_directory_with_dunder_main(loop_name, tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    write(app, "__main__.py", PROBE)
    proc = launch(loop_name, str(app), "arg", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["name"] == "__main__"
    assert info["args"] == ["arg"]
    assert info["path0"] == str(app.resolve())
    assert info["loop"] == loop_name
