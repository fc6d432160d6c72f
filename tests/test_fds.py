"""add_reader / add_writer / remove_*: file-descriptor watching, level-triggered."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator

import pytest


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


class FilenoOnly:
    """An object that is not a socket but has fileno(), like many wrappers."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


def as_kind(sock: socket.socket, kind: str):
    return {"int": sock.fileno(), "socket": sock, "fileno-object": FilenoOnly(sock.fileno())}[kind]


def run_until(loop, predicate, timeout: float = 5.0) -> None:
    async def waiter():
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not reached")
            await asyncio.sleep(0.001)

    loop.run_until_complete(waiter())


KINDS = ["int", "socket", "fileno-object"]


@pytest.mark.parametrize("kind", KINDS)
def test_add_reader_called_when_readable(loop, pair, kind):
    a, b = pair
    got = []

    def on_readable(tag):
        got.append((tag, a.recv(100)))

    loop.add_reader(as_kind(a, kind), on_readable, "tag")
    b.send(b"hello")
    run_until(loop, lambda: got)
    assert got == [("tag", b"hello")]
    assert loop.remove_reader(as_kind(a, kind)) is True
    assert loop.remove_reader(as_kind(a, kind)) is False


@pytest.mark.parametrize("kind", KINDS)
def test_add_writer_called_when_writable(loop, pair, kind):
    a, b = pair
    calls = []

    def on_writable():
        calls.append(1)
        loop.remove_writer(as_kind(a, kind))
        a.send(b"x")

    loop.add_writer(as_kind(a, kind), on_writable)
    run_until(loop, lambda: calls)
    assert calls == [1]
    assert b.recv(10) == b"x"
    assert loop.remove_writer(a) is False


def test_remove_returns_false_when_not_registered(loop, pair):
    a, _ = pair
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False
    loop.add_reader(a, lambda: None)
    # Reader and writer are independent.
    assert loop.remove_writer(a) is False
    assert loop.remove_reader(a) is True


def test_reader_is_level_triggered(loop, pair):
    """A reader that does not drain the socket keeps being called."""
    a, b = pair
    calls = 0

    def on_readable():
        nonlocal calls
        calls += 1
        if calls == 5:
            loop.remove_reader(a)

    loop.add_reader(a, on_readable)
    b.send(b"never read")
    run_until(loop, lambda: calls >= 5)
    run_until(loop, lambda: True)  # one more iteration: no further calls
    assert calls == 5
    assert a.recv(100) == b"never read"


def test_reader_draining_partially_is_called_again(loop, pair):
    a, b = pair
    chunks = []

    def on_readable():
        chunks.append(a.recv(3))

    loop.add_reader(a, on_readable)
    b.send(b"abcdefghi")
    run_until(loop, lambda: b"".join(chunks) == b"abcdefghi")
    loop.remove_reader(a)
    assert chunks == [b"abc", b"def", b"ghi"]


def test_writer_is_level_triggered(loop, pair):
    a, _ = pair
    calls = 0

    def on_writable():
        nonlocal calls
        calls += 1
        if calls == 3:
            loop.remove_writer(a)

    loop.add_writer(a, on_writable)
    run_until(loop, lambda: calls >= 3)
    run_until(loop, lambda: True)
    assert calls == 3


def test_replacing_reader(loop, pair):
    a, b = pair
    got = []
    loop.add_reader(a, lambda: got.append(("old", a.recv(100))))
    loop.add_reader(a, lambda: got.append(("new", a.recv(100))))
    b.send(b"data")
    run_until(loop, lambda: got)
    assert got == [("new", b"data")]
    assert loop.remove_reader(a) is True
    assert loop.remove_reader(a) is False


def test_replacing_reader_from_within_callback(loop, pair):
    a, b = pair
    got = []

    def second():
        got.append(("second", a.recv(100)))

    def first():
        got.append(("first", a.recv(100)))
        loop.add_reader(a, second)

    loop.add_reader(a, first)
    b.send(b"1")
    run_until(loop, lambda: len(got) == 1)
    b.send(b"2")
    run_until(loop, lambda: len(got) == 2)
    loop.remove_reader(a)
    assert got == [("first", b"1"), ("second", b"2")]


def test_reader_and_writer_on_same_fd(loop, pair):
    a, b = pair
    events = []

    def on_writable():
        events.append("w")
        loop.remove_writer(a)
        a.send(b"ping")

    def on_readable():
        events.append(("r", a.recv(100)))
        loop.remove_reader(a)

    loop.add_reader(a, on_readable)
    loop.add_writer(a, on_writable)
    run_until(loop, lambda: "w" in events)
    assert b.recv(100) == b"ping"
    b.send(b"pong")
    run_until(loop, lambda: len(events) == 2)
    assert events == ["w", ("r", b"pong")]


