"""The benchmark driver: ``python -m benchmarks`` (see benchmarks/README.md).

Runs every selected benchmark for every selected loop, interleaved
(asyncio uvloop ferroloop, asyncio uvloop ferroloop, ...) for --rounds rounds,
with a fresh process per sample, the server pinned to one core and the load
client to the other. Prints median tables with ratios and writes
benchmarks/results/<date>-<host>.json and benchmarks/results/latest.md.
"""

import argparse
import compileall
import contextlib
import ctypes
import datetime
import fnmatch
import importlib.util
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import build as build_mod
from .echo_server import STYLES
from .http_server import KINDS as HTTP_KINDS
from .loops import KNOWN_LOOPS, LOOPS, OTHER_LOOPS
from .micro import BENCHES as MICRO_BENCHES

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SIZES = {"1KiB": 1024, "10KiB": 10 * 1024, "100KiB": 100 * 1024}
RUST = "rust"
SHORT = {"asyncio": "aio", "uvloop": "uv", "ferroloop": "fl", "rloop": "rl", RUST: "rust"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
BENCH_DEPS_HINT = "pip install '.[bench]' from the repository root, or run benchmarks/run.sh"

# For the run-time estimate printed at the start ("plan: N samples, ~M min").
# Wall seconds of one sample beyond its warm-up + duration: process start-up,
# connecting, stopping (measured on the 2-CPU development VM: 0.1-0.35 s).
LOAD_OVERHEAD_S = 0.25
# Wall seconds of one micro-benchmark sample at --scale 1, mean of the three
# loops (measured on the 2-CPU development VM; asyncio is the slowest). The
# interpreter start-up (~0.1 s) does not scale with --scale.
MICRO_STARTUP_S = 0.1
MICRO_S = {
    "call_soon": 0.8,
    "call_later_fire": 0.4,
    "call_later_cancel": 2.9,
    "gather_tasks": 1.2,
    "sleep0_pingpong": 0.4,
    "queue": 0.3,
    "future_roundtrip": 0.9,
    "run_in_executor": 0.7,
    "getaddrinfo_numeric": 0.6,
    "connect_storm": 0.8,
    "tls_echo": 1.5,
    "loop_create_close": 0.9,
    "subprocess_spawn": 1.0,
    "subprocess_pipe": 0.7,
    "subprocess_pipe_bulk": 0.6,
    "subprocess_stdin": 0.6,
}
# One RSS sample beyond --rss-hold: start-up, 10k connects, closing them.
RSS_OVERHEAD_S = 3.0
# Once per run: probing the loops, the (no-op) cargo build of the helpers.
FIXED_S = 2.0


# ----------------------------------------------------------------- helpers


def _pdeathsig():
    """In the child: die with the driver (PR_SET_PDEATHSIG = 1)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def proc_stat_busy():
    """(busy ticks incl. irq/softirq/steal over all CPUs) from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu "):
                v = [int(x) for x in line.split()[1:]]
                # user nice system idle iowait irq softirq steal
                return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    return 0


def wait_quiet(max_wait, probe=0.25, threshold=0.15):
    """Wait until the machine's busy time over `probe` seconds is below
    `threshold` CPUs; give up after `max_wait` seconds. Returns True if quiet."""
    end = time.monotonic() + max_wait
    while True:
        b0 = proc_stat_busy()
        time.sleep(probe)
        if (proc_stat_busy() - b0) / CLK_TCK / probe < threshold:
            return True
        if time.monotonic() >= end:
            return False


def proc_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def proc_rss_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out.get("VmRSS", 0), out.get("VmHWM", 0)


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            lines = f.read().strip().splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return ""


def fmt_num(v):
    if v is None:
        return "—"
    a = abs(v)
    if a >= 100_000:
        return f"{v:,.0f}"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_dur(secs):
    return f"{secs:.0f} s" if secs < 90 else f"{secs / 60:.1f} min"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(r):
    return "—" if r is None else f"{r:.2f}×"  # noqa: RUF001


# ----------------------------------------------------------------- benchmarks


class Bench:
    """One benchmark configuration; run() returns one sample dict."""

    group = ""
    metric_keys = ()

    def __init__(self, name, loops):
        self.name = name
        self.loops = loops


class Driver:
    def __init__(self, args, exes, unavailable=None):
        self.a = args
        self.exes = exes
        self.pin = args.pin
        # benchmark name -> why it cannot run (a missing module); left out.
        self.unavailable = unavailable or {}
        self.samples = []
        self.errors = []
        self.retry_s = 0.0  # wall time spent re-running disturbed samples
        self.elapsed = None
        self._tmp = None

    @property
    def tmp(self):
        """Scratch directory for server output, made on first use (not by --list)."""
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="ferroloop-bench-"))
        return self._tmp

    def remove_scratch(self):
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # -- process plumbing -------------------------------------------------

    def taskset(self, cpu):
        return ["taskset", "-c", str(cpu)] if self.pin else []

    def start_server(self, argv, label):
        err_path = self.tmp / f"server-{label}.err"
        with open(err_path, "w") as errf:
            p = subprocess.Popen(
                self.taskset(self.a.server_cpu) + argv,
                stdout=subprocess.PIPE,
                stderr=errf,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                preexec_fn=_pdeathsig,
                text=True,
            )
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline:
            r, _, _ = select.select([p.stdout], [], [], 0.2)
            if r:
                line = p.stdout.readline()
                if line.startswith("READY"):
                    break
                if line == "":  # EOF: the server died
                    break
            elif p.poll() is not None:
                break
        if not line.startswith("READY"):
            self.stop(p)
            msg = tail(err_path) or f"exit code {p.returncode}, no output"
            raise SampleError(f"server did not start: {msg}")
        parts = line.split()
        return p, int(parts[1]), (parts[2] if len(parts) > 2 else ""), err_path

    @staticmethod
    def stop(p):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(3)
        if p.stdout:
            p.stdout.close()

    def run_loadgen(self, args, timeout):
        r = subprocess.run(
            [*self.taskset(self.a.client_cpu), self.exes["ferroloop-loadgen"], *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=ROOT,
            preexec_fn=_pdeathsig,
        )
        out = r.stdout.strip().splitlines()
        try:
            res = json.loads(out[-1])
        except (IndexError, ValueError):
            raise SampleError(
                f"load generator printed no JSON (rc={r.returncode}): {r.stderr[-500:]}"
            ) from None
        if res.get("error"):
            raise SampleError(f"load generator: {res['error']}")
        return res

    @staticmethod
    def with_server_err(msg, p, err_path):
        """Append what the server said on stderr (and its exit) to msg."""
        if p is not None and p.poll() is not None:
            msg += f"; the server exited with code {p.returncode}"
        err = tail(err_path, 12)
        return f"{msg}; server stderr:\n{err}" if err else msg

    # -- one sample of each kind --------------------------------------------

    def load_sample(self, server_argv, label, lg_args, duration, warmup):
        p, port, typ, err_path = self.start_server(server_argv, label)
        try:
            res = self.run_loadgen(
                [
                    "--port",
                    str(port),
                    "--server-pid",
                    str(p.pid),
                    "--timeout",
                    "10",
                    "--warmup",
                    str(warmup),
                    "--duration",
                    str(duration),
                    *lg_args,
                ],
                timeout=warmup + duration + 60,
            )
            if p.poll() is not None:
                raise SampleError(
                    f"server exited during the run (rc={p.returncode}): {tail(err_path)}"
                )
        except subprocess.TimeoutExpired:
            raise SampleError(
                self.with_server_err("load generator timed out", p, err_path)
            ) from None
        except SampleError as e:
            raise SampleError(self.with_server_err(str(e), p, err_path)) from None
        finally:
            self.stop(p)
        if not res.get("requests"):
            raise SampleError(
                self.with_server_err("no response within the measurement window", None, err_path)
            )
        cpu = res["cpu"]
        win = cpu["window_s"]
        tck = cpu["clk_tck"]
        reqs = res["requests"]
        server_t = cpu["server_ticks"] or 0
        foreign_t = (
            cpu["busy_ticks"] + cpu["irq_ticks"] + cpu["steal_ticks"] - server_t - cpu["self_ticks"]
        )
        s = {
            "loop_type": typ,
            "rps": res["rps"],
            "mib_s": res["mib_s"],
            "p50_us": res["latency_us"]["p50"],
            "p99_us": res["latency_us"]["p99"],
            "cpu_us_per_req": (server_t / tck / reqs * 1e6) if reqs else None,
            "server_cpu": server_t / tck / win,
            "client_cpu": cpu["self_ticks"] / tck / win,
            "foreign_cpu": foreign_t / tck / win,
            "foreign_ticks": foreign_t,
            "window_s": win,
            "requests": reqs,
            "latency_us": res["latency_us"],
            "stopped_by": res.get("stopped_by"),
        }
        s["disturbed"] = foreign_t > max(15, 0.10 * win * tck)
        s["client_saturated"] = s["client_cpu"] > 0.9
        return s

    def micro_sample(self, bench, loop):
        out_path = self.tmp / "micro.out"
        err_path = self.tmp / "micro.err"
        argv = [
            *self.taskset(self.a.server_cpu),
            sys.executable,
            "-m",
            "benchmarks.micro",
            "--loop",
            loop,
            "--bench",
            bench,
            "--scale",
            str(self.a.scale),
            "--timeout",
            "120",
        ]
        busy0 = proc_stat_busy()
        self0 = os.times()
        t0 = time.monotonic()
        with open(out_path, "w") as out, open(err_path, "w") as err:
            p = subprocess.Popen(
                argv,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                preexec_fn=_pdeathsig,
            )
        deadline = t0 + 150
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                os.wait4(p.pid, 0)
                p.returncode = -9
                raise SampleError("micro-benchmark timed out after 150 s")
            time.sleep(0.01)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        busy1 = proc_stat_busy()
        self1 = os.times()
        if p.returncode != 0:
            raise SampleError(f"exit code {p.returncode}: {tail(err_path)}")
        try:
            res = json.loads(Path(out_path).read_text().strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise SampleError(f"no JSON result: {tail(err_path)}") from None
        child_cpu = ru.ru_utime + ru.ru_stime
        own = (self1.user - self0.user) + (self1.system - self0.system)
        foreign = (busy1 - busy0) / CLK_TCK - child_cpu - own
        return {
            "value": res["value"],
            "unit": res["unit"],
            "ops": res["ops"],
            "seconds": res["seconds"],
            "process_cpu_s": child_cpu,
            "wall_s": wall,
            "foreign_cpu": foreign / wall,
            "disturbed": foreign > max(0.15, 0.10 * wall),
        }

    def rss_sample(self, loop, conns, hold):
        argv = [
            sys.executable,
            "-m",
            "benchmarks.echo_server",
            "--loop",
            loop,
            "--style",
            "protocol",
            "--port",
            "0",
            "--max-seconds",
            "300",
        ]
        p, port, typ, err_path = self.start_server(argv, f"rss-{loop}")
        lg = None
        try:
            time.sleep(0.3)
            base, _ = proc_rss_kib(p.pid)
            lg = subprocess.Popen(
                [
                    *self.taskset(self.a.client_cpu),
                    self.exes["ferroloop-loadgen"],
                    "--mode",
                    "idle",
                    "--port",
                    str(port),
                    "--connections",
                    str(conns),
                    "--duration",
                    str(hold),
                    "--timeout",
                    "10",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                preexec_fn=_pdeathsig,
            )
            r, _, _ = select.select([lg.stdout], [], [], 90)
            line = lg.stdout.readline() if r else ""
            ev = json.loads(line) if line.startswith("{") else {}
            if ev.get("event") != "connected":
                lg.kill()
                _, err = lg.communicate(timeout=10)
                msg = (ev.get("error") if ev else None) or err[-500:] or "no output"
                raise SampleError(
                    f"idle clients did not connect: {msg}; server: {tail(err_path, 5)}"
                )
            time.sleep(min(0.5, hold / 2))
            rss, hwm = proc_rss_kib(p.pid)
            out, err = lg.communicate(timeout=hold + 30)
            if lg.returncode != 0:
                raise SampleError(f"idle client failed: {out[-300:]} {err[-300:]}")
            if p.poll() is not None:
                raise SampleError(f"server exited (rc={p.returncode}): {tail(err_path)}")
        finally:
            if lg is not None and lg.poll() is None:
                lg.kill()
                lg.wait()
            self.stop(p)
        return {
            "loop_type": typ,
            "rss_mib": rss / 1024,
            "baseline_mib": base / 1024,
            "hwm_mib": hwm / 1024,
            "kib_per_conn": (rss - base) / conns,
            "connect_s": ev.get("connect_s"),
            "disturbed": False,
        }

    def wrk_sample(self, server_argv, label, duration):
        p, port, typ, _ = self.start_server(server_argv, label)
        try:
            t0 = proc_ticks(p.pid)
            busy0 = proc_stat_busy()
            w0 = time.monotonic()
            r = subprocess.Popen(
                [
                    *self.taskset(self.a.client_cpu),
                    "wrk",
                    "-t1",
                    f"-c{self.a.connections}",
                    f"-d{duration}s",
                    "--latency",
                    "--timeout",
                    "10s",
                    f"http://127.0.0.1:{port}/",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=_pdeathsig,
            )
            out, err = r.communicate(timeout=duration + 60)
            win = time.monotonic() - w0
            t1 = proc_ticks(p.pid)
            busy1 = proc_stat_busy()
        finally:
            self.stop(p)
        if r.returncode != 0:
            raise SampleError(f"wrk failed: {err[-300:]}")
        m = re.search(r"Requests/sec:\s+([\d.]+)", out)
        if not m:
            raise SampleError(f"cannot parse wrk output: {out[-300:]}")
        rps = float(m.group(1))
        if re.search(r"Non-2xx|Socket errors", out):
            self.log(f"    wrk reported errors: {out.strip().splitlines()[-3:]}")
        lat = {}
        for pct, val, unit in re.findall(
            r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE
        ):
            lat[pct] = float(val) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
        reqs = rps * duration
        server_s = (t1 - t0) / CLK_TCK
        foreign = (busy1 - busy0) / CLK_TCK - server_s
        return {
            "loop_type": typ,
            "rps": rps,
            "mib_s": None,
            "p50_us": lat.get("50"),
            "p99_us": lat.get("99"),
            "cpu_us_per_req": server_s / reqs * 1e6 if reqs else None,
            "server_cpu": server_s / win,
            # wrk's own CPU is not separated out here: it is in foreign_cpu.
            "foreign_cpu": foreign / win,
            "disturbed": False,
        }

    # -- the plan ---------------------------------------------------------------

    def plan(self, include_unavailable=False):
        a = self.a
        items = []  # (name, group, loops, fn(loop) -> sample)
        loops = a.loops
        sizes = [(k, SIZES[k]) for k in a.sizes]
        for label, size in sizes:
            for style in STYLES:

                def fn(loop, style=style, size=size, label=label):
                    argv = [
                        sys.executable,
                        "-m",
                        "benchmarks.echo_server",
                        "--loop",
                        loop,
                        "--style",
                        style,
                        "--port",
                        "0",
                        "--max-seconds",
                        "300",
                    ]
                    return self.load_sample(
                        argv,
                        f"echo-{style}-{loop}",
                        [
                            "--mode",
                            "echo",
                            "--size",
                            str(size),
                            "--connections",
                            str(a.connections),
                        ],
                        a.duration,
                        a.warmup,
                    )

                items.append((f"echo/{style}/{label}", "echo", loops, fn))

            def rust_fn(loop, size=size):
                argv = [self.exes["ferroloop-rust-echo"], "--port", "0", "--max-seconds", "300"]
                return self.load_sample(
                    argv,
                    "echo-rust",
                    ["--mode", "echo", "--size", str(size), "--connections", str(a.connections)],
                    a.duration,
                    a.warmup,
                )

            items.append((f"echo/rust/{label}", "echo", [RUST], rust_fn))
        for kind in HTTP_KINDS:

            def http_fn(loop, kind=kind):
                argv = [
                    sys.executable,
                    "-m",
                    "benchmarks.http_server",
                    "--loop",
                    loop,
                    "--kind",
                    kind,
                    "--port",
                    "0",
                    "--max-seconds",
                    "300",
                ]
                if a.http_client == "wrk":
                    return self.wrk_sample(argv, f"http-{kind}-{loop}", max(1, round(a.duration)))
                return self.load_sample(
                    argv,
                    f"http-{kind}-{loop}",
                    ["--mode", "http", "--connections", str(a.connections)],
                    a.duration,
                    a.warmup,
                )

            items.append((f"http/{kind}", "http", loops, http_fn))
        for mb in MICRO_BENCHES:
            items.append(
                (f"micro/{mb}", "micro", loops, lambda loop, mb=mb: self.micro_sample(mb, loop))
            )
        items.append(
            (
                "rss/idle10k",
                "rss",
                loops,
                lambda loop: self.rss_sample(loop, a.rss_connections, a.rss_hold),
            )
        )
        if a.only:
            pats = [p.strip() for p in a.only.split(",") if p.strip()]
            items = [
                it for it in items if any(fnmatch.fnmatch(it[0], p) or p in it[0] for p in pats)
            ]
        if not include_unavailable:
            items = [it for it in items if it[0] not in self.unavailable]
        return items

    def skipped(self):
        """Names of selected benchmarks that cannot run (see self.unavailable)."""
        return [it[0] for it in self.plan(include_unavailable=True) if it[0] in self.unavailable]

    def estimate(self, items):
        """(samples, estimated wall seconds without re-runs, most seconds re-runs
        can add) of a plan; the last is bounded by --retry-budget."""
        a = self.a
        n = 0
        secs = FIXED_S
        retry = 0.0
        for name, group, loops, _ in items:
            k = len(loops) * a.rounds
            n += k
            if group == "micro":
                each = MICRO_STARTUP_S + MICRO_S.get(name.split("/", 1)[1], 1.0) * a.scale
            elif group == "rss":
                each = RSS_OVERHEAD_S + a.rss_hold
            elif group == "http" and a.http_client == "wrk":
                each = max(1, round(a.duration)) + LOAD_OVERHEAD_S
            else:
                each = a.warmup + a.duration + LOAD_OVERHEAD_S
            secs += k * each
            if group != "rss":  # RSS samples are never flagged as disturbed
                retry += k * a.max_retries * (a.quiet_wait + each)
        return n, secs, min(retry, a.retry_budget)

    def plan_line(self, items):
        n, secs, retry = self.estimate(items)
        line = f"plan: {n} samples, ~{fmt_dur(secs)} (estimated"
        if retry > 0:
            line += f"; re-running disturbed samples can add up to ~{fmt_dur(retry)}"
        return line + ")"

    def log(self, msg):
        print(msg, flush=True)

    def run(self):
        items = self.plan()
        total = sum(len(loops) for _, _, loops, _ in items) * self.a.rounds
        self.estimated_s = self.estimate(items)[1] - FIXED_S  # comparable with elapsed
        self.log(
            f"{len(items)} benchmarks, {self.a.rounds} rounds; loops: {', '.join(self.a.loops)}"
        )
        self.log(self.plan_line(items))
        n = 0
        self.t_start = t_start = time.monotonic()
        for name, group, loops, fn in items:
            for rnd in range(1, self.a.rounds + 1):
                for loop in loops:
                    n += 1
                    # Re-runs may use the --retry-budget pro rata: by sample n
                    # at most budget * n / total seconds in all, so a busy
                    # spell early on cannot use up what later samples need.
                    allowance = self.a.retry_budget * n / total
                    s = self.one(name, group, loop, rnd, fn, allowance)
                    self.log(f"[{n:3}/{total}] {name:24} r{rnd} {loop:9} {self.describe(group, s)}")
        self.elapsed = time.monotonic() - t_start

    def one(self, name, group, loop, rnd, fn, allowance=float("inf")):
        attempts = 0
        t_retry = None
        while True:
            attempts += 1
            try:
                s = fn(loop)
            except SampleError as e:
                s = {"error": str(e)}
            except Exception as e:
                s = {"error": f"driver: {type(e).__name__}: {e}"}
            if t_retry is not None:
                self.retry_s += time.monotonic() - t_retry
            if s.get("error") or not s.get("disturbed") or attempts > self.a.max_retries:
                break
            left = allowance - self.retry_s
            if left <= 0:
                self.log(
                    f"      {name} {loop}: foreign CPU load {s.get('foreign_cpu', 0):.2f} cores "
                    f"during the sample; re-run budget used up ({self.retry_s:.0f} s of "
                    f"{self.a.retry_budget:.0f} s), keeping it flagged as disturbed"
                )
                break
            self.log(
                f"      {name} {loop}: foreign CPU load {s.get('foreign_cpu', 0):.2f} cores "
                f"during the sample, re-running ({attempts}/{self.a.max_retries})"
            )
            t_retry = time.monotonic()
            # Give whatever else is running a chance to finish first (bounded
            # by --quiet-wait and by what is left of the re-run budget).
            wait = min(self.a.quiet_wait, left)
            if wait > 0 and not wait_quiet(wait):
                self.log(f"      (machine still busy after {wait:.0f} s, re-running anyway)")
        s.update(bench=name, group=group, loop=loop, round=rnd, attempts=attempts)
        self.samples.append(s)
        if s.get("error"):
            self.errors.append({"bench": name, "loop": loop, "round": rnd, "error": s["error"]})
        return s

    @staticmethod
    def describe(group, s):
        if s.get("error"):
            return "ERROR: " + s["error"].splitlines()[-1][:150]
        flag = " (disturbed)" if s.get("disturbed") else ""
        if group in ("echo", "http"):
            cpu = s.get("cpu_us_per_req")
            return (
                f"{s['rps']:>11,.0f} req/s  cpu {fmt_num(cpu)} µs/req  "
                f"p99 {fmt_num(s.get('p99_us'))} µs{flag}"
            )
        if group == "micro":
            return f"{s['value']:>13,.1f} {s['unit']}{flag}"
        if group == "rss":
            return f"RSS {s['rss_mib']:.1f} MiB ({s['kib_per_conn']:.2f} KiB/conn)"
        return ""


class SampleError(Exception):
    pass


# ----------------------------------------------------------------- summary


def median_of(samples, key):
    vals = [s[key] for s in samples if not s.get("error") and s.get(key) is not None]
    return statistics.median(vals) if vals else None


def summarize(samples):
    out = {}
    for s in samples:
        out.setdefault(s["bench"], {}).setdefault(s["loop"], []).append(s)
    summary = {}
    for bench, per_loop in out.items():
        summary[bench] = {}
        for loop, ss in per_loop.items():
            keys = {
                k
                for s in ss
                for k, v in s.items()
                if isinstance(v, (int, float))
                and not isinstance(v, bool)
                and k not in ("round", "attempts")
            }
            ok = [s for s in ss if not s.get("error")]
            clean = [s for s in ok if not s.get("disturbed")]
            # Medians over the undisturbed samples when there are any.
            used = clean or ok
            d = {k: median_of(used, k) for k in sorted(keys)}
            d["n"] = len(used)
            d["n_disturbed_used"] = 0 if clean else len(ok)
            d["errors"] = sum(1 for s in ss if s.get("error"))
            d["disturbed"] = sum(1 for s in ss if s.get("disturbed"))
            if ss and ss[0].get("unit"):
                d["unit"] = ss[0]["unit"]
            summary[bench][loop] = d
    return summary


def paired_ratios(samples, numerator="ferroloop", denominator="uvloop"):
    """Per benchmark and metric, the median over rounds of numerator/denominator
    for the two samples of the same round.

    The two samples of a round run seconds apart, so a slow phase of the machine
    usually hits both. A ratio of medians can instead set one loop's fast-phase
    median against the other's slow-phase one when the samples are bimodal.
    Disturbed samples are left out unless no undisturbed pair is left.
    """
    rounds = {}
    for s in samples:
        if s.get("error") or s["loop"] not in (numerator, denominator):
            continue
        rounds.setdefault(s["bench"], {}).setdefault(s["round"], {})[s["loop"]] = s
    out = {}
    for bench, by_round in rounds.items():
        pairs = [(r[numerator], r[denominator]) for r in by_round.values() if len(r) == 2]
        clean = [p for p in pairs if not (p[0].get("disturbed") or p[1].get("disturbed"))]
        used = clean or pairs
        metrics = {
            k
            for a, b in used
            for k, v in a.items()
            if isinstance(v, (int, float))
            and not isinstance(v, bool)
            and k not in ("round", "attempts")
            and b.get(k)
        }
        out[bench] = {
            k: statistics.median(a[k] / b[k] for a, b in used if a.get(k) is not None and b.get(k))
            for k in sorted(metrics)
        }
    return out


def tables(summary, loops_run, paired=None):
    """Build the result tables as (title, header, rows) triples.

    `paired` (from `paired_ratios`) adds the "fl/uv per round" column.
    """
    out = []
    others = [lp for lp in OTHER_LOOPS if lp in loops_run]
    cols = [*LOOPS, *others]
    paired = paired or {}

    def against_others(med):
        """ferroloop's ratio to each other loop run (``fl/rl``...)."""
        return [fmt_ratio(ratio(med["ferroloop"], med[lp])) for lp in others]

    other_heads = [f"fl/{SHORT[lp]}" for lp in others]

    def per_round(bench, metric):
        return fmt_ratio(paired.get(bench, {}).get(metric))

    def echo_rows(metric):
        rows = []
        for bench in summary:
            if not bench.startswith("echo/") or bench.startswith("echo/rust/"):
                continue
            size = bench.rsplit("/", 1)[1]
            rust = summary.get(f"echo/rust/{size}", {}).get(RUST, {}).get(metric)
            med = {lp: summary[bench].get(lp, {}).get(metric) for lp in cols}
            rows.append(
                [bench[5:]]
                + [fmt_num(med[lp]) for lp in cols]
                + [fmt_num(rust)]
                + [
                    fmt_ratio(ratio(med["ferroloop"], med["uvloop"])),
                    per_round(bench, metric),
                    fmt_ratio(ratio(med["ferroloop"], med["asyncio"])),
                    fmt_ratio(ratio(med["ferroloop"], rust)),
                    fmt_ratio(ratio(med["uvloop"], med["asyncio"])),
                    *against_others(med),
                ]
            )
        return rows

    echo_head = [
        "echo",
        *cols,
        "rust limit",
        "fl/uv",
        "fl/uv per round",
        "fl/aio",
        "fl/rust",
        "uv/aio",
        *other_heads,
    ]
    for metric, title in [
        ("rps", "Echo: requests/s (higher is better)"),
        ("mib_s", "Echo: MiB/s echoed (higher is better)"),
        ("cpu_us_per_req", "Echo: server CPU µs per request (lower is better)"),
        ("p50_us", "Echo: p50 latency µs (lower is better)"),
        ("p99_us", "Echo: p99 latency µs (lower is better)"),
    ]:
        rows = echo_rows(metric)
        if rows:
            out.append((title, echo_head, rows, metric))

    ratio_head = ["fl/uv", "fl/uv per round", "fl/aio", "uv/aio", *other_heads]

    def simple_rows(prefix, metric, unit_of=None):
        rows = []
        for bench in summary:
            if not bench.startswith(prefix):
                continue
            med = {lp: summary[bench].get(lp, {}).get(metric) for lp in cols}
            unit = []
            if unit_of:
                unit = [
                    next(
                        (
                            summary[bench][lp].get("unit")
                            for lp in summary[bench]
                            if summary[bench][lp].get("unit")
                        ),
                        "",
                    )
                ]
            rows.append(
                [bench[len(prefix) :]]
                + unit
                + [fmt_num(med[lp]) for lp in cols]
                + [
                    fmt_ratio(ratio(med["ferroloop"], med["uvloop"])),
                    per_round(bench, metric),
                    fmt_ratio(ratio(med["ferroloop"], med["asyncio"])),
                    fmt_ratio(ratio(med["uvloop"], med["asyncio"])),
                    *against_others(med),
                ]
            )
        return rows

    for metric, title in [
        ("rps", "HTTP: requests/s (higher is better)"),
        ("cpu_us_per_req", "HTTP: server CPU µs per request (lower is better)"),
        ("p99_us", "HTTP: p99 latency µs (lower is better)"),
    ]:
        rows = simple_rows("http/", metric)
        if rows:
            out.append((title, ["http", *cols, *ratio_head], rows, metric))
    rows = simple_rows("micro/", "value", unit_of=True)
    if rows:
        out.append(
            (
                "Micro-benchmarks: ops/s (MiB/s for the subprocess pipes; higher is better)",
                ["micro", "unit", *cols, *ratio_head],
                rows,
                "value",
            )
        )
    for metric, title in [
        ("rss_mib", "Server RSS with 10,000 idle connections, MiB (lower is better)"),
        ("kib_per_conn", "Server RSS growth per idle connection, KiB (lower is better)"),
    ]:
        rows = simple_rows("rss/", metric)
        if rows:
            out.append((title, ["rss", *cols, *ratio_head], rows, metric))
    return out


def render_text(tbls):
    lines = []
    for title, head, rows, _ in tbls:
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        lines.append("")
        lines.append(title)
        lines.append(
            "  ".join(
                h.rjust(w) if i else h.ljust(w)
                for i, (h, w) in enumerate(zip(head, widths, strict=False))
            )
        )
        for r in rows:
            lines.append(
                "  ".join(
                    str(c).rjust(w) if i else str(c).ljust(w)
                    for i, (c, w) in enumerate(zip(r, widths, strict=False))
                )
            )
    return "\n".join(lines)


def render_md(tbls):
    lines = []
    for title, head, rows, _ in tbls:
        lines += [
            "",
            f"### {title}",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
        ]
        for r in rows:
            lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------- main


def report(data, path):
    """Summarize, print the tables, and (if path) write the JSON and latest.md."""
    m, samples, errors = data["meta"], data["samples"], data["errors"]
    cfg = m["config"]
    summary = summarize(samples)
    data["summary"] = summary
    paired = paired_ratios(samples)
    data["paired_ferroloop_uvloop"] = paired
    tbls = tables(summary, cfg["loops"], paired)
    print(render_text(tbls))
    if errors:
        print("\nErrors:")
        for e in errors:
            print(f"  {e['bench']} [{e['loop']}, round {e['round']}]: {e['error']}")
    disturbed = [s for s in samples if s.get("disturbed")]
    used = sum(v.get("n_disturbed_used", 0) for b in summary.values() for v in b.values())
    note = None
    if disturbed:
        budget = cfg.get("retry_budget")
        note = (
            f"{len(disturbed)} of {len(samples)} samples stayed disturbed by foreign CPU load "
            f"after up to {cfg['max_retries']} re-runs"
            + (f" (re-run budget {budget:.0f} s)" if budget is not None else "")
            + "; medians use undisturbed samples where a "
            f"benchmark/loop has any ({used} disturbed samples had to be used)"
        )
        print("\n" + note)
    if m.get("wall_s"):
        extra = []
        if m.get("estimated_s"):
            extra.append(f"estimated ~{fmt_dur(m['estimated_s'])} without re-runs")
        if m.get("retry_s"):
            extra.append(f"{fmt_dur(m['retry_s'])} of it re-running disturbed samples")
        print(f"\nwall time: {fmt_dur(m['wall_s'])}" + (f" ({'; '.join(extra)})" if extra else ""))
    if path is None:
        return
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    info = m["loops"]
    md = [
        "# ferroloop benchmark results",
        "",
        f"- date: {m['date']}, host: `{m['host']}`, commit `{m['git_commit'][:12]}`"
        + (" (dirty tree)" if m["git_dirty"] else ""),
        f"- {m['cpu_model']}, {m['cpus']} CPUs, Linux {m['kernel']}, Python {m['python']}",
        "- loops: " + ", ".join(f"{lp} ({info[lp]['type']} {info[lp]['version']})" for lp in info),
        f'- {cfg["rounds"]} rounds interleaved, medians shown; "fl/uv per round" is the median '
        "of the rounds' own ferroloop/uvloop ratios (the two samples of a round run seconds "
        f"apart); load samples {cfg['warmup']} s "
        f"warm-up + {cfg['duration']} s measured, {cfg['connections']} connections; "
        f"micro scale {cfg['scale']}" + ("; `--quick`" if cfg["quick"] else ""),
        f"- server pinned to CPU {cfg['server_cpu']}, client to CPU {cfg['client_cpu']}"
        if m.get("pinning")
        else "- unpinned",
        f"- raw data: `{shown_path(path)}`"
        + (f"; wall time {fmt_dur(m['wall_s'])}" if m.get("wall_s") else "")
        + (f" ({fmt_dur(m['retry_s'])} re-running disturbed samples)" if m.get("retry_s") else ""),
    ]
    if note:
        md.append(f"- {note}")
    if m.get("note"):
        md.append(f"- {m['note']}")
    for lp, err in m.get("unavailable_loops", {}).items():
        md.append(f"- **{lp} was not usable**: `{err}`")
    for bench, why in m.get("unavailable_benchmarks", {}).items():
        md.append(f"- **{bench} was not run**: {why}")
    md.append(render_md(tbls))
    if errors:
        md += ["", "### Errors", ""]
        md += [
            f"- `{e['bench']}` [{e['loop']}, round {e['round']}]: "
            + "`"
            + " ⏎ ".join(e["error"].strip().splitlines()[-3:])
            + "`"
            for e in errors
        ]
    (RESULTS / "latest.md").write_text("\n".join(md) + "\n")
    print(f"\nsaved {shown_path(path)} and benchmarks/results/latest.md")


def shown_path(path):
    """`path` relative to the repository when it is inside it, else as given."""
    try:
        return path.relative_to(ROOT)
    except ValueError:
        return path


def check_loops(requested):
    ok, info, missing = [], {}, {}
    for lp in requested:
        r = subprocess.run(
            [sys.executable, "-m", "benchmarks.loops", lp],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if r.returncode == 0:
            ok.append(lp)
            info[lp] = json.loads(r.stdout.strip().splitlines()[-1])
        else:
            err = (r.stderr.strip().splitlines() or ["no output"])[-1]
            missing[lp] = err
    return ok, info, missing


def compile_loop_packages(info):
    """Give every loop's package its bytecode caches, as an installed package has.

    A loop imported from a source tree where Python does not write caches
    (PYTHONDONTWRITEBYTECODE, set on some machines) is compiled again by every
    server process; the compiler's freed memory stays in the server's RSS
    (1.4 MiB for ferroloop, measured) and its time in start-up, which would
    count against that loop alone. Caches already fresh are left as they are.
    """
    for lp, details in info.items():
        if lp == "asyncio":
            continue
        package = Path(details["file"]).parent
        if not compileall.compile_dir(package, quiet=2):
            # A read-only install, say: its caches were written at install time.
            print(f"note: could not write bytecode caches in {package}", flush=True)


def missing_http_modules():
    """{benchmark name: why it cannot run} for HTTP servers whose module is missing."""
    out = {}
    for kind in HTTP_KINDS:  # the kinds are named after the module they need
        try:
            found = importlib.util.find_spec(kind) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out[f"http/{kind}"] = f"{kind} is not installed"
    return out


def meta(args, info, missing, build_how):
    def cmd(*c):
        try:
            r = subprocess.run(c, cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return ""
        return r.stdout.strip()

    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "kernel": platform.release(),
        "cpu_model": cpu,
        "cpus": os.cpu_count(),
        "git_commit": cmd("git", "rev-parse", "HEAD"),
        "git_dirty": bool(cmd("git", "status", "--porcelain", "--untracked-files=no")),
        "loops": info,
        "unavailable_loops": missing,
        "rust_helpers_build": build_how,
        "pinning": {"server_cpu": args.server_cpu, "client_cpu": args.client_cpu}
        if args.pin
        else None,
        "config": {k: v for k, v in vars(args).items()},
    }


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="ferroloop vs uvloop vs asyncio: echo, HTTP and micro-benchmarks.",
    )
    p.add_argument(
        "--loops",
        default=",".join(LOOPS),
        help="comma-separated loops to run (default: %(default)s; also known: "
        + ", ".join(OTHER_LOOPS)
        + ", which adds a ferroloop/<loop> column)",
    )
    p.add_argument("--rounds", type=int, help="rounds of A B C interleaving (default 3)")
    p.add_argument(
        "--duration",
        type=float,
        help="measured seconds per load sample (default 2, 1 with --quick)",
    )
    p.add_argument(
        "--warmup", type=float, help="unmeasured warm-up seconds per load sample (default 0.25)"
    )
    p.add_argument("--sizes", help="echo message sizes, from 1KiB,10KiB,100KiB (default: all)")
    p.add_argument("--connections", type=int, default=10, help="client connections (default 10)")
    p.add_argument(
        "--scale", type=float, help="multiplier of micro-benchmark op counts (default 1)"
    )
    p.add_argument(
        "--only",
        help="comma-separated name patterns (substring or glob), "
        "e.g. 'echo/protocol', 'micro/*', 'http,rss'",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="shorter samples, 1KiB and 100KiB only, quarter-size micro-benchmarks",
    )
    p.add_argument("--http-client", choices=("loadgen", "wrk"), default="loadgen")
    p.add_argument(
        "--max-retries",
        type=int,
        default=2,
        help="re-runs of a sample disturbed by foreign CPU load (default 2)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        help="before re-running a disturbed sample, wait up to this many seconds "
        "for the machine to be idle (default 3)",
    )
    p.add_argument(
        "--retry-budget",
        type=float,
        help="total seconds the whole run may spend on re-runs of disturbed samples "
        "(quiet waits included), shared out pro rata over the samples "
        "(default 600, 60 with --quick)",
    )
    p.add_argument("--rss-connections", type=int, default=10_000)
    p.add_argument(
        "--rss-hold", type=float, help="seconds the idle connections are held (default 1)"
    )
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    p.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    p.add_argument("--list", action="store_true", help="list benchmark names and exit")
    p.add_argument(
        "--report",
        metavar="JSON",
        help="re-summarize a saved results file (rewrites it and latest.md) without running",
    )
    a = p.parse_args(argv)
    q = a.quick
    a.rounds = a.rounds or 3
    # Defaults sized so that a full run takes ~8 min on 2 CPUs (~18 with every
    # re-run the budget allows; estimated): see "Budget" in benchmarks/README.md.
    a.duration = a.duration if a.duration is not None else (1.0 if q else 2.0)
    a.warmup = a.warmup if a.warmup is not None else 0.25
    a.scale = a.scale if a.scale is not None else (0.25 if q else 1.0)
    a.quiet_wait = a.quiet_wait if a.quiet_wait is not None else 3.0
    a.retry_budget = a.retry_budget if a.retry_budget is not None else (60.0 if q else 600.0)
    a.rss_hold = a.rss_hold if a.rss_hold is not None else 1.0
    a.sizes = a.sizes.split(",") if a.sizes else (["1KiB", "100KiB"] if q else list(SIZES))
    for s in a.sizes:
        if s not in SIZES:
            p.error(f"unknown size {s!r} (choose from {', '.join(SIZES)})")
    a.loops = [lp.strip() for lp in a.loops.split(",") if lp.strip()]
    for lp in a.loops:
        if lp not in KNOWN_LOOPS:
            p.error(f"unknown loop {lp!r} (choose from {', '.join(KNOWN_LOOPS)})")
    if a.rounds < 1 or a.duration <= 0 or a.duration > 600 or a.warmup < 0:
        p.error("need --rounds >= 1 and 0 < --duration <= 600, --warmup >= 0")
    if a.max_retries < 0 or a.quiet_wait < 0 or a.retry_budget < 0:
        p.error("need --max-retries, --quiet-wait and --retry-budget >= 0")
    return a


def next_result_path(results: Path, day: datetime.date, host: str) -> Path:
    """Where a run's JSON goes: `<date>-<host>-<n>.json`, numbered one past the
    highest number this host's runs have on any date (runs are cited by that
    number across days), or `<date>-<host>.json` for the host's first run."""
    numbered = re.compile(rf"\d{{4}}-\d{{2}}-\d{{2}}-{re.escape(host)}(?:-(\d+))?\.json")
    numbers = [
        int(match.group(1) or 1)
        for entry in results.glob(f"*-{host}*.json")
        if (match := numbered.fullmatch(entry.name))
    ]
    base = f"{day.isoformat()}-{host}"
    if not numbers:
        return results / f"{base}.json"
    return results / f"{base}-{max(numbers) + 1}.json"


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    if a.report:
        path = Path(a.report).resolve()
        report(json.loads(path.read_text()), path)
        return 0
    if a.list:
        d = Driver(a, {})
        items = d.plan()
        for name, group, loops, _ in items:
            print(f"{name:28} {group:6} {','.join(loops)}")
        print(d.plan_line(items))
        return 0
    if a.pin and (
        shutil.which("taskset") is None
        or len(os.sched_getaffinity(0)) < 2
        or not {a.server_cpu, a.client_cpu} <= os.sched_getaffinity(0)
        or a.server_cpu == a.client_cpu
    ):
        print(
            "warning: cannot pin server and client to two distinct CPUs; running unpinned",
            file=sys.stderr,
        )
        a.pin = False

    requested = a.loops
    ok, info, missing = check_loops(requested)
    for lp, err in missing.items():
        hint = ""
        if lp == "ferroloop":
            hint = f" (build and install it: {BENCH_DEPS_HINT})"
        elif lp == "uvloop":
            hint = f" (install the benchmark dependencies: {BENCH_DEPS_HINT})"
        print(f"*** {lp} is not usable, running without it: {err}{hint}", flush=True)
    for lp in ok:
        print(f"{lp}: {info[lp]['type']} {info[lp]['version']} ({info[lp]['file']})")
    if not ok:
        print("no usable event loop", file=sys.stderr)
        return 2
    a.loops = ok
    compile_loop_packages({lp: info[lp] for lp in ok})

    try:
        exes, how = build_mod.build(log=lambda m: print(m, flush=True))
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    d = Driver(a, exes, unavailable=missing_http_modules())
    skipped = {name: d.unavailable[name] for name in d.skipped()}
    for name, why in skipped.items():
        print(
            f"*** {name} is skipped: {why} (install the benchmark dependencies: {BENCH_DEPS_HINT})",
            flush=True,
        )
    try:
        d.run()
    except KeyboardInterrupt:
        print("\ninterrupted: summarizing the samples taken so far", flush=True)
        d.elapsed = time.monotonic() - d.t_start if hasattr(d, "t_start") else None
    finally:
        d.remove_scratch()
    m = meta(a, info, missing, how)
    m["config"]["loops_requested"] = requested
    m["wall_s"] = d.elapsed
    m["estimated_s"] = getattr(d, "estimated_s", None)
    m["retry_s"] = d.retry_s
    m["unavailable_benchmarks"] = skipped
    path = None
    if not a.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = next_result_path(RESULTS, datetime.date.today(), socket.gethostname())
    report({"meta": m, "samples": d.samples, "errors": d.errors}, path)
    return 0
