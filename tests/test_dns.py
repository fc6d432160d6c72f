"""Tests for ferroloop.dns: getaddrinfo/getnameinfo must match the socket module exactly."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import ferroloop
import pytest
from ferroloop import dns
from loop_helpers import run_python

LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "ferroloop": ferroloop.new_event_loop,
}


@pytest.fixture(params=list(LOOP_FACTORIES))
def dns_loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh loop of each implementation; its executor is shut down afterwards."""
    loop = LOOP_FACTORIES[request.param]()
    try:
        yield loop
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    """A thread pool that counts the calls submitted to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.submitted: list[Any] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        self.submitted.append(fn)
        return super().submit(fn, *args, **kwargs)


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    """A comparable summary of calling `call`: its result, or its exception's type and args."""
    try:
        return ("ok", call())
    except Exception as exc:
        return ("raised", type(exc), exc.args)


def outcome_of(result: Any) -> tuple[Any, ...]:
    """`outcome` for an item of `asyncio.gather(..., return_exceptions=True)`."""
    if isinstance(result, BaseException):
        return ("raised", type(result), result.args)
    return ("ok", result)


# -- getaddrinfo grid -----------------------------------------------------------------------

AI_V4MAPPED = getattr(socket, "AI_V4MAPPED", 0)
AI_ALL = getattr(socket, "AI_ALL", 0)

HOSTS: list[Any] = [
    None,
    "",
    "127.0.0.1",
    "0.0.0.0",
    "::1",
    "::",
    "::ffff:127.0.0.1",
    "fe80::1%lo",
    "fe80::1%1",
    "fe80::1%no-such-if",
    "FE80::1%LO",
    "localhost",
    b"localhost",
    b"127.0.0.1",
    b"fe80::1%lo",
    "1.2.3",  # numeric for inet_aton-style parsers, not for inet_pton
    "127.0.0.1\x00x",
    "fe80::1%" + "z" * 70,  # the IDNA codec rejects the over-long "label"
    "\udcff",
    123,
    bytearray(b"127.0.0.1"),
]
PORTS: list[Any] = [None, 0, 80, 65535, 70000, -1, "80", "0080", b"443", "http", "no-such-svc", 1.5]
FAMILIES = [0, socket.AF_INET, socket.AF_INET6]
TYPE_PROTOS = [
    (0, 0),
    (socket.SOCK_STREAM, 0),
    (socket.SOCK_DGRAM, socket.IPPROTO_UDP),
    (socket.SOCK_STREAM, socket.IPPROTO_UDP),
    (socket.SOCK_RAW, 0),
]
FLAGS = [
    0,
    socket.AI_PASSIVE,
    socket.AI_NUMERICHOST,
    socket.AI_CANONNAME,
    socket.AI_NUMERICSERV,
    socket.AI_ADDRCONFIG,
    AI_V4MAPPED | AI_ALL,
    socket.AI_PASSIVE | socket.AI_CANONNAME | socket.AI_NUMERICSERV,
]
NAMES = ("localhost", b"localhost")


def _needs_dns(host: Any, family: int) -> bool:
    """True for grid entries that would query DNS, which is slow or flaky in test sandboxes.

    /etc/hosts often lists localhost only for IPv4, so an AF_INET6 lookup falls through to
    DNS; test_getaddrinfo_dns_names covers those few cases separately.
    """
    return host in NAMES and family == socket.AF_INET6


GRID = [
    (host, port, family, type_, proto, flags)
    for host, port, family, (type_, proto), flags in itertools.product(
        HOSTS, PORTS, FAMILIES, TYPE_PROTOS, FLAGS
    )
    if not _needs_dns(host, family)
]


@functools.cache
def expected_grid() -> list[tuple[Any, ...]]:
    """`socket.getaddrinfo`'s outcome for every GRID entry (computed once per session)."""
    return [outcome(functools.partial(socket.getaddrinfo, *args)) for args in GRID]


