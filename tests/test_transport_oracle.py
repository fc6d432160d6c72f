"""Socket and datagram transports driven through every pair of operations
behave as asyncio's: the same results and exceptions, the same protocol
callbacks on both ends.

Each sequence runs on a fresh connection of each loop; afterwards the test
waits until both ends have seen `connection_lost` (closing what is still
open), so the logs compare whole histories, not moments. Consecutive
`data_received` calls count as one (read sizes differ between loops).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from cpython_bugs import WRITELINES_AFTER_CONNECTION_LOST
from loop_helpers import make_loop_factory

pytestmark = pytest.mark.timeout(120)


class _Logging:
    """Records callbacks; `lost` completes at connection_lost."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.log.append("made")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.log.append(f"lost {type(exc).__name__}" if exc else "lost")
        self.lost.set_result(None)


class LoggingProtocol(_Logging, asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        if self.log[-1:] != ["data"]:
            self.log.append("data")

    def eof_received(self) -> None:
        self.log.append("eof")

    def pause_writing(self) -> None:
        self.log.append("pause_writing")

    def resume_writing(self) -> None:
        self.log.append("resume_writing")


class LoggingDatagramProtocol(_Logging, asyncio.DatagramProtocol):
    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.log.append("datagram")

    def error_received(self, exc: Exception) -> None:
        self.log.append(f"error {type(exc).__name__}")


Operation = Callable[[Any], Any]

STREAM_OPERATIONS: dict[str, Operation] = {
    "close": lambda t: t.close(),
    "abort": lambda t: t.abort(),
    "write": lambda t: t.write(b"x" * 100),
    "writelines": lambda t: t.writelines([b"a", b"b"]),
    "write_eof": lambda t: t.write_eof(),
    "can_write_eof": lambda t: t.can_write_eof(),
    "pause_reading": lambda t: t.pause_reading(),
    "resume_reading": lambda t: t.resume_reading(),
    "is_reading": lambda t: t.is_reading(),
    "is_closing": lambda t: t.is_closing(),
    "get_write_buffer_size": lambda t: t.get_write_buffer_size(),
    "set_write_buffer_limits": lambda t: t.set_write_buffer_limits(0),
    "get_extra_info": lambda t: t.get_extra_info("sockname") is not None,
}

DATAGRAM_OPERATIONS: dict[str, Operation] = {
    "close": lambda t: t.close(),
    "abort": lambda t: t.abort(),
    "sendto": lambda t: t.sendto(b"x"),
    "is_closing": lambda t: t.is_closing(),
    "get_write_buffer_size": lambda t: t.get_write_buffer_size(),
    "set_write_buffer_limits": lambda t: t.set_write_buffer_limits(0),
    "get_extra_info": lambda t: t.get_extra_info("sockname") is not None,
}


def _apply(transport: Any, operations: dict[str, Operation], names: tuple[str, ...]) -> list[str]:
    results = []
    for name in names:
        try:
            result = operations[name](transport)
        except Exception as exc:
            results.append(f"{name} raised {type(exc).__name__}")
        else:
            results.append(name if result is None else f"{name} -> {result!r}")
    return results


async def _stream_history(names: tuple[str, ...]) -> list[Any]:
    loop = asyncio.get_running_loop()
    peers: list[LoggingProtocol] = []

    def peer() -> LoggingProtocol:
        peers.append(LoggingProtocol())
        return peers[-1]

    server = await loop.create_server(peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, protocol = await loop.create_connection(LoggingProtocol, "127.0.0.1", port)
    while not peers:
        await asyncio.sleep(0)
    results = _apply(transport, STREAM_OPERATIONS, names)
    transport.close()  # whatever the operations left open ends now
    await asyncio.wait_for(protocol.lost, 30)
    await asyncio.wait_for(peers[0].lost, 30)
    server.close()
    await server.wait_closed()
    return [results, protocol.log, peers[0].log]


async def _datagram_history(names: tuple[str, ...]) -> list[Any]:
    loop = asyncio.get_running_loop()
    receiver, peer = await loop.create_datagram_endpoint(
        LoggingDatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    transport, protocol = await loop.create_datagram_endpoint(
        LoggingDatagramProtocol, remote_addr=receiver.get_extra_info("sockname")
    )
    results = _apply(transport, DATAGRAM_OPERATIONS, names)
    transport.close()
    await asyncio.wait_for(protocol.lost, 30)
    for _ in range(1000):  # loopback delivers at once; give the loop turns to read
        if peer.log.count("datagram") >= results.count("sendto"):
            break
        await asyncio.sleep(0)
    receiver.close()
    await asyncio.wait_for(peer.lost, 30)
    return [results, protocol.log, peer.log]


def _histories(loop_name: str, history: Any, sequences: list[tuple[str, ...]]) -> list[Any]:
    """Each sequence on a loop of its own: on one asyncio 3.12.1 loop shared by
    all of them, ('abort', 'write_eof') hung after the sequences before it
    (not investigated; alone, it does not)."""
    factory = make_loop_factory(loop_name)
    histories = []
    for names in sequences:
        loop = factory()
        try:
            histories.append(loop.run_until_complete(history(names)))
        finally:
            loop.close()
    return histories


@pytest.mark.parametrize(
    ("history", "operations"),
    [(_stream_history, STREAM_OPERATIONS), (_datagram_history, DATAGRAM_OPERATIONS)],
    ids=["stream", "datagram"],
)
def test_operation_pairs_behave_as_on_asyncio(history: Any, operations: dict[str, Any]) -> None:
    sequences = [names for size in (1, 2) for names in itertools.product(operations, repeat=size)]
    expected = _histories("asyncio", history, sequences)
    got = _histories("ferroloop", history, sequences)
    differences = [
        (names, want, have)
        for names, want, have in zip(sequences, expected, got, strict=True)
        if want != have and not _known_asyncio_bug(want, have)
    ]
    assert differences == []


def _known_asyncio_bug(want: list[Any], have: list[Any]) -> bool:
    """asyncio's history differs from ferroloop's by a bug of its release only."""
    if WRITELINES_AFTER_CONNECTION_LOST.affected:
        # writelines() after close() raises TypeError there; ferroloop ignores it.
        fixed = [r.replace("writelines raised TypeError", "writelines") for r in want[0]]
        return [fixed, *want[1:]] == have
    return False
