"""Every public loop method, called with wrong arguments, fails (or not) as
asyncio's own loop does.

Each method is called on a fresh loop of each kind with sixteen kinds of bad
value in one argument; the outcomes (the exception's type, "ok", or "timeout"
for a call that waits) must be equal. The exceptions to that rule are
ferroloop's documented stricter checks (docs/compatibility.md, "Stricter
argument checks"), listed in STRICTER.
"""

from __future__ import annotations

import asyncio
import gc
import io
import socket
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from loop_helpers import make_loop_factory

# asyncio's pipe transports half-made from a bad pipe object fail in their
# __del__ (they lack the attributes their repr reads): noise from the oracle.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

BAD_VALUES = [
    None,
    1,
    -1,
    0,
    1.5,
    -1.5,
    float("nan"),
    float("inf"),
    2**70,
    "x",
    b"x",
    [],
    object(),
    True,
    "",
    b"",
]

Call = Callable[[asyncio.AbstractEventLoop, socket.socket, Any], Any]


def _callback(*args: Any) -> None:
    pass


CALLS: dict[str, Call] = {
    "call_soon(bad)": lambda loop, s, bad: loop.call_soon(bad),
    "call_soon(cb, context=bad)": lambda loop, s, bad: loop.call_soon(_callback, context=bad),
    "call_later(bad, cb)": lambda loop, s, bad: loop.call_later(bad, _callback),
    "call_later(0, bad)": lambda loop, s, bad: loop.call_later(0, bad),
    "call_at(bad, cb)": lambda loop, s, bad: loop.call_at(bad, _callback),
    "call_soon_threadsafe(bad)": lambda loop, s, bad: loop.call_soon_threadsafe(bad),
    "set_exception_handler(bad)": lambda loop, s, bad: loop.set_exception_handler(bad),
    "set_task_factory(bad)": lambda loop, s, bad: loop.set_task_factory(bad),
    "set_debug(bad)": lambda loop, s, bad: loop.set_debug(bad),
    "add_reader(bad, cb)": lambda loop, s, bad: loop.add_reader(bad, _callback),
    "add_writer(bad, cb)": lambda loop, s, bad: loop.add_writer(bad, _callback),
    "remove_reader(bad)": lambda loop, s, bad: loop.remove_reader(bad),
    "remove_writer(bad)": lambda loop, s, bad: loop.remove_writer(bad),
    "add_reader(sock, bad)": lambda loop, s, bad: loop.add_reader(s, bad),
    "add_signal_handler(bad, cb)": lambda loop, s, bad: loop.add_signal_handler(bad, _callback),
    "remove_signal_handler(bad)": lambda loop, s, bad: loop.remove_signal_handler(bad),
    "run_in_executor(bad, cb)": lambda loop, s, bad: loop.run_in_executor(bad, _callback),
    "set_default_executor(bad)": lambda loop, s, bad: loop.set_default_executor(bad),
    "create_task(bad)": lambda loop, s, bad: loop.create_task(bad),
    "run_until_complete(bad)": lambda loop, s, bad: loop.run_until_complete(bad),
    "sock_recv(bad, 1)": lambda loop, s, bad: loop.sock_recv(bad, 1),
    "sock_recv(sock, bad)": lambda loop, s, bad: loop.sock_recv(s, bad),
    "sock_sendall(sock, bad)": lambda loop, s, bad: loop.sock_sendall(s, bad),
    "sock_connect(sock, bad)": lambda loop, s, bad: loop.sock_connect(s, bad),
    "sock_connect(sock, (h, bad))": lambda loop, s, bad: loop.sock_connect(s, ("127.0.0.1", bad)),
    "sock_accept(bad)": lambda loop, s, bad: loop.sock_accept(bad),
    "sock_recv_into(sock, bad)": lambda loop, s, bad: loop.sock_recv_into(s, bad),
    "getaddrinfo(bad, 80)": lambda loop, s, bad: loop.getaddrinfo(bad, 80),
    "getaddrinfo(h, bad)": lambda loop, s, bad: loop.getaddrinfo("127.0.0.1", bad),
    "getaddrinfo(h, 80, family=bad)": lambda loop, s, bad: loop.getaddrinfo(
        "127.0.0.1", 80, family=bad
    ),
    "getnameinfo(bad)": lambda loop, s, bad: loop.getnameinfo(bad),
    "create_connection(f, bad, 1)": lambda loop, s, bad: loop.create_connection(
        asyncio.Protocol, bad, 1
    ),
    "create_connection(f, h, bad)": lambda loop, s, bad: loop.create_connection(
        asyncio.Protocol, "127.0.0.1", bad
    ),
    "create_connection(f, sock=bad)": lambda loop, s, bad: loop.create_connection(
        asyncio.Protocol, sock=bad
    ),
    "create_connection(f, h, 1, ssl=bad)": lambda loop, s, bad: loop.create_connection(
        asyncio.Protocol, "127.0.0.1", 1, ssl=bad
    ),
    "create_server(f, h, bad)": lambda loop, s, bad: loop.create_server(
        asyncio.Protocol, "127.0.0.1", bad
    ),
    "create_server(f, bad, 0)": lambda loop, s, bad: loop.create_server(asyncio.Protocol, bad, 0),
    "create_server(f, h, 0, backlog=bad)": lambda loop, s, bad: loop.create_server(
        asyncio.Protocol, "127.0.0.1", 0, backlog=bad
    ),
    "create_datagram_endpoint(f, local_addr=bad)": lambda loop, s, bad: (
        loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=bad)
    ),
    "create_datagram_endpoint(f, remote_addr=(h, bad))": lambda loop, s, bad: (
        loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=("127.0.0.1", bad))
    ),
    "create_unix_connection(f, bad)": lambda loop, s, bad: loop.create_unix_connection(
        asyncio.Protocol, bad
    ),
    "subprocess_exec(f, bad)": lambda loop, s, bad: loop.subprocess_exec(
        asyncio.SubprocessProtocol, bad
    ),
    "connect_read_pipe(f, bad)": lambda loop, s, bad: loop.connect_read_pipe(asyncio.Protocol, bad),
    "connect_write_pipe(f, bad)": lambda loop, s, bad: loop.connect_write_pipe(
        asyncio.Protocol, bad
    ),
    "sendfile(bad, file)": lambda loop, s, bad: loop.sendfile(bad, io.BytesIO(b"x")),
    "sock_sendfile(sock, bad)": lambda loop, s, bad: loop.sock_sendfile(s, bad),
    "call_exception_handler(bad)": lambda loop, s, bad: loop.call_exception_handler(bad),
}


