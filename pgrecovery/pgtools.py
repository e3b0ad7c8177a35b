"""The only module that locates and runs PostgreSQL programs (pg_dump, pg_restore, psql, initdb, pg_ctl ...).

It finds binaries (``PGRECOVERY_PG_BINDIR``, ``/usr/lib/postgresql/<major>/bin`` newest first, ``pg_config
--bindir``, ``PATH``), checks their major version against the server's, keeps passwords off command lines (they go
to the child's environment as ``PGPASSWORD``), runs server programs as an unprivileged user when we are root, and
turns a failure into `ToolFailed` carrying the program's stderr.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final

import attrs

from ._redact import redact
from .errors import ConfigurationError, ToolFailed, ToolNotFound

BINDIR_ENV: Final = "PGRECOVERY_PG_BINDIR"
_VERSION_RE: Final = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
_SECRET_KEYS: Final = frozenset({"password", "sslpassword"})


@attrs.frozen
class PgTool:
    """A located PostgreSQL program and its version."""

    name: str
    path: Path
    major: int
    version: str

    @property
    def bindir(self) -> Path:
        return self.path.parent


def candidate_bindirs() -> list[Path]:
    """Directories that may hold PostgreSQL programs, most preferred first."""
    explicit = os.environ.get(BINDIR_ENV)
    if explicit:
        return [Path(explicit)]
    found: list[Path] = []

    def major_of(p: str) -> float:
        m = re.search(r"(\d+(?:\.\d+)?)", p)
        return float(m.group(1)) if m else 0.0

    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/opt/homebrew/opt/postgresql@*/bin"):
        found += [Path(p) for p in sorted(glob.glob(pattern), key=major_of, reverse=True)]
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False)
            if out.returncode == 0 and out.stdout.strip():
                found.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    found += [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    unique: list[Path] = []
    for p in found:
        if p not in unique:
            unique.append(p)
    return unique


@functools.cache
def tool_version(path: Path) -> tuple[int, str]:
    """(major, full version text) from ``<tool> --version``."""
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError as e:
        raise ToolNotFound(f"cannot run {path}: {e}") from None
    m = _VERSION_RE.search(out.stdout)
    if not m:
        raise ToolNotFound(f"{path} --version printed {out.stdout.strip()!r}: not a PostgreSQL program")
    return int(m.group(1)), out.stdout.strip()


def find_tool(
    name: str, *, min_major: int | None = None, major: int | None = None, bindir: str | os.PathLike[str] | None = None
) -> PgTool:
    """Locate ``name``: the first candidate (newest first) whose major version fits.

    ``major`` asks for exactly that major version (server programs); ``min_major`` for at least it (a pg_dump
    must not be older than the server it dumps). ``bindir`` looks there only (before ``PGRECOVERY_PG_BINDIR``).
    """
    seen: list[str] = []
    for d in [Path(bindir)] if bindir is not None else candidate_bindirs():
        path = d / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        if d == Path("/usr/bin") and (Path("/usr/share/postgresql-common/pg_wrapper").exists()):
            continue  # Debian's wrapper picks a version by itself; we choose explicitly
        tool_major, text = tool_version(path)
        seen.append(f"{path} ({tool_major})")
        if major is not None and tool_major != major:
            continue
        if min_major is not None and tool_major < min_major:
            continue
        return PgTool(name=name, path=path, major=tool_major, version=text)
    hint = f"set {BINDIR_ENV} to the directory holding it, or install the PostgreSQL client/server packages"
    if seen and (major is not None or min_major is not None):
        want = f"version {major}" if major is not None else f"version {min_major} or newer"
        raise ToolNotFound(
            f"{name} {want} is needed (found only {', '.join(seen)}); a {name} older than the server "
            f"cannot be used: install PostgreSQL {major or min_major} client programs or {hint}"
        )
    raise ToolNotFound(f"{name} not found: {hint}")


# -- connection strings ------------------------------------------------------------------------------------


def conninfo_dict(conninfo: str) -> dict[str, str]:
    """Parse a libpq connection string or URI; raise `ConfigurationError` naming the problem."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        return {k: str(v) for k, v in conninfo_to_dict(conninfo).items() if v is not None}
    except Exception as e:  # noqa: BLE001 - psycopg raises ProgrammingError for a bad string
        raise ConfigurationError(f"bad connection string: {redact(str(e))}") from None


def make_conninfo(parts: Mapping[str, str]) -> str:
    from psycopg.conninfo import make_conninfo as mk

    return mk("", **parts)


def split_secret(conninfo: str) -> tuple[str, dict[str, str]]:
    """(conninfo without password, environment carrying it) so that no password reaches a command line."""
    parts = conninfo_dict(conninfo)
    env: dict[str, str] = {}
    if "password" in parts:
        env["PGPASSWORD"] = parts.pop("password")
    if "sslpassword" in parts:
        parts.pop("sslpassword")
    return make_conninfo(parts), env


