"""Run an unmodified asyncio program on ferroloop.

Usage::

    python -m ferroloop script.py [args...]
    python -m ferroloop -m module [args...]

This behaves like ``python script.py`` / ``python -m module``: the program runs
as ``__main__``, ``sys.argv[1:]`` holds the program's own arguments,
``sys.path[0]`` is the script's directory (the current directory for ``-m``),
``__file__`` is absolute, ``sys.exit(n)`` sets the exit status and an uncaught
exception prints its traceback (without this launcher's frames) and exits with
status 1. The asyncio loop is ferroloop's. Known differences: for a script,
``sys.argv[0]`` is the absolute path rather than the path as typed (runpy
sets it to the file it runs), and, as with any runpy-based launcher,
``sys.modules["__main__"]`` is only the program's module while it runs.

How ferroloop is installed
--------------------------
``asyncio.run()`` and ``asyncio.Runner()`` (without ``loop_factory``) both create
their loop by calling ``asyncio.events.new_event_loop()`` at run time, which
asks the event-loop policy for a loop. Two mechanisms can redirect that:

* Python 3.11-3.13: ``ferroloop.install()``, i.e. ferroloop's event-loop
  policy. On these versions ``asyncio.get_event_loop()`` still creates a loop
  implicitly through the policy when none is set (deprecated since 3.12 but
  functional), which the old ``loop = asyncio.get_event_loop();
  loop.run_until_complete(...)`` idiom relies on; only the policy covers that
  path as well as ``asyncio.run``, ``asyncio.Runner`` and
  ``asyncio.new_event_loop``. Policies are not deprecated on these versions,
  and a program that installs its own policy keeps it, exactly as under
  ``python script.py``.

* Python 3.14+: event-loop policies are deprecated and
  ``asyncio.get_event_loop()`` no longer creates loops, so no policy is used.
  Instead ``asyncio.events.new_event_loop`` (and its re-export
  ``asyncio.new_event_loop``) are replaced by a function returning a ferroloop
  loop. ``asyncio.run``/``asyncio.Runner`` look that function up on each call,
  so they pick it up. If the program installs an event-loop policy of its own,
  the replacement defers to it, so the program's explicit choice wins here too.

An explicit ``loop_factory=`` passed by the program is always respected.
"""

from __future__ import annotations

import asyncio
import os
import runpy
import sys
import types
import warnings
from asyncio import events
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import ferroloop

USAGE = """\
usage: python -m ferroloop script.py [args...]
       python -m ferroloop -m module [args...]

Run an asyncio program with ferroloop as its event loop.
"""


def _current_policy() -> Any:
    """The current event-loop policy, without 3.14's deprecation warning."""
    getter = getattr(events, "_get_event_loop_policy", None)
    if getter is not None:
        return getter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return events.get_event_loop_policy()


def _patch_new_event_loop() -> None:
    """Make ``asyncio.new_event_loop()`` (and so ``asyncio.run``) create ferroloop loops."""
    original: Callable[[], asyncio.AbstractEventLoop] = events.new_event_loop
    baseline = _current_policy()

    def new_event_loop() -> asyncio.AbstractEventLoop:
        """Create a ferroloop loop, unless the program installed its own policy."""
        if _current_policy() is not baseline:
            return original()
        return ferroloop.new_event_loop()

    new_event_loop.__qualname__ = new_event_loop.__name__
    new_event_loop.__module__ = "asyncio.events"
    events.new_event_loop = new_event_loop  # type: ignore[assignment]
    asyncio.new_event_loop = new_event_loop  # type: ignore[assignment]


def install_for_main() -> None:
    """Route every asyncio loop the program creates to ferroloop (see module docstring)."""
    if sys.version_info >= (3, 14):
        _patch_new_event_loop()
    else:
        ferroloop.install()


def _trim_traceback(tb: types.TracebackType | None) -> types.TracebackType | None:
    """Drop the leading frames that belong to this launcher and runpy."""
    own_files = {os.path.normcase(__file__), os.path.normcase(runpy.__file__ or "")}
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if os.path.normcase(filename) not in own_files and filename != "<frozen runpy>":
            break
        tb = tb.tb_next
    return tb


def _usage_error(message: str) -> NoReturn:
    sys.stderr.write(f"{USAGE}\nerror: {message}\n")
    raise SystemExit(2)


def parse_args(argv: Sequence[str]) -> tuple[str, str, list[str]]:
    """Split ``argv`` (without the program name) into (kind, target, program_args).

    ``kind`` is ``"module"`` or ``"path"``. Everything after the script or module
    name belongs to the program, including things that look like options.
    """
    args = list(argv)
    if not args:
        _usage_error("missing script or -m module")
    first = args[0]
    if first in ("-h", "--help"):
        sys.stdout.write(USAGE)
        raise SystemExit(0)
    if first == "-m":
        if len(args) < 2:
            _usage_error("argument -m: expected a module name")
        return "module", args[1], args[2:]
    if first.startswith("-m") and len(first) > 2:  # -mmodule, like python itself
        return "module", first[2:], args[1:]
    if first == "--":
        if len(args) < 2:
            _usage_error("missing script after --")
        return "path", args[1], args[2:]
    if first.startswith("-"):
        _usage_error(f"unknown option {first!r}")
    return "path", first, args[1:]


def run_program(kind: str, target: str, program_args: Sequence[str]) -> None:
    """Run the script or module as ``__main__`` with ferroloop installed."""
    install_for_main()
    if kind == "module":
        sys.argv = [target, *program_args]  # runpy replaces argv[0] by the module's file
        # sys.path[0] is already the current directory, as for `python -m`.
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        if not os.path.exists(target):
            sys.stderr.write(
                f"{sys.executable}: can't open file {os.path.abspath(target)!r}: "
                f"[Errno 2] No such file or directory\n"
            )
            raise SystemExit(2)
        path = os.path.abspath(target)
        sys.argv = [path, *program_args]  # runpy sets argv[0] to the path it runs
        if os.path.isfile(path):
            # For directories and zip files runpy puts the path itself first.
            sys.path[0] = os.path.dirname(os.path.realpath(path))
        runpy.run_path(path, run_name="__main__")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m ferroloop``."""
    kind, target, program_args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run_program(kind, target, program_args)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        # The default hook prints exc.__traceback__ whatever tb it is given.
        trimmed = _trim_traceback(exc.__traceback__)
        sys.excepthook(type(exc), exc.with_traceback(trimmed), trimmed)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