async def _resolve_grid(
    resolve: Callable[..., Any], grid: list[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    calls = [
        resolve(host, port, family=family, type=type_, proto=proto, flags=flags)
        for host, port, family, type_, proto, flags in grid
    ]
    return [outcome_of(r) for r in await asyncio.gather(*calls, return_exceptions=True)]


def _assert_same(actual: list[tuple[Any, ...]], expected: list[tuple[Any, ...]]) -> None:
    mismatches = [
        (args, want, got)
        for args, want, got in zip(GRID, expected, actual, strict=True)
        if want != got
    ]
    assert not mismatches, f"{len(mismatches)} mismatches, e.g. {mismatches[:3]}"


@pytest.mark.parametrize("via", ["loop-method", "dns-module"])
def test_getaddrinfo_grid_matches_socket(dns_loop: asyncio.AbstractEventLoop, via: str) -> None:
    """Every host/port/family/type/proto/flags combination agrees with socket.getaddrinfo.

    On asyncio's loop, "loop-method" is the reference behaviour and "dns-module" runs
    ferroloop.dns on a stock loop; ferroloop's method is ferroloop.dns, so it runs once.
    """
    if via == "dns-module" and not isinstance(dns_loop, asyncio.BaseEventLoop):
        pytest.skip("ferroloop's getaddrinfo method already is dns.getaddrinfo")
    if via == "loop-method":
        resolve = dns_loop.getaddrinfo
    else:
        resolve = functools.partial(dns.getaddrinfo, dns_loop)
    actual = dns_loop.run_until_complete(_resolve_grid(resolve, GRID))
    _assert_same(actual, expected_grid())


def test_grid_covers_both_paths() -> None:
    """The grid exercises the fast path, the executor path, results and errors."""
    fast = [dns._is_fast(host, port, flags) for host, port, _, _, _, flags in GRID]
    assert 0.2 < sum(fast) / len(fast) < 0.8
    kinds = {(is_fast, result[0]) for is_fast, result in zip(fast, expected_grid(), strict=True)}
    assert kinds == {(True, "ok"), (True, "raised"), (False, "ok"), (False, "raised")}


@pytest.mark.parametrize(
    ("host", "port", "family", "flags"),
    [
        ("localhost", 80, socket.AF_INET6, 0),
        (b"localhost", "http", socket.AF_INET6, socket.AI_CANONNAME),
        ("localhost", None, socket.AF_INET6, socket.AI_V4MAPPED),
        (b"\xff", 80, 0, 0),
        (b"\xff", 80, 0, socket.AI_NUMERICHOST),
        ("ünïcode.invalid", 80, 0, socket.AI_NUMERICHOST),
    ],
)
def test_getaddrinfo_dns_names(
    dns_loop: asyncio.AbstractEventLoop, host: Any, port: Any, family: int, flags: int
) -> None:
    """The few lookups that (may) reach DNS agree with socket.getaddrinfo too."""
    want = outcome(lambda: socket.getaddrinfo(host, port, family, 0, 0, flags))
    got = outcome(
        lambda: dns_loop.run_until_complete(
            dns_loop.getaddrinfo(host, port, family=family, flags=flags)
        )
    )
    assert got == want


@pytest.mark.parametrize(
    "kwargs",
    [
        {"family": "x"},
        {"family": 1.5},
        {"type": None},
        {"proto": "6"},
        {"flags": 1.5},
        {"flags": -1},
        {"flags": 2**40},
        {"family": 2**40},
        {"family": socket.AF_UNIX},
        {"family": 12345},
        {"type": 12345},
        {"proto": 12345},
    ],
)
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_getaddrinfo_bad_arguments(
    dns_loop: asyncio.AbstractEventLoop, host: str, kwargs: dict[str, Any]
) -> None:
    """Badly typed or out-of-range arguments raise what socket.getaddrinfo raises."""
    args = {"family": 0, "type": 0, "proto": 0, "flags": 0, **kwargs}
    want = outcome(lambda: socket.getaddrinfo(host, 80, **args))
    got = outcome(lambda: dns_loop.run_until_complete(dns_loop.getaddrinfo(host, 80, **args)))
    assert got == want


# -- fast path ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "flags", "fast"),
    [
        (None, 80, 0, True),
        (None, None, 0, True),
        ("127.0.0.1", 80, 0, True),
        ("127.0.0.1", "8080", socket.AI_PASSIVE | socket.AI_NUMERICSERV, True),
        ("::1", b"80", socket.AI_CANONNAME, True),
        (b"::1", None, AI_V4MAPPED | AI_ALL, True),
        ("fe80::1%lo", 0, 0, True),
        (b"fe80::1%eth0", 65535, socket.AI_NUMERICHOST, True),
        ("::ffff:1.2.3.4", "00443", 0, True),
        ("127.0.0.1", 80, socket.AI_PASSIVE | socket.AI_CANONNAME, True),
        # Hosts that need (or may need) NSS, or whose handling is not provably local.
        ("", 80, 0, False),  # glibc looks '' up in /etc/hosts and DNS
        ("*", 80, 0, False),
        ("localhost", 80, 0, False),
        ("1.2.3", 80, 0, False),
        ("127.0.0.1%lo", 80, 0, False),  # a zone only makes sense on IPv6
        ("\uff11\uff12\uff17.\uff10.\uff10.\uff11", 80, 0, False),  # fullwidth digits
        ("127.0.0.1\x00x", 80, 0, False),
        (bytearray(b"127.0.0.1"), 80, 0, False),
        (type("S", (str,), {})("127.0.0.1"), 80, 0, False),
        # Ports that need /etc/services: names, and numbers glibc reads as negative.
        ("127.0.0.1", "http", 0, False),
        ("127.0.0.1", -1, 0, False),
        ("127.0.0.1", 2**31, 0, False),
        ("127.0.0.1", "4294967295", 0, False),
        ("127.0.0.1", " 80", 0, False),
        ("127.0.0.1", "+80", 0, False),
        ("127.0.0.1", "٨٠", 0, False),
        ("127.0.0.1", True, 0, False),
        ("127.0.0.1", 80.0, 0, False),
        # Flags that reach beyond the numeric parser.
        ("127.0.0.1", 80, socket.AI_ADDRCONFIG, False),
        ("127.0.0.1", 80, 0x40, False),  # glibc AI_IDN
        ("127.0.0.1", 80, 1.0, False),
    ],
)
def test_fast_path_classification(host: Any, port: Any, flags: Any, fast: bool) -> None:
    """Only calls that cannot reach the name service switch take the fast path."""
    assert dns._is_fast(host, port, flags) is fast


@pytest.mark.parametrize(
    ("host", "port", "flags", "off_thread"),
    [
        ("127.0.0.1", 80, 0, False),
        ("::1", "443", socket.AI_PASSIVE, False),
        (None, 0, socket.AI_PASSIVE, False),
        ("fe80::1%lo", None, 0, False),
        ("localhost", 80, 0, True),
        ("127.0.0.1", "http", 0, True),
        ("", 80, 0, True),
        ("127.0.0.1", 80, socket.AI_ADDRCONFIG, True),
    ],
)
def test_lookup_thread_only_when_needed(
    dns_loop: asyncio.AbstractEventLoop, host: Any, port: Any, flags: int, off_thread: bool
) -> None:
    """Numeric lookups run in the loop's thread; lookups that may need NSS run in
    another: the executor for asyncio's loop, the native resolver's threads for
    ferroloop's (so its executor is not used)."""
    executor = CountingExecutor()
    dns_loop.set_default_executor(executor)
    got = outcome(
        lambda: dns_loop.run_until_complete(dns.getaddrinfo(dns_loop, host, port, flags=flags))
    )
    assert got == outcome(lambda: socket.getaddrinfo(host, port, flags=flags))
    native = isinstance(dns_loop, ferroloop.EventLoop)
    assert len(executor.submitted) == (off_thread and not native)
    if native:
        assert (dns_loop._dns_resolver is not None) == off_thread


def test_name_lookup_does_not_block_the_loop(
    dns_loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a name lookup is in progress, the loop keeps running callbacks."""
    real_getaddrinfo = socket.getaddrinfo
    released = threading.Event()

    def slow_getaddrinfo(*args: Any) -> Any:
        # Only the loop can set `released`: if we ran on the loop thread this would time out.
        assert released.wait(10), "getaddrinfo blocked the event loop"
        return real_getaddrinfo(*args)

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)

    async def main() -> list[Any]:
        asyncio.get_running_loop().call_later(0.01, released.set)
        return await dns.getaddrinfo(dns_loop, "localhost", 80, type=socket.SOCK_STREAM)

    assert dns_loop.run_until_complete(main()) == real_getaddrinfo(
        "localhost", 80, type=socket.SOCK_STREAM
    )


# -- lookups off the loop's thread ---------------------------------------------------------


def test_name_lookup_results_have_socket_types(dns_loop: asyncio.AbstractEventLoop) -> None:
    """The entries are socket's enum members and plain tuples, as socket.getaddrinfo's."""
    got = dns_loop.run_until_complete(dns_loop.getaddrinfo("localhost", "http"))
    want = socket.getaddrinfo("localhost", "http")
    assert got == want
    assert [tuple(map(type, entry)) for entry in got] == [tuple(map(type, entry)) for entry in want]
    assert [type(entry[4][0]) for entry in got] == [str] * len(got)


def test_many_concurrent_name_lookups(dns_loop: asyncio.AbstractEventLoop) -> None:
    """More lookups at once than lookup threads: every one gets its own answer."""
    ports = list(range(1000, 1200))

    async def main() -> list[Any]:
        lookups = [
            dns_loop.getaddrinfo("localhost", port, type=socket.SOCK_STREAM) for port in ports
        ]
        return await asyncio.gather(*lookups)

    answers = dns_loop.run_until_complete(main())
    assert answers == [socket.getaddrinfo("localhost", p, type=socket.SOCK_STREAM) for p in ports]


def test_cancelled_name_lookup_leaves_the_loop_working(dns_loop: asyncio.AbstractEventLoop) -> None:
    """A lookup whose waiter was cancelled finishes in the background; its answer is dropped."""

    async def main() -> list[Any]:
        lookups = [asyncio.ensure_future(dns_loop.getaddrinfo("localhost", 80)) for _ in range(20)]
        await asyncio.sleep(0)
        for lookup in lookups:
            lookup.cancel()
        await asyncio.gather(*lookups, return_exceptions=True)
        assert all(lookup.cancelled() for lookup in lookups)
        await asyncio.sleep(0.05)  # the answers arrive and are dropped
        return await dns_loop.getaddrinfo("localhost", 80)

    assert dns_loop.run_until_complete(main()) == socket.getaddrinfo("localhost", 80)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_name_lookup_on_a_closed_loop_raises(host: str) -> None:
    """Numeric hosts too: asyncio's lookups all hop to the executor, which checks."""
    for factory in LOOP_FACTORIES.values():
        loop = factory()
        loop.close()
        lookup = loop.getaddrinfo(host, 80)
        with pytest.raises(RuntimeError, match="closed"):
            lookup.send(None)
        lookup.close()


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_closing_the_loop_releases_what_name_lookups_used() -> None:
    """No descriptor stays open after a loop that resolved names is closed."""
    for factory in LOOP_FACTORIES.values():
        before = _open_descriptors()
        loop = factory()
        loop.run_until_complete(loop.getaddrinfo("localhost", 80))
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        del loop
        assert _open_descriptors() == before


def test_name_lookups_raise_the_audit_event(dns_loop: asyncio.AbstractEventLoop) -> None:
    """socket.getaddrinfo's audit event, with the caller's arguments, on both loops."""
    _AUDITED.clear()
    _AUDITING.set()
    try:
        dns_loop.run_until_complete(
            dns_loop.getaddrinfo("localhost", "http", type=socket.SOCK_STREAM)
        )
    finally:
        _AUDITING.clear()
    event = ("localhost", "http", 0, int(socket.SOCK_STREAM), 0)
    assert [(args, list(map(type, args))) for args in _AUDITED] == [
        (event, [str, str, int, int, int])
    ]


_AUDITED: list[tuple[Any, ...]] = []
_AUDITING = threading.Event()


def _record_getaddrinfo_audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.getaddrinfo" and _AUDITING.is_set():
        _AUDITED.append(args)


sys.addaudithook(_record_getaddrinfo_audit)


def _lookup_threads() -> list[str]:
    """The names of this process's threads that are ferroloop's lookup threads."""
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                names.append(comm.read().strip())
        except FileNotFoundError:  # the thread exited meanwhile
            pass
    return [name for name in names if name == "ferroloop-dns"]


def _lookup_threads_after_exit(deadline: float = 5.0) -> list[str]:
    """The lookup threads left once joined ones are gone: a joined thread's
    entry in /proc can outlive pthread_join by a moment (the kernel reaps an
    exited thread after clearing the tid join waits for), so look again
    until the list is empty or the deadline passes."""
    end = time.monotonic() + deadline
    while (threads := _lookup_threads()) and time.monotonic() < end:
        time.sleep(0.01)
    return threads


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc/self/task")
def test_lookup_threads_end_with_the_last_loop_using_them() -> None:
    """ferroloop only: as asyncio's executor threads end with asyncio.run, the
    lookup threads end when the last loop that resolved names is closed (a later
    fork then happens in a single-threaded process), and start again when needed."""
    first, second = ferroloop.new_event_loop(), ferroloop.new_event_loop()
    for loop in (first, second):
        loop.run_until_complete(loop.getaddrinfo("localhost", 80))
    assert _lookup_threads()
    first.close()
    assert second.run_until_complete(second.getaddrinfo("localhost", 80))
    second.close()
    assert _lookup_threads_after_exit() == []
    assert ferroloop.run(asyncio.sleep(0, "no lookups")) == "no lookups"

    async def lookup() -> Any:
        return await asyncio.get_running_loop().getaddrinfo("localhost", 80)

    assert ferroloop.run(lookup()) == socket.getaddrinfo("localhost", 80)
    assert _lookup_threads_after_exit() == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_resolves_names() -> None:
    """ferroloop only: a child forked after the parent resolved names (its lookup
    threads are not inherited) resolves with a loop of its own."""
    script = (
        "import asyncio, os, ferroloop\n"
        "async def lookup():\n"
        "    return await asyncio.get_running_loop().getaddrinfo('localhost', 80)\n"
        "parent = ferroloop.run(lookup())\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if ferroloop.run(lookup()) == parent else 1)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status), ferroloop.run(lookup()) == parent)\n"
    )
    result = run_python("-c", script, timeout=30)
    assert result.stdout.split() == ["0", "True"], result.stderr


# -- debug mode -----------------------------------------------------------------------------


def _debug_records(
    loop: asyncio.AbstractEventLoop,
    caplog: pytest.LogCaptureFixture,
    resolve: Callable[..., Any],
    slow: float,
) -> list[tuple[int, str]]:
    loop.set_debug(True)
    loop.slow_callback_duration = slow  # type: ignore[attr-defined]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        loop.run_until_complete(
            resolve("127.0.0.1", 80, family=socket.AF_INET, type=socket.SOCK_STREAM)
        )
        loop.run_until_complete(resolve("localhost", "http", flags=socket.AI_CANONNAME))
        with pytest.raises(socket.gaierror):
            loop.run_until_complete(resolve("127.0.0.1", "no-such-svc"))
    return [
        (r.levelno, re.sub(r"took \d+\.\d{3}ms", "took Tms", r.getMessage()))
        for r in caplog.records
        if "address info" in r.getMessage()
    ]


@pytest.mark.parametrize("slow", [0.0, 60.0])
def test_debug_logging_matches_asyncio(
    dns_loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture, slow: float
) -> None:
    """In debug mode, lookups are logged exactly as asyncio's own loop logs them."""
    reference_loop = asyncio.new_event_loop()
    try:
        want = _debug_records(reference_loop, caplog, reference_loop.getaddrinfo, slow)
    finally:
        reference_loop.close()
    got = _debug_records(dns_loop, caplog, functools.partial(dns.getaddrinfo, dns_loop), slow)
    assert got == want
    slow_level = logging.INFO if slow == 0.0 else logging.DEBUG
    assert [level for level, _ in got] == [logging.DEBUG, slow_level] * 2 + [logging.DEBUG]
    assert got[1][1].startswith("Getting address info 127.0.0.1:80, family=")


def test_debug_mode_off_logs_nothing(
    dns_loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    dns_loop.set_debug(False)
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        dns_loop.run_until_complete(dns.getaddrinfo(dns_loop, "127.0.0.1", 80))
        dns_loop.run_until_complete(dns.getaddrinfo(dns_loop, "localhost", 80))
    assert not [r for r in caplog.records if "address info" in r.getMessage()]


# -- getnameinfo ----------------------------------------------------------------------------

SOCKADDRS: list[Any] = [
    ("127.0.0.1", 80),
    ("127.0.0.1", 0),
    ("::1", 443, 0, 0),
    ("fe80::1", 80, 0, 1),
    ("fe80::1%lo", 80),
    ("::ffff:127.0.0.1", 22),
    ("127.0.0.1", 80, 0, 0),  # an IPv4 address with the IPv6 tuple shape
    ("::1", 80, 0, 2**33),
    ("127.0.0.1", -1),
    ("127.0.0.1", "80"),
    ("127.0.0.1",),
    (b"127.0.0.1", 80),
    "127.0.0.1",
    None,
]
NI_FLAGS = [
    0,
    socket.NI_NUMERICHOST,
    socket.NI_NUMERICSERV,
    socket.NI_NUMERICHOST | socket.NI_NUMERICSERV,
    socket.NI_DGRAM,
    socket.NI_NAMEREQD | socket.NI_NUMERICSERV,
    socket.NI_NOFQDN,
]


def _ni_needs_dns(sockaddr: Any, flags: int) -> bool:
    """True if getnameinfo would ask DNS for a PTR record (only 127.0.0.1 is in /etc/hosts)."""
    return (
        isinstance(sockaddr, tuple)
        and len(sockaddr) >= 2
        and sockaddr[0] != "127.0.0.1"
        and not flags & socket.NI_NUMERICHOST
    )


NI_GRID = [
    (sa, fl) for sa, fl in itertools.product(SOCKADDRS, NI_FLAGS) if not _ni_needs_dns(sa, fl)
]


def test_getnameinfo_grid_matches_socket(dns_loop: asyncio.AbstractEventLoop) -> None:
    """getnameinfo agrees with socket.getnameinfo, errors included, via the executor."""
    want = [outcome(functools.partial(socket.getnameinfo, sa, fl)) for sa, fl in NI_GRID]
    executor = CountingExecutor()
    dns_loop.set_default_executor(executor)

    async def main() -> list[Any]:
        calls = [dns_loop.getnameinfo(sa, fl) for sa, fl in NI_GRID]
        return await asyncio.gather(*calls, return_exceptions=True)

    got = [outcome_of(r) for r in dns_loop.run_until_complete(main())]
    mismatches = [(a, w, g) for a, w, g in zip(NI_GRID, want, got, strict=True) if w != g]
    assert not mismatches, mismatches[:3]
    assert len(executor.submitted) == len(NI_GRID)
    assert {w[0] for w in want} == {"ok", "raised"}
