"""A throwaway PostgreSQL server for the tests: initdb into a temp dir, start, stop.

``PostgresServer.start()`` finds PostgreSQL's server binaries (``initdb`` and
``postgres``: on ``PATH``, through ``pg_config --bindir``, or Debian's
``/usr/lib/postgresql/<version>/bin``, newest first), creates a cluster in a new
temporary directory and starts ``postgres`` listening on 127.0.0.1 on a free
port and on a Unix socket in that directory. Nothing else is touched: no
system cluster, no network, no SSL, trust authentication for a superuser role
named ``postgres``.

PostgreSQL refuses to run as root. When the tests run as root the server runs
as an unprivileged account (``postgres`` if the system has it, else
``nobody``), with the temporary directory owned by that account; the switch is
done by ``subprocess`` itself (``user=``/``group=``), so no ``runuser``/``su``
is needed. ``stop()`` shuts the server down (fast shutdown, then SIGKILL if it
hangs) and removes the directory.

``find_bindir()`` returning ``None`` means PostgreSQL's server is not
installed; the tests skip on that (CI installs it).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "postgres"
DATABASE = "postgres"
_RUNAS_CANDIDATES = ("postgres", "nobody")
_STARTUP_TIMEOUT = 30.0


def _has_server(bindir: str) -> bool:
    return all(os.access(os.path.join(bindir, b), os.X_OK) for b in ("initdb", "postgres"))


def _version_key(path: str) -> tuple[int, ...]:
    name = Path(path).parent.name
    return tuple(int(p) for p in name.split(".") if p.isdigit())


def find_bindir() -> str | None:
    """The directory holding ``initdb`` and ``postgres``, or ``None`` if not installed."""
    env = os.environ.get("PG_BINDIR")
    if env and _has_server(env):
        return env
    candidates: list[str] = []
    for exe in ("initdb", "postgres"):
        found = shutil.which(exe)
        if found:
            candidates.append(os.path.dirname(os.path.realpath(found)))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
            )
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for c in candidates:
        if _has_server(c):
            return c
    return None


def _run_as_account() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as when we are root (else None)."""
    if os.geteuid() != 0:
        return None
    for name in _RUNAS_CANDIDATES:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and no unprivileged account (postgres/nobody) exists")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM the server if the test process dies without cleaning up."""
    with contextlib.suppress(Exception):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class PostgresServer:
    bindir: str
    root: Path = field(init=False)
    port: int = field(init=False, default=0)
    _proc: subprocess.Popen[bytes] | None = field(init=False, default=None)
    _account: pwd.struct_passwd | None = field(init=False, default=None)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> str:
        return str(self.root / "sock")

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def dsn_tcp(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    def connect_kwargs_tcp(self) -> dict[str, object]:
        return {"host": "127.0.0.1", "port": self.port, "user": SUPERUSER, "database": DATABASE}

    def connect_kwargs_unix(self) -> dict[str, object]:
        # asyncpg treats a host starting with "/" as the socket directory.
        return {"host": self.socket_dir, "port": self.port, "user": SUPERUSER, "database": DATABASE}

    # -- lifecycle ---------------------------------------------------------

    def _popen_kwargs(self) -> dict[str, object]:
        kw: dict[str, object] = {"preexec_fn": _die_with_parent}
        if self._account is not None:
            kw.update(user=self._account.pw_uid, group=self._account.pw_gid, extra_groups=[])
        return kw

    def start(self) -> PostgresServer:
        self._account = _run_as_account()
        # /tmp-based, short: the Unix socket path must fit in sun_path (108 bytes).
        self.root = Path(tempfile.mkdtemp(prefix="ferroloop-pg-"))
        try:
            os.mkdir(self.socket_dir, 0o700)
            if self._account is not None:
                for p in (self.root, Path(self.socket_dir)):
                    os.chown(p, self._account.pw_uid, self._account.pw_gid)
            self._initdb()
            last_error = ""
            for _ in range(3):  # a free port may be taken between probe and bind
                self.port = _free_port()
                try:
                    self._start_postgres()
                    return self
                except RuntimeError as exc:
                    last_error = str(exc)
                    if "could not bind" not in last_error and "in use" not in last_error:
                        break
            raise RuntimeError(last_error)
        except BaseException:
            self.stop()
            raise

    def _initdb(self) -> None:
        cmd = [
            os.path.join(self.bindir, "initdb"),
            "-D", str(self.datadir),
            "-U", SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]  # fmt: skip
        out = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=self.root,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
            **self._popen_kwargs(),  # type: ignore[arg-type]
        )
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")

    def _start_postgres(self) -> None:
        cmd = [
            os.path.join(self.bindir, "postgres"),
            "-D", str(self.datadir),
            "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"unix_socket_directories={self.socket_dir}",
            "-c", "ssl=off",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            "-c", "max_connections=100",
            "-c", "shared_buffers=32MB",
            "-c", "log_min_messages=warning",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env={**os.environ, "LC_ALL": "C", "LANG": "C"},
                **self._popen_kwargs(),  # type: ignore[arg-type]
            )
        pidfile = self.datadir / "postmaster.pid"
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"postgres exited at startup:\n{self.log_tail()}")
            # Since PostgreSQL 10 the 8th line of postmaster.pid is the postmaster's
            # status; "ready" means it accepts connections.
            with contextlib.suppress(OSError):
                lines = pidfile.read_text().splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    return
            time.sleep(0.05)
        self._terminate()
        raise RuntimeError(f"postgres not ready after {_STARTUP_TIMEOUT}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return "(no log)"

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # "fast" shutdown: disconnect clients, stop
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def stop(self) -> None:
        """Shut the server down and delete its directory (idempotent)."""
        self._terminate()
        root = getattr(self, "root", None)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
