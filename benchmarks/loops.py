"""Which event loop a benchmark process runs on.

Every benchmark process takes ``--loop asyncio|uvloop|ferroloop`` (or one of
the other loops a run may add) and runs its coroutine through
``asyncio.Runner(loop_factory=...)``, so all loops are set up exactly alike.
"""

import asyncio
import resource

#: The loops a run compares unless told otherwise.
LOOPS = ("asyncio", "uvloop", "ferroloop")
#: Loops a run compares only when asked (``--loops``); not installed by the
#: ``bench`` extra. rloop: another asyncio loop written in Rust.
OTHER_LOOPS = ("rloop",)
KNOWN_LOOPS = LOOPS + OTHER_LOOPS


def loop_factory(name):
    """Return a zero-argument callable creating a new loop of kind ``name``."""
    if name == "asyncio":
        return asyncio.new_event_loop
    if name in KNOWN_LOOPS:
        # uvloop, ferroloop and rloop all name their factory new_event_loop.
        return __import__(name).new_event_loop
    raise ValueError(f"unknown loop {name!r} (expected one of {', '.join(KNOWN_LOOPS)})")


def loop_version(name):
    if name == "asyncio":
        import platform

        return "CPython " + platform.python_version()
    mod = __import__(name)
    return str(getattr(mod, "__version__", "unknown"))


def loop_type_name(loop):
    t = type(loop)
    return f"{t.__module__}.{t.__qualname__}"


def run(name, main):
    """Run the coroutine function ``main`` on a fresh loop of kind ``name``."""
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(main())


def raise_nofile_limit():
    """Raise the soft RLIMIT_NOFILE to the hard limit (10k-connection tests)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def check(name):
    """Import ``name``, run a trivial coroutine on it, return a description.

    Raises whatever the loop raises, so the driver can report it verbatim.
    """

    async def probe():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.call_soon(fut.set_result, 42)
        assert await fut == 42
        await asyncio.sleep(0.001)
        return loop_type_name(loop)

    typ = run(name, probe)
    if name != "asyncio" and typ.startswith("asyncio."):
        raise RuntimeError(f"{name}'s factory returned a plain asyncio loop ({typ})")
    mod = __import__("asyncio" if name == "asyncio" else name)
    return {"loop": name, "type": typ, "version": loop_version(name), "file": mod.__file__}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(check(sys.argv[1])))
