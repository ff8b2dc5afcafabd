"""PostgreSQL for the team stack: a cluster of its own in DIR/postgres (initdb + pg_ctl, no system service).

It listens on 127.0.0.1 only (its unix socket sits in DIR/postgres/run), and every connection
needs a password (scram-sha-256): a generated one, kept in DIR/postgres.password (mode 0600).
Not `trust` on localhost: on a shared team machine trust would let every local user connect as
the superuser and rewrite the experiment history; with the password only whoever can read that
file (the one who started the stack, and root) can. MLflow and Prefect get it through their
environment, which only their owner can read, never on a command line (`ps` shows those to all).

PostgreSQL refuses to run as root: run as root, the cluster runs as the `postgres` user (Debian's
package creates it; else `nobody`) through `runuser`, with DIR/postgres owned by that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from flows.servers.errors import ServersError
from flows.servers.procs import Proc, log_hint

ROLE = "gptflow"  # the database superuser the servers connect as
DATABASES = ("mlflow", "prefect")
DEBIAN_BINS = "/usr/lib/postgresql/*/bin"
TOOLS = ("initdb", "pg_ctl", "postgres")
INSTALL_HINT = "install PostgreSQL's server: apt-get install postgresql"


def _version(bin_dir: str) -> tuple[int, ...]:
    """(15,) for /usr/lib/postgresql/15/bin, (9, 6) for .../9.6/bin."""
    return tuple(int(x) for x in re.findall(r"\d+", Path(bin_dir).parent.name)) or (0,)


def find_binaries(path: str | None = None, debian_glob: str = DEBIAN_BINS) -> Path:
    """The directory of initdb, pg_ctl and postgres: the one pg_ctl on PATH lives in (symlinks resolved:
    pg_ctl starts the `postgres` beside its real file), else Debian's newest /usr/lib/postgresql/*/bin.

    `path` stands in for $PATH (None: the real one). ServersError with the apt-get line when none has them.
    """
    on_path = [shutil.which(t, path=path) for t in ("initdb", "pg_ctl")]
    candidates = [str(Path(on_path[1]).resolve().parent)] if all(on_path) else []  # type: ignore[arg-type]
    candidates += sorted(glob.glob(debian_glob), key=_version, reverse=True)
    for d in candidates:
        if all(os.access(Path(d) / t, os.X_OK) for t in TOOLS):
            return Path(d)
    raise ServersError(f"PostgreSQL's initdb and pg_ctl are neither on PATH nor in {debian_glob}; {INSTALL_HINT}")


def run_as_user() -> str | None:
    """The OS user the cluster runs as: None (this user) unless this is root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    if shutil.which("runuser") is None:
        raise ServersError("running as root, and PostgreSQL refuses root; runuser (util-linux) is missing to drop it")
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise ServersError(
        "running as root, and PostgreSQL refuses root: create a user for it (useradd --system postgres) "
        "or run gptflow servers as a normal user"
    )


def read_or_create_password(path: Path) -> str:
    """The cluster's password from `path`, generated first (mode 0600) when the file does not exist."""
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password


