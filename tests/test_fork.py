"""os.fork() after a loop exists (gunicorn/uvicorn workers fork).

A forked child shares the parent's epoll instance (epoll descriptors are
shared across fork, not copied), so whatever the child registers or removes
on an inherited loop changes what the *parent* waits for. The portable rule,
on asyncio too: a child uses a loop of its own. The first test checks that
rule on both loops; the others check what ferroloop adds (see
docs/design.md, "fork"): an inherited loop cannot disturb the parent even if
the child closes its servers and the loop, and refuses to run in the child.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading

import pytest

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
]


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> None:
    """Fork from a single-threaded process, as a forking server would.

    A previous test's loop closes its default executor without waiting, so a
    worker may still be exiting; forking then makes Python 3.12+ warn that the
    process is multi-threaded. Give such threads a moment to finish first.
    """
    for thread in threading.enumerate():
        if thread is not threading.main_thread():
            thread.join(timeout=5)


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def _blocking_echo(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        return sock.recv(len(payload))


async def _child_round_trip(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"from the child")
    data = await reader.readexactly(len(b"from the child"))
    writer.close()
    await writer.wait_closed()
    return data


def _fork(child: object) -> int:
    """Fork; the child runs `child()` and exits 0 if it returned True, else 1."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            code = 0 if child() else 1  # type: ignore[operator]
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


async def _wait_child(pid: int) -> int:
    loop = asyncio.get_running_loop()
    _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_child_with_its_own_loop_talks_to_the_parent(loop_factory) -> None:
    """Parent serves, child forks and uses a new loop of its own: both work."""
    parent_loop = loop_factory()
    try:
        server = parent_loop.run_until_complete(parent_loop.create_server(Echo, "127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]

        def child() -> bool:
            own = loop_factory()
            try:
                return own.run_until_complete(_child_round_trip(port)) == b"from the child"
            finally:
                own.close()

        pid = _fork(child)
        assert parent_loop.run_until_complete(_wait_child(pid)) == 0
        # The parent still serves after the child is gone.
        echoed = parent_loop.run_until_complete(
            parent_loop.run_in_executor(None, _blocking_echo, port, b"parent")
        )
        assert echoed == b"parent"
        server.close()
        parent_loop.run_until_complete(server.wait_closed())
    finally:
        parent_loop.close()


def test_child_closing_an_inherited_loop_leaves_the_parent_alone(loop_name, loop_factory) -> None:
    """ferroloop only: a child that closes the inherited server and loop does
    not unregister anything from the parent's (shared) epoll. On asyncio 3.11
    the same close would remove the parent's own registrations."""
    if loop_name == "asyncio":
        pytest.skip("ferroloop-only guarantee: asyncio shares epoll state with the child")
    parent_loop = loop_factory()
    try:
        server = parent_loop.run_until_complete(parent_loop.create_server(Echo, "127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]

        def child() -> bool:
            server.close()
            parent_loop.close()
            own = loop_factory()
            try:
                own.run_until_complete(asyncio.sleep(0.01))
            finally:
                own.close()
            return True

        pid = _fork(child)
        assert parent_loop.run_until_complete(_wait_child(pid)) == 0
        for i in range(3):
            payload = f"still serving {i}".encode()
            echoed = parent_loop.run_until_complete(
                parent_loop.run_in_executor(None, _blocking_echo, port, payload)
            )
            assert echoed == payload
        server.close()
        parent_loop.run_until_complete(server.wait_closed())
    finally:
        parent_loop.close()


def test_inherited_loop_refuses_to_run_in_the_child(loop_name, loop_factory) -> None:
    """ferroloop only: running a loop created before fork raises RuntimeError
    in the child, instead of silently sharing the parent's epoll."""
    if loop_name == "asyncio":
        pytest.skip("ferroloop-only guarantee")
    parent_loop = loop_factory()
    try:

        def child() -> bool:
            try:
                parent_loop.run_until_complete(asyncio.sleep(0))
            except RuntimeError as exc:
                return "fork" in str(exc)
            return False

        pid = _fork(child)
        assert parent_loop.run_until_complete(_wait_child(pid)) == 0
        # ...while the parent's loop keeps working.
        assert parent_loop.run_until_complete(asyncio.sleep(0, result=42)) == 42
    finally:
        parent_loop.close()