def public_conninfo(conninfo: str) -> dict[str, str]:
    """The non-secret parts of a connection (host, port, user, dbname), resolved with libpq's defaults."""
    parts = conninfo_dict(conninfo)
    out = {}
    for key, env in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER"), ("dbname", "PGDATABASE")):
        value = parts.get(key) or os.environ.get(env)
        if value:
            out[key] = value
    return out


def describe(conninfo: str) -> str:
    """A safe one-line description of a connection for messages."""
    try:
        parts = public_conninfo(conninfo)
    except ConfigurationError:
        return "<unparseable connection string>"
    return " ".join(f"{k}={v}" for k, v in parts.items()) or "(libpq defaults)"


def with_dbname(conninfo: str, dbname: str) -> str:
    parts = conninfo_dict(conninfo)
    parts["dbname"] = dbname
    return make_conninfo(parts)


# -- running ------------------------------------------------------------------------------------------------


def as_user(cmd: Sequence[str], user: str | None) -> list[str]:
    """``cmd`` run as ``user`` (through runuser) when that user is not who we are; else unchanged."""
    if user is None:
        return list(cmd)
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigurationError(f"OS user {user!r} does not exist: create it or choose another run_as user") from None
    if entry.pw_uid == os.getuid():
        return list(cmd)
    if os.getuid() != 0:
        raise ConfigurationError(f"only root can run PostgreSQL programs as {user!r}; run as {user} or as root")
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return [runuser, "-u", user, "--", *cmd]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("LC_MESSAGES", "C")
    if extra:
        env.update(extra)
    return env


