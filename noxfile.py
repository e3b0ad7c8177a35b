"""Sessions: tests, lint, typecheck, docs, demo, bench.

Every session installs what it needs itself (PostgreSQL server packages through apt-get when they are missing),
because CI runs in a fresh clone on a machine where nothing was installed by hand.

The virtualenvs are built from Debian's /usr/bin/python3 when it exists: PostgreSQL runs archive_command and
restore_command as its own OS user, who cannot execute an interpreter that lives in root's private home (where
the default python3 of these machines lives).
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


def _reachable_by_others(path: str) -> bool:
    """Whether every directory down to ``path`` can be traversed by other OS users (the server's, here)."""
    parts = os.path.abspath(path).split(os.sep)
    return all(os.stat(os.sep.join(parts[:i]) or os.sep).st_mode & 0o001 for i in range(1, len(parts) + 1))


# PostgreSQL's OS user runs archive_command with our virtualenv's interpreter and package: when this checkout
# lies below a private directory, build the virtualenvs (and install the package, not editable) where it can.
HERE = os.path.dirname(os.path.abspath(__file__))
EDITABLE = _reachable_by_others(HERE)
if not EDITABLE:
    nox.options.envdir = f"/tmp/pgrecovery-nox-{hashlib.sha256(HERE.encode()).hexdigest()[:12]}"

PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else None
TEST_PROCESSES = 4  # nox -s tests: pytest-xdist processes for the whole suite
PG_PACKAGES = ["postgresql", "postgresql-contrib"]


def _have_postgres() -> bool:
    explicit = os.environ.get("PGRECOVERY_PG_BINDIR")
    if explicit:
        return os.path.exists(os.path.join(explicit, "initdb"))
    return bool(glob.glob("/usr/lib/postgresql/*/bin/initdb") or shutil.which("initdb"))


def ensure_postgres(session: nox.Session) -> None:
    """Install PostgreSQL's server programs when they are missing (apt-get, as root)."""
    if _have_postgres():
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run("apt-get", "update", "-q", external=True, env=env)
        session.run("apt-get", "install", "-y", "-q", "--no-install-recommends", *PG_PACKAGES, external=True, env=env)
        return
    session.error(
        "PostgreSQL server programs (initdb, pg_ctl, pg_dump) are missing: install them "
        "(Debian/Ubuntu: apt-get install postgresql) or set PGRECOVERY_PG_BINDIR to their directory"
    )


AZURITE = "azurite@3.35.0"  # pinned: 3.36 needs Node >= 21 and 3.37 Node >= 22 (3.35 asks for >= 10; tested on 20)
NPM_DIR = os.path.join(HERE, ".nox-cache", "npm")  # project-local, git-ignored


def ensure_azurite(session: nox.Session) -> str:
    """Install Azurite (the Azure Blob emulator, from npm) into .nox-cache/npm; returns its azurite-blob path.

    Node.js and npm come from apt-get (as root) when they are missing.
    """
    binary = os.path.join(NPM_DIR, "node_modules", ".bin", "azurite-blob")
    package = os.path.join(NPM_DIR, "node_modules", "azurite", "package.json")
    wanted = AZURITE.split("@", 1)[1]
    if os.access(binary, os.X_OK) and os.path.exists(package):
        import json

        with open(package) as f:
            if json.load(f).get("version") == wanted:
                return binary
    missing = [p for p, cmd in (("nodejs", "node"), ("npm", "npm")) if not shutil.which(cmd)]
    if missing:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            session.error(f"Azurite (the Azure Blob emulator) needs Node.js and npm: install {' and '.join(missing)}")
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run("apt-get", "update", "-q", external=True, env=env)
        session.run("apt-get", "install", "-y", "-q", "--no-install-recommends", *missing, external=True, env=env)
    os.makedirs(NPM_DIR, exist_ok=True)
    session.run("npm", "install", "--prefix", NPM_DIR, "--no-audit", "--no-fund", AZURITE, external=True)
    return binary


def ensure_sshd(session: nox.Session) -> str:
    """OpenSSH's server (the SFTP server of the storage suite, run on its own port by the tests); returns the
    absolute path of sshd, installing openssh-server through apt-get (as root) when it is missing."""
    for candidate in (os.environ.get("SSHD"), shutil.which("sshd"), "/usr/sbin/sshd"):
        if candidate and os.path.isabs(candidate) and os.access(candidate, os.X_OK):
            return candidate
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        session.error("the SFTP tests need OpenSSH's server: install openssh-server (or set SSHD to its sshd)")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-q", external=True, env=env)
    # the package's own start of the system service is refused where there is no init (containers): harmless
    session.run("apt-get", "install", "-y", "-q", "--no-install-recommends", "openssh-server", external=True, env=env)
    return "/usr/sbin/sshd"


def ensure_pg_cron(session: nox.Session) -> None:
    """pg_cron (tests/integration/test_pg_cron.py) for each apt-installed PostgreSQL major, through apt-get (as
    root) when it is missing."""
    majors = [p.split(os.sep)[-3] for p in glob.glob("/usr/lib/postgresql/*/bin/postgres")]
    missing = [m for m in majors if not os.path.exists(f"/usr/lib/postgresql/{m}/lib/pg_cron.so")]
    if not majors or not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        session.warn(f"the pg_cron test needs pg_cron: install postgresql-{missing[0]}-cron")
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-q", external=True, env=env)
    packages = [f"postgresql-{m}-cron" for m in missing]
    session.run("apt-get", "install", "-y", "-q", "--no-install-recommends", *packages, external=True, env=env)


def ensure_peers(session: nox.Session) -> None:
    """What benchmarks/bench_peers.py compares with: pgBackRest, and stunnel4 (TLS in front of moto: pgBackRest
    speaks only TLS to S3), through apt-get (as root) when missing; barman-cloud, moto's S3 server and s3fs into
    the session's virtualenv (PostgreSQL's OS user runs barman-cloud's archive and restore commands from there)."""
    missing = [package for package in ("pgbackrest", "stunnel4") if not shutil.which(package)]
    if missing and (os.geteuid() != 0 or not shutil.which("apt-get")):
        session.warn(f"bench_peers.py needs {' and '.join(missing)} (apt-get install): it skips without them")
    elif missing:
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run("apt-get", "update", "-q", external=True, env=env)
        session.run("apt-get", "install", "-y", "-q", "--no-install-recommends", *missing, external=True, env=env)
    # barman requires psycopg2, which builds from source (libpq's headers, a compiler): psycopg2-binary provides
    # the same module, so barman goes in without its dependencies, which are these (its "cloud" extra is boto3)
    session.install("moto[server]", "s3fs", "psycopg2-binary", "python-dateutil", "boto3", "zstandard", "lz4")
    session.install("--no-deps", "barman>=3.19")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite against real PostgreSQL servers and storage servers (S3, Azure Blob and GCS emulators,
    OpenSSH's SFTP, wsgidav's WebDAV)."""
    ensure_postgres(session)
    azurite = ensure_azurite(session)
    sshd = ensure_sshd(session)
    ensure_pg_cron(session)
    # includes moto, s3fs, adlfs, gcsfs, fake-gcs-server, sshfs, webdav4, wsgidav and cheroot
    # the "majors" extra: server installations of PostgreSQL 16, 17 and 18 (tests/integration/test_majors*.py)
    session.install(*(["-e"] if EDITABLE else []), ".[test,majors]")
    _check_reachable_by_server(session)
    # Under nox every emulator must run: a missing one fails its tests instead of skipping them.
    # gcsfs must not probe the (emulator-less) Storage Control API: set before anything imports it.
    env = {
        "AZURITE_BLOB": azurite,
        "SSHD": sshd,
        "PGRECOVERY_REQUIRE_EMULATORS": "1",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
    # With no arguments, the whole suite in 4 processes, a test file per process at a time (module fixtures, such as
    # a server shared by a file's tests, are made once): most of its time is spent waiting on servers and
    # emulators, so this takes about half the time of one process on 2 cores. Arguments replace this
    # (``nox -s tests -- tests/unit -x``: one process).
    args = session.posargs or ["-n", str(TEST_PROCESSES), "--dist", "loadfile"]
    session.run("pytest", "-p", "no:cacheprovider", *args, env=env)


def _check_reachable_by_server(session: nox.Session) -> None:
    """Warn early when PostgreSQL's OS user could not run this virtualenv (archive_command needs it)."""
    code = "from pgrecovery.cluster import check_runnable_by as c; c()"
    try:
        session.run("python", "-c", code, silent=True)
    except nox.command.CommandFailed:
        session.warn(
            "PostgreSQL's OS user cannot run this virtualenv's python: archive/restore_command tests will fail"
        )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff, and the package's shape: layers (function-level imports too), no import cycle, no private name across
    a subpackage boundary, module and function sizes, the public API agreeing with itself."""
    session.install("ruff", "pytest", "-e", ".")
    session.run("ruff", "check", "pgrecovery", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "pgrecovery", "tests", "benchmarks", "noxfile.py")
    session.run("pytest", "-p", "no:cacheprovider", "-q", "tests/unit/test_architecture.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[encryption]", "mypy", "pytest")
    session.run("mypy", "--strict", "pgrecovery", "tests/typing")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """API reference (pdoc) into docs/_build, and the checks that every documented command exists."""
    session.install("-e", ".[test]", "pdoc")
    session.run("pdoc", "pgrecovery", "-o", "docs/_build")
    session.run("pytest", "-p", "no:cacheprovider", "tests/unit/cli/test_docs.py")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The main job: a sandbox cluster, real backups, a rescue, verification, a report."""
    ensure_postgres(session)
    session.install("-e", ".")
    session.run("pgrecovery", "demo", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks side by side with the native tools (ratios printed; never part of the test suite).

    Arguments naming benchmarks run only those (``nox -s bench -- incremental``); the others are passed to each.
    """

    def script(arg: str) -> str | None:  # "incremental", "bench_incremental" or its path: that script
        name = os.path.basename(arg).removesuffix(".py").removeprefix("bench_")
        path = os.path.join("benchmarks", f"bench_{name}.py")
        return path if name and not arg.startswith("-") and os.path.exists(path) else None

    ensure_postgres(session)
    ensure_peers(session)
    # the "majors" extra: PostgreSQL 17's pg_basebackup --incremental and pg_combinebackup (bench_incremental.py)
    session.install("-e", ".[encryption,majors]")
    chosen = [s for s in map(script, session.posargs) if s]
    rest = [a for a in session.posargs if not script(a)]
    for path in chosen or sorted(glob.glob("benchmarks/bench_*.py")):
        session.run("python", path, *rest)


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """The long profile: the PITR oracle with 100 recovery targets, and 10 minutes of archiving under load with
    storage faults, into a local repository and into S3 (moto behind a fault proxy); PGRECOVERY_SOAK_SECONDS
    changes the length. Figures land in tests/.results/ (or PGRECOVERY_RELIABILITY_OUT)."""
    ensure_postgres(session)
    session.install(*(["-e"] if EDITABLE else []), ".[test]")
    _check_reachable_by_server(session)
    session.run(
        "pytest",
        "-p",
        "no:cacheprovider",
        "tests/integration/test_pitr_oracle.py",
        "tests/soak",
        "tests/storage/test_soak_s3.py",
        *session.posargs,
        env={"PGRECOVERY_SOAK": "1"},
    )
