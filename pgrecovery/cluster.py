"""`LocalCluster`: a PostgreSQL server on this host under our control (initdb, settings, start/stop, connect).

Recovery runs, restore drills, the demo and test suites use it. PostgreSQL refuses to run as root, so when we are
root the server programs run as an unprivileged OS user (``postgres`` by default) who owns the directories we make.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from . import _walclient, pgtools
from ._fsutil import atomic_file
from ._pgdb import connect
from ._spool import SPOOL_NAME
from .errors import ClusterError, ConfigurationError, DatabaseError, ToolFailed, ToolNotFound

if TYPE_CHECKING:
    import psycopg


def default_run_as() -> str | None:
    """``postgres`` when we are root (PostgreSQL will not run as root), otherwise ourselves."""
    return os.environ.get("PGRECOVERY_RUN_AS", "postgres") if os.getuid() == 0 else None


def port_choice(value: int | Iterable[int] | None) -> tuple[int, ...] | None:
    """The ports a server may listen on: one port, or several (``range(55000, 55100)``); None: any free port.

    Raises `ConfigurationError` for an empty choice or a number that is not a TCP port.
    """
    if value is None:
        return None
    ports = (value,) if isinstance(value, int) else tuple(value)
    if not ports:
        raise ConfigurationError("the port range is empty: give at least one port")
    for p in ports:
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
            raise ConfigurationError(f"{p!r} is not a TCP port: use a number from 1 to 65535")
    return ports


def parse_ports(text: str) -> range:
    """``"5432"`` or ``"55000-55099"`` (both ends included) as a range of ports; `ConfigurationError` otherwise."""
    low, dash, high = text.strip().partition("-")
    try:
        first = int(low)
        last = int(high) if dash else first
    except ValueError:
        raise ConfigurationError(
            f"{text!r} is not a port or a port range: use PORT or LOW-HIGH (55000-55099)"
        ) from None
    if last < first:
        raise ConfigurationError(f"port range {text!r} ends before it starts: use LOW-HIGH, the lower port first")
    ports = range(first, last + 1)
    port_choice(ports)
    return ports


def describe_ports(ports: Sequence[int]) -> str:
    """``55000-55099`` for a contiguous range, else the ports themselves (the first few)."""
    if len(ports) > 1 and list(ports) == list(range(ports[0], ports[0] + len(ports))):
        return f"{ports[0]}-{ports[-1]}"
    shown = ", ".join(str(p) for p in ports[:5])
    return shown + (f" and {len(ports) - 5} more" if len(ports) > 5 else "")


def free_port(ports: Sequence[int] | None = None) -> int:
    """A port nothing listens on at 127.0.0.1: any (the system's choice), or the first free one of ``ports``.

    Raises `ClusterError` when every one of ``ports`` is taken.
    """
    if ports is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    count = f"all {len(ports)} are" if len(ports) > 1 else "it is"
    raise ClusterError(
        f"no free port for a PostgreSQL server in {describe_ports(ports)} ({count} in use): give more ports or free one"
    )


def _owner_ids(user: str | None) -> tuple[int, int] | None:
    if user is None:
        return None
    import pwd

    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise ConfigurationError(f"OS user {user!r} does not exist: create it or pass run_as=") from None
    return pw.pw_uid, pw.pw_gid


def _setting_name(line: str) -> str:
    """The setting a line of postgresql.auto.conf sets (lower case, as PostgreSQL compares names)."""
    return line.split("=", 1)[0].strip().lower()


def _quote_setting(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    # PostgreSQL's configuration parser reads backslash escapes inside quotes: double them, as ALTER SYSTEM does
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def _absolute(path: str | os.PathLike[str]) -> Path:
    return Path(path).absolute()


def require_server_programs(major: int, *, what: str, bindir: str | os.PathLike[str] | None = None) -> pgtools.PgTool:
    """This host's server programs (pg_ctl) of exactly ``major``; else `ToolNotFound` naming both versions.

    A data directory only runs under the server major that wrote it: called before anything is written.
    """
    try:
        return pgtools.find_tool("pg_ctl", major=major, bindir=bindir)
    except ToolNotFound:
        try:
            other = pgtools.find_tool("pg_ctl", bindir=bindir)
        except ToolNotFound:
            raise ToolNotFound(
                f"{what} is PostgreSQL {major} and no PostgreSQL server programs were found: install PostgreSQL "
                f"{major}'s or set {pgtools.BINDIR_ENV} to their directory"
            ) from None
        raise ToolNotFound(
            f"{what} is PostgreSQL {major} but the server programs here are PostgreSQL {other.major} "
            f"({other.bindir}): a data directory runs only under its own major; install PostgreSQL {major}'s "
            f"server programs or set {pgtools.BINDIR_ENV} to their directory"
        ) from None


def data_dir_major(pgdata: str | os.PathLike[str]) -> int | None:
    """The major version of an existing data directory (its PG_VERSION file), None when there is none."""
    try:
        text = (Path(pgdata) / "PG_VERSION").read_text().strip()
    except OSError:
        return None
    m = re.match(r"(\d+)", text)
    return int(m.group(1)) if m else None


def check_data_dir_major(pgdata: str | os.PathLike[str], major: int, *, what: str) -> None:
    """Refuse (`ConfigurationError`) to write ``what`` (of PostgreSQL ``major``) into a data directory of another
    major: the two never mix, and a partly rewritten directory would be neither."""
    found = data_dir_major(pgdata)
    if found is not None and found != major:
        raise ConfigurationError(
            f"{what} is PostgreSQL {major} but {pgdata} is a PostgreSQL {found} data directory: restore into an "
            "empty directory (or one of the same major)"
        )


@attrs.define(eq=False)
class LocalCluster:
    """A local PostgreSQL data directory and the server running on it.

    >>> with LocalCluster.temporary() as pg:                                    # doctest: +SKIP
    ...     pg.execute("create table t (i int)")
    ...     print(pg.conninfo())
    """

    data_dir: Path = attrs.field(converter=_absolute)
    port: int = 0  # 0: a free one (of ``ports`` when given), chosen when the object is made
    host: str = "127.0.0.1"
    superuser: str = "postgres"
    run_as: str | None = attrs.field(factory=default_run_as)
    major: int | None = None
    log_file: Path | None = None
    owns_parent: bool = False  # remove the data directory's parent too on destroy() (temporary clusters)
    # The ports the server may use (one, or a range): where it starts, and moves to when its port is taken
    ports: tuple[int, ...] | None = attrs.field(default=None, converter=port_choice, kw_only=True)
    # Where its server programs are (default: PGRECOVERY_PG_BINDIR, else the search of `pgtools.find_tool`)
    bindir: Path | None = attrs.field(default=None, converter=attrs.converters.optional(_absolute), kw_only=True)

    def __attrs_post_init__(self) -> None:
        if not self.port:
            self.port = free_port(self.ports)
        elif self.ports is not None and self.port not in self.ports:
            raise ConfigurationError(f"port {self.port} is not one of the allowed ports {describe_ports(self.ports)}")

    # -- creation --------------------------------------------------------------------------------------------
    @classmethod
    def temporary(
        cls,
        *,
        settings: Mapping[str, object] | None = None,
        checksums: bool = True,
        run_as: str | None = None,
        major: int | None = None,
        parent: str | os.PathLike[str] | None = None,
        ports: int | Iterable[int] | None = None,
        bindir: str | os.PathLike[str] | None = None,
    ) -> LocalCluster:
        """initdb a fresh cluster in a new temporary directory (not started; use it as a context manager).

        ``ports``: the port, or ports, it may listen on (default: any free one). ``bindir``: the directory of
        the server programs to use (default: `pgtools.find_tool`'s search).
        """
        allowed = port_choice(ports)
        who = run_as if run_as is not None else default_run_as()
        base = Path(tempfile.mkdtemp(prefix="pgrecovery-", dir=parent))
        ids = _owner_ids(who)
        if ids:
            os.chown(base, *ids)
        base.chmod(0o700)
        try:
            cluster = cls(
                data_dir=base / "data",
                run_as=who,
                major=major,
                log_file=base / "server.log",
                owns_parent=True,
                ports=allowed,
                bindir=bindir,
            )
            cluster.init(checksums=checksums, settings=settings)
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise
        return cluster

    def _tool(self, name: str) -> pgtools.PgTool:
        return pgtools.find_tool(name, major=self.major, bindir=self.bindir)

    def _run(self, cmd: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 120) -> str:
        try:
            res = pgtools.run(cmd, run_as=self.run_as, cwd="/", env=env, timeout=timeout)
        except ToolFailed as e:
            raise ClusterError(f"{e}{self.log_tail()}") from None
        return res.stdout.decode(errors="replace")

    def init(self, *, checksums: bool = True, settings: Mapping[str, object] | None = None) -> LocalCluster:
        """Run initdb (data checksums on by default), then apply ``settings``."""
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise ClusterError(f"cannot initdb into {self.data_dir}: the directory is not empty")
        self._prepare_dir(self.data_dir)
        initdb = self._tool("initdb")
        if self.major is None:
            self.major = initdb.major
        self._run(pgtools.initdb_command(initdb, str(self.data_dir), superuser=self.superuser, checksums=checksums))
        if settings:
            self.configure(**settings)
        return self

    def _prepare_dir(self, path: Path) -> None:
        ids = _owner_ids(self.run_as)
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)
        if ids:
            os.chown(path, *ids)

    # -- settings --------------------------------------------------------------------------------------------
    @property
    def auto_conf(self) -> Path:
        return self.data_dir / "postgresql.auto.conf"

    def configure(self, **settings: object) -> None:
        """Write settings into postgresql.auto.conf (replacing earlier values); a reload or restart applies them.

        ``None`` as a value removes the setting.
        """
        lines = self.auto_conf.read_text().splitlines() if self.auto_conf.exists() else []
        keep = [ln for ln in lines if _setting_name(ln) not in {k.lower() for k in settings}]
        keep += [f"{k} = {_quote_setting(v)}" for k, v in settings.items() if v is not None]
        self._write_owned(self.auto_conf, "\n".join(keep) + "\n")

    def configured(self, name: str, value: object) -> bool:
        """Whether postgresql.auto.conf sets ``name`` to ``value`` (its last line for ``name``, as `configure`
        writes it: the one PostgreSQL uses)."""
        lines = self.auto_conf.read_text().splitlines() if self.auto_conf.exists() else []
        ours = [ln.strip() for ln in lines if _setting_name(ln) == name.lower()]
        return bool(ours) and ours[-1] == f"{name} = {_quote_setting(value)}"

    def _write_owned(self, path: Path, text: str) -> None:
        """Replace a file of the data directory whole, mode 600 and owned by the server's user."""
        ids = _owner_ids(self.run_as)
        with atomic_file(str(path), mode=0o600) as out:
            out.write(text.encode())
            if ids:
                os.fchown(out.fileno(), *ids)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def log_tail(self) -> str:
        if self.log_file and self.log_file.exists():
            lines = self.log_file.read_text(errors="replace").strip().splitlines()[-10:]
            if lines:
                return "\nserver log:\n" + "\n".join(lines)
        return ""

    def _ensure_log(self) -> str:
        if self.log_file is None:
            self.log_file = self.data_dir.with_name(self.data_dir.name + ".log")
        if not self.log_file.exists():
            self.log_file.touch(mode=0o600)
            ids = _owner_ids(self.run_as)
            if ids:
                os.chown(self.log_file, *ids)
        return str(self.log_file)

    def start(self, *, env: Mapping[str, str] | None = None, timeout: int = 120) -> LocalCluster:
        """Start the server (on ``port``, 127.0.0.1 only) and wait until it accepts connections.

        ``env`` is added to the server's environment, which archive_command and restore_command inherit.
        """
        if not (self.data_dir / "PG_VERSION").exists():
            raise ClusterError(f"{self.data_dir} is not a PostgreSQL data directory (no PG_VERSION): initdb it first")
        if self.major is None:
            self.major = int((self.data_dir / "PG_VERSION").read_text().strip().split(".")[0])
        for attempt in range(3):
            self.configure(port=self.port, listen_addresses=self.host, unix_socket_directories="")
            log = self._ensure_log()
            cmd = pgtools.pg_ctl_command(
                self._tool("pg_ctl"), "start", str(self.data_dir), log_file=log, timeout=timeout
            )
            try:
                self._run(cmd, env=env, timeout=timeout + 30)
                break
            except ClusterError as e:
                if attempt < 2 and "Address already in use" in str(e):
                    self.port = free_port(self.ports)
                    continue
                raise
        self.wait_ready(timeout=timeout)
        return self

    def stop(self, mode: str = "fast", timeout: int = 120) -> None:
        """Stop the server (``fast``: roll back sessions; ``smart``; ``immediate``: crash-like), then its WAL worker
        (`pgrecovery.wal.worker`), if one runs on the default spool."""
        try:
            if self.is_running():
                pg_ctl = self._tool("pg_ctl")
                self._run(pgtools.pg_ctl_command(pg_ctl, "stop", str(self.data_dir), mode=mode, timeout=timeout))
        finally:
            _walclient.stop(str(self.data_dir / SPOOL_NAME))

    def restart(self, *, env: Mapping[str, str] | None = None) -> LocalCluster:
        self.stop()
        return self.start(env=env)

    def reload(self) -> None:
        self._run(pgtools.pg_ctl_command(self._tool("pg_ctl"), "reload", str(self.data_dir)))

    def promote(self, *, wait: bool = True, timeout: int = 120) -> None:
        """End recovery and make the server a primary (a new timeline)."""
        self._run(
            pgtools.pg_ctl_command(self._tool("pg_ctl"), "promote", str(self.data_dir), wait=wait, timeout=timeout)
        )

    def is_running(self) -> bool:
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return False
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError, OSError):
            return False
        return True

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until a connection succeeds (a server in recovery counts once it accepts read-only sessions)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with connect(self.conninfo(), timeout=5):
                    return
            except DatabaseError as e:
                if time.monotonic() > deadline or not self.is_running():
                    raise ClusterError(
                        f"server on port {self.port} is not accepting connections: {e}{self.log_tail()}"
                    ) from None
                time.sleep(0.1)

    def destroy(self) -> None:
        """Stop the server (immediately) and remove its directory."""
        with contextlib.suppress(ClusterError):
            if self.is_running():
                self.stop(mode="immediate")
        target = self.data_dir.parent if self.owns_parent else self.data_dir
        shutil.rmtree(target, ignore_errors=True)
        if not self.owns_parent and self.log_file:
            with contextlib.suppress(OSError):
                self.log_file.unlink()

    def __enter__(self) -> LocalCluster:
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owns_parent:
            self.destroy()
        else:
            self.stop()

    # -- SQL ------------------------------------------------------------------------------------------------
    def conninfo(self, dbname: str = "postgres") -> str:
        return pgtools.make_conninfo(
            {"host": self.host, "port": str(self.port), "user": self.superuser, "dbname": dbname}
        )

    def connect(self, dbname: str = "postgres", *, autocommit: bool = True) -> psycopg.Connection[tuple[Any, ...]]:
        return connect(self.conninfo(dbname), autocommit=autocommit)

    def execute(self, sql: str, params: Sequence[object] | None = None, *, dbname: str = "postgres") -> None:
        """Run one or more SQL statements (autocommit)."""
        with self.connect(dbname) as conn:
            conn.execute(sql, params)

    def query(
        self, sql: str, params: Sequence[object] | None = None, *, dbname: str = "postgres"
    ) -> list[tuple[Any, ...]]:
        """Rows of one query."""
        with self.connect(dbname) as conn:
            return conn.execute(sql, params).fetchall()

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name``; returns its conninfo."""
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.conninfo(name)


def check_runnable_by(user: str | None = None, python: str | None = None) -> None:
    """Raise `ClusterError` unless PostgreSQL's OS user can run this interpreter and import pgrecovery.

    archive_command and restore_command run as the server's user: the interpreter, the virtualenv and every
    directory above them must be reachable by that user.
    """
    import sys

    who = user if user is not None else default_run_as()
    exe = python or sys.executable
    if who is None:
        return
    try:
        pgtools.run([exe, "-c", "import pgrecovery"], run_as=who, cwd="/", what=f"{exe} as {who}", timeout=60)
    except (ToolFailed, ConfigurationError, OSError) as e:
        raise ClusterError(
            f"PostgreSQL's OS user {who!r} cannot run {exe} with pgrecovery ({str(e).splitlines()[-1]}): "
            "archive_command and restore_command need an interpreter and a pgrecovery install that user can reach; "
            "build the virtualenv from the system interpreter (/usr/bin/python3) in a directory whose every parent "
            f"{who} can traverse"
        ) from None


@contextlib.contextmanager
def temporary_cluster(**kwargs: Any) -> Iterator[LocalCluster]:
    """A started temporary cluster, destroyed on exit whatever happens."""
    cluster = LocalCluster.temporary(**kwargs)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
