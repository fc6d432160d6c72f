"""asyncpg against a real PostgreSQL server, on asyncio's loop and on ferroloop.

The server is started once per session by postgres_server (initdb into a temp
dir, ``postgres`` on 127.0.0.1:<free port> and on a Unix socket in that dir, SSL
off, run as an unprivileged account when the tests run as root). Without
PostgreSQL's server binaries, or without asyncpg, every test here skips with
the reason.

Each test creates its own uniquely named objects (tables, channels), so the
two loops' runs of a test never see each other's data.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from loop_helpers import run
from postgres_server import PostgresServer, find_bindir

asyncpg = pytest.importorskip("asyncpg", reason="asyncpg is not installed (pip install asyncpg)")

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, postgres) not found: install Debian's "
            "'postgresql' package (apt-get install -y postgresql)"
        )
    server = PostgresServer(bindir).start()
    try:
        yield server
    finally:
        server.stop()


def uniq(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def check_loop(loop_name: str) -> None:
    """The coroutine really runs on the loop under test (not a fallback)."""
    loop = asyncio.get_running_loop()
    mod = type(loop).__module__
    if loop_name == "ferroloop":
        assert mod.startswith("ferroloop"), mod
    else:
        assert mod.startswith("asyncio"), mod


async def connect(pg: PostgresServer, *, unix: bool = False, **kw: Any) -> Any:
    params = pg.connect_kwargs_unix() if unix else pg.connect_kwargs_tcp()
    params.setdefault("ssl", False)
    params.update(kw)
    return await asyncio.wait_for(asyncpg.connect(**params), 10)


# -- connecting ---------------------------------------------------------------


def test_connect_tcp(pg: PostgresServer, loop_name: str, loop_factory: Any) -> None:
    async def main() -> tuple[Any, ...]:
        check_loop(loop_name)
        conn = await connect(pg)
        try:
            return (
                await conn.fetchval("SELECT 1 + 1"),
                await conn.fetchval("SELECT inet_server_port()"),
                await conn.fetchval("SELECT host(inet_client_addr())"),
                conn.get_server_pid() > 0,
                conn.get_server_version().major >= 10,
                conn.is_closed(),
            )
        finally:
            await conn.close()

    assert run(loop_factory, main) == (2, pg.port, "127.0.0.1", True, True, False)


def test_connect_dsn(pg: PostgresServer, loop_name: str, loop_factory: Any) -> None:
    async def main() -> str:
        check_loop(loop_name)
        conn = await asyncio.wait_for(asyncpg.connect(pg.dsn_tcp() + "?sslmode=disable"), 10)
        try:
            return await conn.fetchval("SELECT current_user")
        finally:
            await conn.close()

    assert run(loop_factory, main) == "postgres"


def test_connect_unix_socket(pg: PostgresServer, loop_name: str, loop_factory: Any) -> None:
    async def main() -> tuple[Any, ...]:
        check_loop(loop_name)
        conn = await connect(pg, unix=True)
        try:
            sock = conn._transport.get_extra_info("socket")
            return (
                await conn.fetchval("SELECT 'over unix'"),
                # NULL client address: the session is on a Unix-domain socket.
                await conn.fetchval("SELECT inet_client_addr()"),
                sock.family.name,
            )
        finally:
            await conn.close()

    assert run(loop_factory, main) == ("over unix", None, "AF_UNIX")


def test_ssl_off(pg: PostgresServer, loop_name: str, loop_factory: Any) -> None:
    """SSL disabled explicitly, and the default sslmode=prefer against a no-SSL server.

    With ``prefer`` asyncpg sends an SSLRequest first; the server answers 'N' and
    the connection must go on in clear text over the same transport.
    """

    async def main() -> list[tuple[Any, ...]]:
        check_loop(loop_name)
        out = []
        for ssl_arg in (False, "disable", "prefer", None):
            kw = {} if ssl_arg is None else {"ssl": ssl_arg}
            params = {**pg.connect_kwargs_tcp(), **kw}
            conn = await asyncio.wait_for(asyncpg.connect(**params), 10)
            try:
                out.append(
                    (
                        await conn.fetchval("SHOW ssl"),
                        await conn.fetchval(
                            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                        ),
                        conn._transport.get_extra_info("sslcontext"),
                    )
                )
            finally:
                await conn.close()
        return out

    assert run(loop_factory, main) == [("off", False, None)] * 4


# -- queries --------------------------------------------------------------------


def test_simple_queries_and_parameters(
    pg: PostgresServer, loop_name: str, loop_factory: Any
) -> None:
    import datetime
    import decimal

    async def main() -> None:
        check_loop(loop_name)
        conn = await connect(pg)
        try:
            assert await conn.execute("SELECT 1") == "SELECT 1"
            row = await conn.fetchrow("SELECT 1 AS a, 'two' AS b, NULL::int AS c")
            assert (row["a"], row["b"], row["c"]) == (1, "two", None)
            assert dict(row) == {"a": 1, "b": "two", "c": None}

            args = (
                42,
                "héllo wörld",
                b"\x00\xffbytes",
                None,
                [1, 2, 3],
                decimal.Decimal("12345.6789"),
                datetime.datetime(2024, 2, 29, 12, 30, tzinfo=datetime.UTC),
                True,
                1.5,
            )
            got = await conn.fetchrow(
                "SELECT $1::int8, $2::text, $3::bytea, $4::text, $5::int[],"
                " $6::numeric, $7::timestamptz, $8::bool, $9::float8",
                *args,
            )
            assert tuple(got) == args

            assert await conn.fetchval("SELECT $1::int * $2::int", 6, 7) == 42
            assert await conn.fetchval("SELECT length($1::text)", "x" * 100_000) == 100_000
            rows = await conn.fetch("SELECT g FROM generate_series(1, $1) g", 5)
            assert [r[0] for r in rows] == [1, 2, 3, 4, 5]

            with pytest.raises(asyncpg.UndefinedTableError):
                await conn.fetch("SELECT * FROM no_such_table_here")
            with pytest.raises(asyncpg.DivisionByZeroError):
                await conn.fetchval("SELECT 1 / $1::int", 0)
            # An error does not poison the connection.
            assert await conn.fetchval("SELECT 'still fine'") == "still fine"
        finally:
            await conn.close()

    run(loop_factory, main)


def test_many_rows(pg: PostgresServer, loop_name: str, loop_factory: Any) -> None:
    n = 100_000

    async def main() -> tuple[int, int, int, int]:
        check_loop(loop_name)
        conn = await connect(pg)
        try:
            rows = await conn.fetch("SELECT g, md5(g::text) AS h FROM generate_series(1, $1) g", n)
            total = sum(r["g"] for r in rows)
            assert rows[-1]["h"] == await conn.fetchval("SELECT md5($1::text)", str(n))
            # The same through a server-side cursor, streamed in batches.
            seen = 0
            async with conn.transaction():
                async for rec in conn.cursor(
                    "SELECT g FROM generate_series(1, $1) g", n, prefetch=5000
                ):
                    seen += rec[0]
            return len(rows), total, seen, len({r["h"] for r in rows})
        finally:
            await conn.close()

    assert run(loop_factory, main) == (n, n * (n + 1) // 2, n * (n + 1) // 2, n)


def test_transaction_rollback(pg: PostgresServer, loop_name: str, loop_factory: Any) -> None:
    table = uniq("tx")

    class Boom(Exception):
        pass

    async def main() -> list[int]:
        check_loop(loop_name)
        conn = await connect(pg)
        try:
            await conn.execute(f"CREATE TABLE {table} (v int)")
            # An exception inside the block rolls everything back.
            with pytest.raises(Boom):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {table} VALUES (1), (2)")
                    assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 2
                    raise Boom
            assert not conn.is_in_transaction()
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0

            # Explicit rollback, and a nested block (savepoint) rolled back alone.
            tr = conn.transaction()
            await tr.start()
            await conn.execute(f"INSERT INTO {table} VALUES (10)")
            await tr.rollback()

            async with conn.transaction():
                await conn.execute(f"INSERT INTO {table} VALUES (3)")
                with pytest.raises(asyncpg.UniqueViolationError):
                    async with conn.transaction():  # savepoint
                        await conn.execute(f"INSERT INTO {table} VALUES (4)")
                        await conn.execute(
                            "DO $$ BEGIN RAISE unique_violation USING MESSAGE = 'dup'; END $$"
                        )
                await conn.execute(f"INSERT INTO {table} VALUES (5)")

            # A failed statement aborts the transaction; commit is then impossible.
            with pytest.raises(asyncpg.InFailedSQLTransactionError):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {table} VALUES (6)")
                    with pytest.raises(asyncpg.DivisionByZeroError):
                        await conn.execute("SELECT 1/0")
                    await conn.execute(f"INSERT INTO {table} VALUES (7)")

            rows = await conn.fetch(f"SELECT v FROM {table} ORDER BY v")
            await conn.execute(f"DROP TABLE {table}")
            return [r[0] for r in rows]
        finally:
            await conn.close()

    assert run(loop_factory, main) == [3, 5]


def test_prepared_statements(pg: PostgresServer, loop_name: str, loop_factory: Any) -> None:
    table = uniq("prep")

    async def main() -> None:
        check_loop(loop_name)
        conn = await connect(pg)
        try:
            stmt = await conn.prepare("SELECT $1::int * 2 AS doubled, $2::text AS label")
            assert [t.name for t in stmt.get_parameters()] == ["int4", "text"]
            assert [a.name for a in stmt.get_attributes()] == ["doubled", "label"]
            for i in range(50):
                assert tuple(await stmt.fetchrow(i, f"n{i}")) == (i * 2, f"n{i}")
            assert await stmt.fetchval(21, "x") == 42

            gen = await conn.prepare("SELECT g FROM generate_series(1, $1) g")
            assert [r[0] for r in await gen.fetch(3)] == [1, 2, 3]
            async with conn.transaction():
                assert [r[0] async for r in gen.cursor(4, prefetch=2)] == [1, 2, 3, 4]

            await conn.execute(f"CREATE TABLE {table} (k int PRIMARY KEY, v text)")
            await conn.executemany(
                f"INSERT INTO {table} VALUES ($1, $2)", [(i, str(i)) for i in range(1000)]
            )
            ins = await conn.prepare(f"SELECT v FROM {table} WHERE k = $1")
            assert [await ins.fetchval(k) for k in (0, 500, 999, 1000)] == ["0", "500", "999", None]
            await conn.execute(f"DROP TABLE {table}")
        finally:
            await conn.close()

    run(loop_factory, main)


# -- pool -----------------------------------------------------------------------


def test_pool_fifty_concurrent_tasks(pg: PostgresServer, loop_name: str, loop_factory: Any) -> None:
    n_tasks, limit, max_size = 50, 12, 8

    async def main() -> tuple[list[int], int, int]:
        check_loop(loop_name)
        sem = asyncio.Semaphore(limit)
        active = peak = 0
        pids: set[int] = set()
        pool = await asyncio.wait_for(
            asyncpg.create_pool(
                **pg.connect_kwargs_tcp(), ssl=False, min_size=2, max_size=max_size
            ),
            15,
        )
        try:

            async def worker(i: int) -> int:
                nonlocal active, peak
                async with sem:
                    active += 1
                    peak = max(peak, active)
                    try:
                        async with pool.acquire() as conn:
                            pids.add(conn.get_server_pid())
                            await conn.execute("SELECT pg_sleep(0.01)")
                            rows = await conn.fetch(
                                "SELECT $1::int + g FROM generate_series(1, 100) g", i
                            )
                            total = sum(r[0] for r in rows)
                        # pool-level shortcuts acquire/release internally
                        assert await pool.fetchval("SELECT $1::int", i) == i
                        return total
                    finally:
                        active -= 1

            results = await asyncio.wait_for(
                asyncio.gather(*(worker(i) for i in range(n_tasks))), 30
            )
            return results, peak, len(pids)
        finally:
            await asyncio.wait_for(pool.close(), 10)

    results, peak, n_pids = run(loop_factory, main)
    assert results == [100 * i + 5050 for i in range(n_tasks)]
    assert peak == limit  # the semaphore, not the pool, bounded the tasks
    assert 2 <= n_pids <= max_size  # several connections used, never beyond max_size


# -- LISTEN / NOTIFY --------------------------------------------------------------


def test_listen_notify(pg: PostgresServer, loop_name: str, loop_factory: Any) -> None:
    channel = uniq("chan")
    count = 25

    async def main() -> tuple[list[tuple[str, str]], bool]:
        check_loop(loop_name)
        listener = await connect(pg)
        sender = await connect(pg, unix=True)
        got: list[tuple[str, str]] = []
        pids: set[int] = set()
        done = asyncio.Event()

        def on_notify(conn: Any, pid: int, chan: str, payload: str) -> None:
            assert conn is listener
            pids.add(pid)
            got.append((chan, payload))
            if len(got) == count:
                done.set()

        try:
            await listener.add_listener(channel, on_notify)
            for i in range(count - 5):
                await sender.execute(f"NOTIFY {channel}, 'msg {i}'")
            # Several in one transaction are delivered at commit, in order.
            async with sender.transaction():
                for i in range(count - 5, count):
                    await sender.execute("SELECT pg_notify($1, $2)", channel, f"msg {i}")
            # The listener is idle: delivery must come from the loop reading its socket.
            await asyncio.wait_for(done.wait(), 10)
            await listener.remove_listener(channel, on_notify)
            await sender.execute(f"NOTIFY {channel}, 'after remove'")
            await asyncio.sleep(0.1)
            assert await listener.fetchval("SELECT 1") == 1
            return got, pids == {sender.get_server_pid()}
        finally:
            await listener.close()
            await sender.close()

    got, pid_ok = run(loop_factory, main)
    assert got == [(channel, f"msg {i}") for i in range(count)]
    assert pid_ok


# -- COPY -----------------------------------------------------------------------


def test_copy(pg: PostgresServer, loop_name: str, loop_factory: Any) -> None:
    table = uniq("copy")
    n = 20_000

    async def main() -> None:
        check_loop(loop_name)
        conn = await connect(pg)
        try:
            await conn.execute(f"CREATE TABLE {table} (id int, name text, score float8)")
            records = [(i, f"name-{i}", i / 4) for i in range(n)]
            status = await conn.copy_records_to_table(
                table, records=records, columns=["id", "name", "score"]
            )
            assert status == f"COPY {n}"
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == n

            # COPY ... TO STDOUT into a file-like object.
            buf = io.BytesIO()
            status = await conn.copy_from_query(
                f"SELECT id, name FROM {table} WHERE id < $1 ORDER BY id", 1000, output=buf
            )
            assert status == "COPY 1000"
            lines = buf.getvalue().decode().splitlines()
            assert lines[:2] == ["0\tname-0", "1\tname-1"] and len(lines) == 1000

            # ... and into a coroutine sink, CSV, for the whole table.
            chunks: list[bytes] = []

            async def sink(data: bytes) -> None:
                chunks.append(bytes(data))

            status = await conn.copy_from_table(table, output=sink, format="csv")
            assert status == f"COPY {n}"
            assert len(b"".join(chunks).splitlines()) == n

            # A slow sink for ~40 MB: asyncpg pauses/resumes reading the transport.
            received = [0, 0]

            async def slow_sink(data: bytes) -> None:
                received[0] += len(data)
                received[1] += data.count(b"\n")
                await asyncio.sleep(0.0005)

            status = await conn.copy_from_query(
                "SELECT g, repeat('x', 200) FROM generate_series(1, 200000) g", output=slow_sink
            )
            assert status == "COPY 200000"
            assert received == [sum(len(str(g)) + 202 for g in range(1, 200_001)), 200_000]

            # COPY ... FROM STDIN from a file-like object (round trip of the text above).
            await conn.execute(f"CREATE TABLE {table}_b (id int, name text)")
            buf.seek(0)
            status = await conn.copy_to_table(f"{table}_b", source=buf)
            assert status == "COPY 1000"
            assert (
                await conn.fetchval(
                    f"SELECT count(*) FROM {table} a JOIN {table}_b b USING (id, name)"
                )
                == 1000
            )
            await conn.execute(f"DROP TABLE {table}, {table}_b")
        finally:
            await conn.close()

    run(loop_factory, main)


# -- cancellation -----------------------------------------------------------------


def test_cancel_on_timeout(pg: PostgresServer, loop_name: str, loop_factory: Any) -> None:
    """wait_for on pg_sleep times out; asyncpg cancels the query server-side.

    asyncpg sends a CancelRequest on a second connection; afterwards the
    connection must be usable and the backend must not still be sleeping.
    """

    async def main() -> list[float]:
        check_loop(loop_name)
        conn = await connect(pg)
        observer = await connect(pg, unix=True)
        elapsed = []
        try:
            pid = conn.get_server_pid()
            for attempt in range(2):
                t0 = time.monotonic()
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(conn.fetchval("SELECT pg_sleep(30)"), 0.3)
                assert (
                    await asyncio.wait_for(conn.fetchval("SELECT $1::int", attempt), 5) == attempt
                )
                elapsed.append(time.monotonic() - t0)
            # asyncpg's own timeout= goes through the same path.
            with pytest.raises(TimeoutError):
                await conn.fetchval("SELECT pg_sleep(30)", timeout=0.3)
            assert await conn.fetchval("SELECT 'usable'") == "usable"
            # A prepared statement and a transaction still work after cancellations.
            async with conn.transaction():
                assert await (await conn.prepare("SELECT 7")).fetchval() == 7
            last_query = await observer.fetchval(
                "SELECT query FROM pg_stat_activity WHERE pid = $1", pid
            )
            assert "pg_sleep" not in last_query, last_query
            return elapsed
        finally:
            await conn.close()
            await observer.close()

    elapsed = run(loop_factory, main)
    assert all(e < 5 for e in elapsed), elapsed


def test_cancel_task_then_close(pg: PostgresServer, loop_name: str, loop_factory: Any) -> None:
    """Cancelling a task blocked in a query, then closing: no hang, nothing left running."""

    async def main() -> int:
        check_loop(loop_name)
        conn = await connect(pg)
        observer = await connect(pg)
        try:
            pid = conn.get_server_pid()
            task = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(30)"))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(conn.close(), 10)
            assert conn.is_closed()
            # The backend goes away (the sleep was cancelled, then the session closed).
            for _ in range(100):
                n = await observer.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid
                )
                if n == 0:
                    break
                await asyncio.sleep(0.05)
            return n
        finally:
            await observer.close()

    assert run(loop_factory, main) == 0
