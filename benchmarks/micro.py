"""Micro-benchmarks of event-loop primitives.

    python -m benchmarks.micro --loop asyncio|uvloop|ferroloop --bench NAME [--scale S]
    python -m benchmarks.micro --list

Each run measures one benchmark on one fresh loop in this (fresh) process and
prints one JSON object: {"bench", "loop", "ops", "seconds", "value", "unit"}.
``value`` is ops/s (MiB/s for the pipe throughput). Timing uses
time.perf_counter around the measured part only (loop creation, imports and
set-up are excluded, except in ``loop_create_close`` where they are the
point). ``--scale`` multiplies the operation counts (``--quick`` uses 0.25).

Every benchmark is bounded: fixed operation counts, and a faulthandler
watchdog kills the process with a traceback if it hangs.
"""

import argparse
import asyncio
import faulthandler
import json
import os
import shutil
import socket
import sys
import time

from .loops import KNOWN_LOOPS, loop_factory, raise_nofile_limit, run

BENCHES = {}


def bench(name, unit="ops/s", doc=""):
    def deco(fn):
        BENCHES[name] = (fn, unit, doc or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def n_of(base, scale, minimum=1):
    return max(minimum, int(base * scale))


# --------------------------------------------------------------- scheduling


@bench("call_soon")
def b_call_soon(loop_name, scale):
    """loop.call_soon throughput: 1M callbacks, scheduled in batches of 10k."""
    total = n_of(1_000_000, scale, 10_000)
    batch = 10_000

    async def main():
        loop = asyncio.get_running_loop()
        count = 0

        def cb():
            nonlocal count
            count += 1

        t0 = time.perf_counter()
        for _ in range(total // batch):
            fut = loop.create_future()
            for _ in range(batch - 1):
                loop.call_soon(cb)
            loop.call_soon(fut.set_result, None)
            await fut
        dt = time.perf_counter() - t0
        assert count == (total // batch) * (batch - 1), count
        return (total // batch) * batch, dt

    return run(loop_name, main)


@bench("call_later_fire")
def b_call_later_fire(loop_name, scale):
    """100k call_later timers with 0..1 ms delays, all firing."""
    total = n_of(100_000, scale, 1000)

    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        fired = 0

        def cb():
            nonlocal fired
            fired += 1
            if fired == total:
                done.set_result(None)

        t0 = time.perf_counter()
        for i in range(total):
            loop.call_later((i % 1000) * 1e-6, cb)
        await done
        return total, time.perf_counter() - t0

    return run(loop_name, main)


@bench("call_later_cancel")
def b_call_later_cancel(loop_name, scale):
    """1M call_later (10-100 s out) scheduled, then all cancelled."""
    total = n_of(1_000_000, scale, 1000)

    async def main():
        loop = asyncio.get_running_loop()

        def cb():
            raise AssertionError("cancelled timer fired")

        t0 = time.perf_counter()
        handles = [loop.call_later(10.0 + (i % 9000) * 0.01, cb) for i in range(total)]
        for h in handles:
            h.cancel()
        # Let the loop run an iteration so it can drop the cancelled timers.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        dt = time.perf_counter() - t0
        return total, dt

    return run(loop_name, main)


# --------------------------------------------------------------- tasks, futures


@bench("gather_tasks")
def b_gather_tasks(loop_name, scale):
    """create_task + gather of 100k trivial coroutines."""
    total = n_of(100_000, scale, 1000)

    async def work(i):
        return i

    async def main():
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        tasks = [loop.create_task(work(i)) for i in range(total)]
        res = await asyncio.gather(*tasks)
        dt = time.perf_counter() - t0
        assert res[-1] == total - 1
        return total, dt

    return run(loop_name, main)


@bench("sleep0_pingpong")
def b_sleep0(loop_name, scale):
    """Two tasks alternating with asyncio.sleep(0), 100k switches each."""
    per_task = n_of(100_000, scale, 1000)

    async def spinner():
        for _ in range(per_task):
            await asyncio.sleep(0)

    async def main():
        t0 = time.perf_counter()
        await asyncio.gather(spinner(), spinner())
        return 2 * per_task, time.perf_counter() - t0

    return run(loop_name, main)


@bench("queue")
def b_queue(loop_name, scale):
    """asyncio.Queue(maxsize=64): one producer, one consumer, 200k items."""
    total = n_of(200_000, scale, 1000)

    async def main():
        q = asyncio.Queue(maxsize=64)

        async def producer():
            for i in range(total):
                await q.put(i)
            await q.put(None)

        async def consumer():
            n = 0
            while await q.get() is not None:
                n += 1
            return n

        t0 = time.perf_counter()
        _, got = await asyncio.gather(producer(), consumer())
        dt = time.perf_counter() - t0
        assert got == total
        return total, dt

    return run(loop_name, main)


@bench("future_roundtrip")
def b_future(loop_name, scale):
    """Future create, set_result from a call_soon callback, await: 200k times."""
    total = n_of(200_000, scale, 1000)

    async def main():
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        acc = 0
        for i in range(total):
            f = loop.create_future()
            loop.call_soon(f.set_result, i)
            acc += await f
        dt = time.perf_counter() - t0
        assert acc == total * (total - 1) // 2
        return total, dt

    return run(loop_name, main)


# --------------------------------------------------------------- threads, DNS


@bench("run_in_executor")
def b_executor(loop_name, scale):
    """run_in_executor(None, f) round trips: 20k, 4 awaiting at a time."""
    total = n_of(20_000, scale, 100)
    conc = 4

    def f(x):
        return x + 1

    async def main():
        loop = asyncio.get_running_loop()
        # Warm the default executor's threads up outside the timed part.
        await asyncio.gather(*(loop.run_in_executor(None, f, 0) for _ in range(conc)))

        async def worker(n):
            for i in range(n):
                assert await loop.run_in_executor(None, f, i) == i + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(total // conc) for _ in range(conc)))
        return (total // conc) * conc, time.perf_counter() - t0

    return run(loop_name, main)


@bench("getaddrinfo_numeric")
def b_getaddrinfo(loop_name, scale):
    """loop.getaddrinfo('127.0.0.1', 8080) (numeric host), 20k sequential calls."""
    total = n_of(20_000, scale, 100)

    async def main():
        loop = asyncio.get_running_loop()
        await loop.getaddrinfo("127.0.0.1", 8080, type=socket.SOCK_STREAM)
        t0 = time.perf_counter()
        for i in range(total):
            host = "127.0.0.1" if i & 1 else "::1"
            res = await loop.getaddrinfo(host, 8080, type=socket.SOCK_STREAM)
            assert res, res
        return total, time.perf_counter() - t0

    return run(loop_name, main)


# --------------------------------------------------------------- sockets


class _Counting(asyncio.Protocol):
    def __init__(self, counter):
        self.counter = counter

    def connection_made(self, transport):
        self.counter["made"] += 1

    def connection_lost(self, exc):
        self.counter["lost"] += 1
        w = self.counter["waiter"]
        if self.counter["lost"] >= self.counter["want"] and w is not None and not w.done():
            w.set_result(None)


class _Client(asyncio.Protocol):
    pass


@bench("connect_storm")
def b_connect_storm(loop_name, scale):
    """1,000 concurrent connect/accept/close on loopback: 3 timed waves after one; conns/s."""
    per_wave = 1000
    waves = n_of(3, scale, 1)
    raise_nofile_limit()

    async def main():
        loop = asyncio.get_running_loop()
        counter = {"made": 0, "lost": 0, "want": 0, "waiter": None}
        server = await loop.create_server(lambda: _Counting(counter), "127.0.0.1", 0, backlog=4096)
        port = server.sockets[0].getsockname()[1]

        async def wave():
            counter["want"] += per_wave
            counter["waiter"] = loop.create_future()
            conns = await asyncio.gather(
                *(loop.create_connection(_Client, "127.0.0.1", port) for _ in range(per_wave))
            )
            for tr, _ in conns:
                tr.close()
            await asyncio.wait_for(counter["waiter"], 30)

        # One untimed wave first: it grows the process's descriptor table to
        # its final size. In a multi-threaded process (uvloop always is; the
        # harness's faulthandler watchdog makes every loop so) each doubling
        # waits for an RCU grace period in the kernel, 8-16 ms here, a one-off
        # per process that is not the loop's work (docs/performance.md).
        await wave()
        t0 = time.perf_counter()
        for _ in range(waves):
            await wave()
        dt = time.perf_counter() - t0
        server.close()
        await server.wait_closed()
        assert counter["made"] == (waves + 1) * per_wave, counter
        return waves * per_wave, dt

    return run(loop_name, main)


def _self_signed_tls_contexts(directory):
    """A server and a client context sharing a throw-away localhost certificate."""
    import ssl
    import subprocess

    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert)
    return server, client


@bench("tls_echo", unit="req/s")
def b_tls_echo(loop_name, scale):
    """1 KiB request/response over TLS streams, 10 connections, both ends on the loop."""
    import tempfile

    per_conn = n_of(2_000, scale, 50)
    conns = 10
    with tempfile.TemporaryDirectory() as directory:
        server_ctx, client_ctx = _self_signed_tls_contexts(directory)

    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def client(port, ready, go):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        ready.release()
        await go.wait()
        message = b"x" * 1024
        for _ in range(per_conn):
            writer.write(message)
            await writer.drain()
            await reader.readexactly(len(message))
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        # Handshakes are not timed: every client connects before the clock starts.
        ready, go = asyncio.Semaphore(0), asyncio.Event()
        clients = [asyncio.ensure_future(client(port, ready, go)) for _ in range(conns)]
        for _ in range(conns):
            await ready.acquire()
        t0 = time.perf_counter()
        go.set()
        await asyncio.gather(*clients)
        dt = time.perf_counter() - t0
        server.close()
        await server.wait_closed()
        return conns * per_conn, dt

    return run(loop_name, main)


# --------------------------------------------------------------- loop itself


@bench("loop_create_close")
def b_loop_create(loop_name, scale):
    """new event loop + run one trivial coroutine + close: 10,000 times."""
    total = n_of(10_000, scale, 50)
    factory = loop_factory(loop_name)

    async def nothing():
        return None

    t0 = time.perf_counter()
    for _ in range(total):
        loop = factory()
        loop.run_until_complete(nothing())
        loop.close()
    return total, time.perf_counter() - t0


# --------------------------------------------------------------- subprocesses


@bench("subprocess_spawn")
def b_spawn(loop_name, scale):
    """create_subprocess_exec('true') + wait, 500 sequential spawns."""
    total = n_of(500, scale, 10)
    true = shutil.which("true") or "/bin/true"

    async def main():
        t0 = time.perf_counter()
        for _ in range(total):
            p = await asyncio.create_subprocess_exec(true)
            rc = await p.wait()
            assert rc == 0, rc
        return total, time.perf_counter() - t0

    return run(loop_name, main)


def on_the_other_cpu(argv):
    """`argv` pinned to a CPU this process is not on, where taskset allows."""
    if shutil.which("taskset") and len(os.sched_getaffinity(0)) < os.cpu_count():
        other = sorted(set(range(os.cpu_count())) - os.sched_getaffinity(0))
        return ["taskset", "-c", str(other[0]), *argv]
    return argv


def read_child_stdout(loop_name, mib, argv):
    """MiB/s reading `mib` MiB from the stdout of `argv` via `proc.stdout.read()`."""

    async def main():
        t0 = time.perf_counter()
        p = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
        got = 0
        while chunk := await p.stdout.read(256 * 1024):
            got += len(chunk)
        rc = await p.wait()
        dt = time.perf_counter() - t0
        assert rc == 0 and got == mib << 20, (rc, got)
        return mib, dt

    return run(loop_name, main)


@bench("subprocess_pipe", unit="MiB/s")
def b_pipe(loop_name, scale):
    """Read 512 MiB from a child's stdout pipe (head -c, pinned to the other core)."""
    mib = n_of(512, scale, 16)
    # head writes 4 KiB at a time, as programs writing through stdio do.
    return read_child_stdout(
        loop_name, mib, on_the_other_cpu(["head", "-c", str(mib << 20), "/dev/zero"])
    )


@bench("subprocess_pipe_bulk", unit="MiB/s")
def b_pipe_bulk(loop_name, scale):
    """Read 512 MiB from a child writing 128 KiB at a time (dd, as cat or tar write)."""
    mib = n_of(512, scale, 16)
    argv = ["dd", "if=/dev/zero", "bs=128K", f"count={mib * 8}", "status=none"]
    return read_child_stdout(loop_name, mib, on_the_other_cpu(argv))


@bench("subprocess_stdin", unit="MiB/s")
def b_stdin(loop_name, scale):
    """Write 512 MiB to a child's stdin (cat to /dev/null) in 256 KiB writes, draining each."""
    mib = n_of(512, scale, 16)
    argv = on_the_other_cpu(["cat"])
    chunk = bytes(256 * 1024)

    async def main():
        t0 = time.perf_counter()
        p = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL
        )
        for _ in range(mib * 4):
            p.stdin.write(chunk)
            await p.stdin.drain()
        p.stdin.close()
        rc = await p.wait()
        dt = time.perf_counter() - t0
        assert rc == 0, rc
        return mib, dt

    return run(loop_name, main)


def main(argv=None):
    p = argparse.ArgumentParser(description="ferroloop micro-benchmarks")
    p.add_argument("--loop", choices=KNOWN_LOOPS)
    p.add_argument("--bench", choices=sorted(BENCHES))
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--list", action="store_true")
    a = p.parse_args(argv)
    if a.list:
        for name, (_, unit, doc) in BENCHES.items():
            print(f"{name:22} {unit:6} {doc}")
        return 0
    if not a.loop or not a.bench:
        p.error("--loop and --bench are required")
    faulthandler.dump_traceback_later(a.timeout, exit=True)
    fn, unit, _ = BENCHES[a.bench]
    ops, seconds = fn(a.loop, a.scale)
    print(
        json.dumps(
            {
                "bench": a.bench,
                "loop": a.loop,
                "ops": ops,
                "seconds": seconds,
                "value": ops / seconds,
                "unit": unit,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