def run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    input: bytes | None = None,
    run_as: str | None = None,
    what: str | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a program to completion; on a non-zero exit raise `ToolFailed` with its stderr."""
    full = as_user(cmd, run_as)
    try:
        res = subprocess.run(
            full,
            env=child_env(env),
            cwd=cwd,
            input=input,
            capture_output=True,
            check=False,
            timeout=timeout,
        )
    except FileNotFoundError as e:
        raise ToolNotFound(f"cannot run {cmd[0]}: {e.strerror}") from None
    except subprocess.TimeoutExpired:
        raise ToolFailed(f"{what or Path(cmd[0]).name} did not finish within {timeout} s") from None
    if res.returncode != 0:
        raise ToolFailed(failure_text(what or Path(cmd[0]).name, res.returncode, res.stderr))
    return res


def failure_text(what: str, code: int, stderr: bytes | str) -> str:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    tail = "\n".join(lines[-15:])
    return redact(f"{what} failed (exit code {code})" + (f":\n{tail}" if tail else ""))


class Spawned:
    """A running program whose stderr goes to a temporary file (so that it can never block on a full pipe)."""

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        what: str | None = None,
    ) -> None:
        self.what = what or Path(cmd[0]).name
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        try:
            self.proc = subprocess.Popen(
                list(cmd), env=child_env(env), stdin=stdin, stdout=stdout, stderr=self._stderr, cwd=cwd
            )
        except FileNotFoundError as e:
            self._stderr.close()
            raise ToolNotFound(f"cannot run {cmd[0]}: {e.strerror}") from None

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def wait(self) -> int:
        return self.proc.wait()

    def check(self) -> None:
        """Wait, then raise `ToolFailed` (with stderr) on a non-zero exit."""
        code = self.proc.wait()
        if code != 0:
            raise ToolFailed(failure_text(self.what, code, self.stderr_text()))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._stderr.close()

    def __enter__(self) -> Spawned:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- command lines -----------------------------------------------------------------------------------------


def pg_dump_command(
    tool: PgTool,
    conninfo: str,
    *,
    fmt: str,
    output: str | None = None,
    compress: int | None = None,
    jobs: int = 1,
    schemas: Sequence[str] = (),
    exclude_schemas: Sequence[str] = (),
    tables: Sequence[str] = (),
    exclude_tables: Sequence[str] = (),
    data_only: bool = False,
    schema_only: bool = False,
    no_owner: bool = False,
    no_privileges: bool = False,
    no_comments: bool = False,
    clean: bool = False,
    if_exists: bool = False,
    create: bool = False,
    snapshot: str | None = None,
    statistics: bool = False,
) -> list[str]:
    """pg_dump's command line. ``statistics``: pg_dump 18 and newer can dump the planner statistics; by default
    they are left out (explicitly, whatever the program's own default): see docs/support.md."""
    fmt_flag = {"custom": "c", "directory": "d", "plain": "p", "tar": "t"}[fmt]
    cmd = [str(tool.path), "-d", conninfo, f"-F{fmt_flag}", "--no-password"]
    if output:
        cmd += ["-f", output]
    if compress is not None and fmt != "tar":
        cmd += [f"-Z{compress}"]
    if jobs > 1:
        cmd += ["-j", str(jobs)]
    cmd += [f"--schema={s}" for s in schemas]
    cmd += [f"--exclude-schema={s}" for s in exclude_schemas]
    cmd += [f"--table={t}" for t in tables]
    cmd += [f"--exclude-table={t}" for t in exclude_tables]
    flags = {
        "--data-only": data_only,
        "--schema-only": schema_only,
        "--no-owner": no_owner,
        "--no-privileges": no_privileges,
        "--no-comments": no_comments,
        "--clean": clean,
        "--if-exists": if_exists,
        "--create": create,
    }
    cmd += [flag for flag, on in flags.items() if on]
    if snapshot:
        cmd += [f"--snapshot={snapshot}"]
    if tool.major >= 18:  # (pg_dump refuses --statistics with --schema-only or --data-only)
        cmd += ["--statistics"] if statistics and not (schema_only or data_only) else ["--no-statistics"]
    return cmd


def pg_dumpall_command(tool: PgTool, conninfo: str, *, roles_only: bool = False) -> list[str]:
    return [
        str(tool.path),
        "-d",
        conninfo,
        "--no-password",
        "--roles-only" if roles_only else "--globals-only",
    ]


def pg_restore_command(
    tool: PgTool,
    *,
    conninfo: str | None = None,
    archive: str | None = None,
    fmt: str | None = None,
    list_only: bool = False,
    use_list: str | None = None,
    jobs: int = 1,
    schemas: Sequence[str] = (),
    tables: Sequence[str] = (),
    data_only: bool = False,
    schema_only: bool = False,
    clean: bool = False,
    if_exists: bool = False,
    no_owner: bool = False,
    no_privileges: bool = False,
    no_comments: bool = False,
    disable_triggers: bool = False,
    exit_on_error: bool = True,
    single_transaction: bool = False,
    output: str | None = None,
) -> list[str]:
    """pg_restore: into ``conninfo``, or as SQL to ``output`` ("-" for stdout), or a TOC listing."""
    cmd = [str(tool.path)]
    if fmt:
        cmd += [f"-F{ {'custom': 'c', 'directory': 'd', 'tar': 't'}[fmt] }"]
    if list_only:
        cmd += ["-l"]
    elif conninfo is not None:
        cmd += ["-d", conninfo, "--no-password"]
    else:
        cmd += ["-f", output or "-"]
    if use_list:
        cmd += ["-L", use_list]
    if jobs > 1:
        cmd += ["-j", str(jobs)]
    cmd += [f"--schema={s}" for s in schemas]
    cmd += [f"--table={t}" for t in tables]
    flags = {
        "--data-only": data_only,
        "--schema-only": schema_only,
        "--clean": clean,
        "--if-exists": if_exists and clean,
        "--no-owner": no_owner,
        "--no-privileges": no_privileges,
        "--no-comments": no_comments,
        "--disable-triggers": disable_triggers,
        "--exit-on-error": exit_on_error and not list_only,
        "--single-transaction": single_transaction,
    }
    cmd += [flag for flag, on in flags.items() if on]
    if archive:
        cmd += [archive]
    return cmd


def psql_command(tool: PgTool, conninfo: str, *, file: str = "-", single_transaction: bool = False) -> list[str]:
    cmd = [str(tool.path), "-d", conninfo, "--no-password", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", file]
    if single_transaction:
        cmd.insert(1, "--single-transaction")
    return cmd


def initdb_command(
    tool: PgTool,
    data_dir: str,
    *,
    superuser: str,
    checksums: bool = True,
    encoding: str = "UTF8",
    locale: str = "C",
    auth: str = "trust",
) -> list[str]:
    cmd = [str(tool.path), "-D", data_dir, "-U", superuser, "-A", auth, "-E", encoding, f"--locale={locale}"]
    # initdb 18 turns data checksums on by itself: say which we want either way
    cmd += ["--data-checksums"] if checksums else (["--no-data-checksums"] if tool.major >= 18 else [])
    return [*cmd, "--no-sync"] if os.environ.get("PGRECOVERY_INITDB_NOSYNC") else cmd


def pg_ctl_command(
    tool: PgTool,
    action: str,
    data_dir: str,
    *,
    log_file: str | None = None,
    mode: str | None = None,
    timeout: int = 60,
    wait: bool = True,
) -> list[str]:
    cmd = [str(tool.path), action, "-D", data_dir, "-t", str(timeout), "-w" if wait else "-W"]
    if log_file and action in ("start", "restart"):
        cmd += ["-l", log_file]
    if mode:
        cmd += ["-m", mode]
    return cmd


def pg_basebackup_command(tool: PgTool, conninfo: str, *, fast: bool = True, label: str = "pgrecovery") -> list[str]:
    """pg_basebackup writing one tar to stdout (its backup_manifest last), WAL left to the archive."""
    cmd = [str(tool.path), "-d", conninfo, "--no-password", "-D", "-", "-Ft", "-X", "none", "-l", label]
    return [*cmd, "--checkpoint=fast" if fast else "--checkpoint=spread"]


def pg_verifybackup_command(tool: PgTool, backup_dir: str) -> list[str]:
    """pg_verifybackup on a restored directory; WAL is left to recovery (-n)."""
    return [str(tool.path), "--no-parse-wal", "--quiet", backup_dir]