def test_removing_writer_keeps_reader(loop, pair):
    a, b = pair
    got = []
    loop.add_writer(a, lambda: None)
    loop.add_reader(a, lambda: got.append(a.recv(100)))
    assert loop.remove_writer(a) is True
    b.send(b"still reading")
    run_until(loop, lambda: got)
    assert got == [b"still reading"]
    assert loop.remove_reader(a) is True


def test_reader_removed_by_earlier_callback_is_not_called(loop, pair):
    a, b = pair
    a2, b2 = socket.socketpair()
    try:
        calls = []

        def first():
            calls.append("first")
            a.recv(100)
            loop.remove_reader(a2)
            loop.remove_reader(a)

        def second():
            calls.append("second")
            a2.recv(100)
            loop.remove_reader(a)
            loop.remove_reader(a2)

        loop.add_reader(a, first)
        loop.add_reader(a2, second)
        b.send(b"x")
        b2.send(b"y")
        run_until(loop, lambda: calls)
        run_until(loop, lambda: True)
        # Both became readable in the same poll; whichever ran first removed
        # the other, which must then not run.
        assert calls in (["first"], ["second"])
    finally:
        a2.close()
        b2.close()


def test_eof_makes_reader_readable(loop, pair):
    a, b = pair
    got = []

    def on_readable():
        got.append(a.recv(100))
        loop.remove_reader(a)

    loop.add_reader(a, on_readable)
    b.shutdown(socket.SHUT_WR)
    run_until(loop, lambda: got)
    assert got == [b""]


def test_reader_with_pipe(loop):
    r, w = os.pipe()
    try:
        got = []

        def on_readable():
            got.append(os.read(r, 100))
            loop.remove_reader(r)

        loop.add_reader(r, on_readable)
        os.write(w, b"through a pipe")
        run_until(loop, lambda: got)
        assert got == [b"through a pipe"]
    finally:
        os.close(r)
        os.close(w)


def test_exception_in_reader_goes_to_handler(loop, pair):
    a, b = pair
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def on_readable():
        a.recv(100)
        raise ValueError("reader failed")

    loop.add_reader(a, on_readable)
    b.send(b"x")
    run_until(loop, lambda: contexts)
    loop.remove_reader(a)
    assert isinstance(contexts[0]["exception"], ValueError)


def test_many_fds(loop):
    pairs = [socket.socketpair() for _ in range(200)]
    try:
        got = set()

        def on_readable(i, sock):
            sock.recv(10)
            got.add(i)
            loop.remove_reader(sock)

        for i, (a, _) in enumerate(pairs):
            loop.add_reader(a, on_readable, i, a)
        for _, b in pairs:
            b.send(b"x")
        run_until(loop, lambda: len(got) == 200)
        assert got == set(range(200))
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_sock_recv_sendall_on_nonblocking_socketpair(loop_factory):
    from loop_helpers import run

    async def main():
        lp = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        try:
            await lp.sock_sendall(a, b"hello " * 1000)
            data = b""
            while len(data) < 6000:
                data += await lp.sock_recv(b, 65536)
            return data
        finally:
            a.close()
            b.close()

    assert run(loop_factory, main) == b"hello " * 1000


def _attempt(fn, *args):
    try:
        return fn(*args)
    except ValueError as exc:
        return f"ValueError: {exc}"


def test_remove_after_the_file_object_was_closed(loop):
    """A socket closed while watched can still be unwatched through the same
    object (asyncio's selector finds the registration by the object; anyio
    relies on it). A closed object that is not watched is an invalid descriptor."""

    async def main():
        reading, peer = socket.socketpair()
        loop.add_reader(reading, lambda: None)
        reading.close()
        out = [_attempt(loop.remove_reader, reading), _attempt(loop.remove_reader, reading)]
        writing, peer2 = socket.socketpair()
        loop.add_writer(writing, lambda: None)
        writing.close()
        out.append(_attempt(loop.remove_writer, writing))
        never, peer3 = socket.socketpair()
        never.close()
        out.append(_attempt(loop.remove_reader, never))
        for sock in (peer, peer2, peer3):
            sock.close()
        return out

    invalid = "ValueError: Invalid file descriptor: -1"
    assert loop.run_until_complete(main()) == [True, invalid, True, invalid]


def test_descriptor_watched_again_by_number_keeps_the_file_object(loop):
    """Watching a descriptor again by number keeps the registration under the
    file object it was made with: the closed object still removes it, and
    the number alone then finds nothing."""

    async def main():
        reading, peer = socket.socketpair()
        fd = reading.fileno()
        loop.add_reader(reading, lambda: None)
        duplicate = os.dup(fd)
        reading.close()  # the descriptor number is free, then taken again
        os.dup2(duplicate, fd)
        os.close(duplicate)
        loop.add_reader(fd, lambda: None)
        out = [_attempt(loop.remove_reader, reading), _attempt(loop.remove_reader, fd)]
        os.close(fd)
        peer.close()
        return out

    assert loop.run_until_complete(main()) == [True, False]