@dataclass(frozen=True)
class Postgres:
    """One cluster: binaries, its folder DIR/postgres, the OS user it runs as (None: this user)."""

    bin_dir: Path
    root: Path
    run_as: str | None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    def _argv(self, tool: str, *args: str) -> list[str]:
        prefix = ["runuser", "-u", self.run_as, "--"] if self.run_as else []
        return [*prefix, str(self.bin_dir / tool), *args]

    def _own(self, path: Path) -> None:
        if self.run_as:
            user = pwd.getpwnam(self.run_as)
            os.chown(path, user.pw_uid, user.pw_gid)

    def prepare(self, log: Path) -> None:
        """Create DIR/postgres (0700, owned by the cluster's user) and its log file; as root, check that user
        can reach them (every folder above must let others through: a `mktemp -d` folder does not)."""
        for d in (self.root, self.socket_dir):
            d.mkdir(mode=0o700, exist_ok=True)
            self._own(d)
        log.touch(mode=0o600, exist_ok=True)
        self._own(log)
        if not self.run_as:
            return
        parent = self.root.parent
        parent.chmod(parent.stat().st_mode | 0o001)  # DIR itself: others may pass through, not list it
        probe = subprocess.run(["runuser", "-u", self.run_as, "--", "test", "-w", str(self.root)], check=False)
        if probe.returncode != 0:
            blocked = next((p for p in self.root.parents if not p.stat().st_mode & 0o001), self.root.parent)
            raise ServersError(
                f"PostgreSQL refuses to run as root, so it runs as user {self.run_as}, who cannot reach {self.root} "
                f"({blocked} is mode {blocked.stat().st_mode & 0o777:o}); choose a --dir others can pass through, "
                f"or chmod o+x {blocked}"
            )

    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def init(self, password: str) -> None:
        """initdb: UTF-8, C locale, superuser ROLE with `password`, scram-sha-256 for every connection."""
        pwfile = self.root / "initdb-password"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        self._own(pwfile)
        argv = self._argv("initdb", "-D", str(self.data), "-U", ROLE, "-A", "scram-sha-256", f"--pwfile={pwfile}")
        try:
            done = subprocess.run([*argv, "-E", "UTF8", "--locale=C"], capture_output=True, text=True, check=False)
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ServersError(f"initdb {self.data} failed: {last}")

    def start(self, port: int, log: Path, timeout: float) -> tuple[Proc, float]:
        """pg_ctl start on 127.0.0.1:`port` (socket in DIR/postgres/run); waits until pg_isready says so.

        Returns the postmaster and the seconds it took to accept connections.
        """
        options = f"-p {port} -k {self.socket_dir} -c listen_addresses=127.0.0.1"
        argv = self._argv("pg_ctl", "-D", str(self.data), "-l", str(log), "-w", "-t", str(int(timeout)))
        started = time.monotonic()
        done = subprocess.run(
            [*argv, "-o", options, "start"], capture_output=True, text=True, start_new_session=True, check=False
        )
        if done.returncode != 0 or not self.ready(port):
            raise ServersError(f"PostgreSQL did not start on 127.0.0.1:{port}; {log_hint(log)}")
        seconds = time.monotonic() - started
        proc = self.postmaster()
        if proc is None:
            raise ServersError(f"PostgreSQL started but {self.data}/postmaster.pid names no live process")
        return proc, seconds

    def postmaster(self) -> Proc | None:
        """The running postmaster, from DIR/postgres/data/postmaster.pid."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return Proc.of(pid)

    def ready(self, port: int) -> bool:
        """pg_isready against 127.0.0.1:`port`."""
        tool = self.bin_dir / "pg_isready"
        argv = [str(tool) if tool.exists() else "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port), "-t", "5"]
        try:
            return subprocess.run(argv, check=False, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def create_databases(self, port: int, password: str) -> None:
        """Create the `mlflow` and `prefect` databases unless they exist (psycopg2, as ROLE)."""
        try:
            import psycopg2
        except ImportError:
            raise ServersError(
                "the psycopg2 package is missing (MLflow's PostgreSQL driver): pip install 'gptflow[servers]'"
            ) from None
        conn = psycopg2.connect(host="127.0.0.1", port=port, user=ROLE, password=password, dbname="postgres")
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with conn.cursor() as cur:
                for name in DATABASES:
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cur.fetchone() is None:
                        cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    def stop(self, timeout: float = 60) -> None:
        """pg_ctl stop -m fast (a clean shutdown of this cluster; nothing when it is not running)."""
        if not (self.data / "postmaster.pid").exists():
            return
        argv = self._argv("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", str(int(timeout)), "stop")
        subprocess.run(argv, capture_output=True, check=False)


def url(driver: str, port: int, database: str, password: str) -> str:
    """A SQLAlchemy URL for one database, e.g. postgresql+psycopg2://gptflow:PW@127.0.0.1:PORT/mlflow."""
    return f"postgresql+{driver}://{ROLE}:{quote(password, safe='')}@127.0.0.1:{port}/{database}"