def _key(value: Any) -> str:
    return "<object>" if type(value) is object else repr(value)


#: ferroloop's stricter checks (compatibility.md): a callback must be callable
#: when it is scheduled, a deadline must be a number.
_NOT_CALLABLE = {_key(value) for value in BAD_VALUES if not callable(value)}
STRICTER: dict[str, set[str]] = {
    "call_soon(bad)": _NOT_CALLABLE,
    "call_later(0, bad)": _NOT_CALLABLE,
    "call_soon_threadsafe(bad)": _NOT_CALLABLE,
    "add_reader(sock, bad)": _NOT_CALLABLE,
    "call_at(bad, cb)": {"'x'", "b'x'", "''", "b''", "[]", "<object>"},
}


def _outcome(loop: asyncio.AbstractEventLoop, call: Call, sock: socket.socket, bad: Any) -> str:
    try:
        result = call(loop, sock, bad)
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            try:
                result = loop.run_until_complete(asyncio.wait_for(result, 0.5))
            except TimeoutError:
                return "timeout"
        for opened in result if isinstance(result, tuple) else (result,):
            # A handle, a transport, a server: do not leave it behind.
            release = getattr(opened, "cancel", None) or getattr(opened, "close", None)
            if callable(release):
                release()
        return "ok"
    except BaseException as exc:
        return type(exc).__name__


def _outcomes(loop_name: str, name: str) -> dict[str, str]:
    factory = make_loop_factory(loop_name)
    outcomes = {}
    for bad in BAD_VALUES:
        loop = factory()
        sock = socket.socket()
        sock.setblocking(False)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outcomes[_key(bad)] = _outcome(loop, CALLS[name], sock, bad)
        finally:
            sock.close()
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
    gc.collect()  # half-made transports go now, under this test's warning filter
    return outcomes


@pytest.mark.parametrize("name", list(CALLS))
def test_bad_arguments_fail_as_on_asyncio(name: str) -> None:
    expected = _outcomes("asyncio", name)
    got = _outcomes("ferroloop", name)
    stricter = STRICTER.get(name, set())
    differences = {
        value: (expected[value], got[value])
        for value in expected
        if expected[value] != got[value] and not (value in stricter and got[value] == "TypeError")
    }
    assert differences == {}
