"""Test support for the postgres issuer: real PostgreSQL clusters, a throw-away environment on
them, a TCP proxy that can be cut (an outage), psql as a client, and a SCRAM verifier check.

Two clusters are used:

- the **system** cluster on 127.0.0.1:5432 (trust authentication: it never checks a password
  and never looks at ``VALID UNTIL``, which PostgreSQL checks only during password
  authentication);
- a **private** cluster started for the test module with ``initdb`` on a free loopback port,
  ``scram-sha-256`` for every TCP connection and ``log_statement=all``: there a login with the
  wrong password, or after ``VALID UNTIL``, really fails, and the server log shows every
  statement the issuer sent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import glob
import hashlib
import hmac
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

SYSTEM_HOST = os.environ.get("JIT_TEST_PG_HOST", "127.0.0.1")
SYSTEM_PORT = int(os.environ.get("JIT_TEST_PG_PORT", "5432"))
SYSTEM_USER = os.environ.get("JIT_TEST_PG_USER", "postgres")


@dataclass(frozen=True)
class Cluster:
    """A PostgreSQL cluster on loopback and how the tests reach it as a superuser."""

    label: str
    host: str
    port: int
    superuser: str
    superuser_password: str | None = field(default=None, repr=False)
    checks_passwords: bool = False  # False under trust authentication
    log_path: Path | None = None  # the server log (private cluster, log_statement=all)

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        kwargs: dict[str, Any] = {}
        if self.superuser_password is not None:
            kwargs["password"] = self.superuser_password
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.superuser,
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
            **kwargs,
        )


def system_cluster() -> Cluster:
    cluster = Cluster("trust", SYSTEM_HOST, SYSTEM_PORT, SYSTEM_USER)
    try:
        with cluster.connect() as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL at {SYSTEM_HOST}:{SYSTEM_PORT} (user {SYSTEM_USER}) is not answering: "
            f"{exc} (bash tests/run.sh starts it)"
        )
    return cluster


def _bindir() -> Path:
    """Where initdb and pg_ctl are: $JIT_TEST_PG_BINDIR, PATH, or the newest Debian layout."""
    candidates = []
    if os.environ.get("JIT_TEST_PG_BINDIR"):
        candidates.append(Path(os.environ["JIT_TEST_PG_BINDIR"]))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in p.split("/")[4].split(".")],
    )
    candidates.extend(Path(p) for p in reversed(debian))
    for path in candidates:
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    pytest.fail(
        "initdb and pg_ctl (the PostgreSQL server package) are needed to start a private "
        "cluster with password authentication; set JIT_TEST_PG_BINDIR to their directory"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def private_cluster() -> Iterator[Cluster]:
    """A fresh cluster: scram-sha-256 on TCP, log_statement=all. Stopped and deleted after.

    initdb refuses to run as root; as root it runs as the ``postgres`` system user."""
    bindir = _bindir()
    as_user: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root, a 'postgres' system user is needed to run initdb")
        as_user = ["runuser", "-u", "postgres", "--"]
    shm = Path("/dev/shm")  # memory is faster than a busy disk; fsync is off anyway
    where = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    base = Path(tempfile.mkdtemp(prefix="jit-pgtest-", dir=where))
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    password = secrets.token_urlsafe(24)
    pwfile = base / "superuser-password"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    if owner is not None:
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    data, log = base / "data", base / "server.log"

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*as_user, *argv], capture_output=True, text=True, timeout=60, check=False
        )

    started = False
    try:
        done = run(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        if done.returncode != 0:
            pytest.fail(f"initdb failed: {done.stderr.strip()[-500:]}")
        pwfile.unlink()
        for _ in range(3):  # a free port can be taken between choosing and binding it
            port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={port} "
                f"-c unix_socket_directories={base} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c log_statement=all -c log_connections=on "
                "-c max_connections=60"
            )
            done = run(
                str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "30",
                "-o", options, "start",
            )  # fmt: skip
            if done.returncode == 0:
                started = True
                break
        if not started:
            pytest.fail(f"pg_ctl could not start the private cluster: {done.stderr[-500:]}")
        yield Cluster(
            "scram",
            "127.0.0.1",
            port,
            "postgres",
            superuser_password=password,
            checks_passwords=True,
            log_path=log,
        )
    finally:
        if started:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


class Env:
    """A throw-away environment on one cluster, named after a random token:

    - databases ``<t>_orders`` (schema ``app``, table ``app.orders`` with 3 rows) and
      ``<t>_audit`` (schema ``scratch``), with CONNECT revoked from PUBLIC;
    - NOLOGIN group roles ``<t>_read`` (SELECT), ``<t>_write`` (INSERT, UPDATE, DELETE) and
      ``<t>_ddl`` (CREATE in ``app`` and in ``<t>_audit``'s ``scratch``), each with CONNECT;
    - the issuer's admin ``<t>_admin``: LOGIN CREATEROLE, not a superuser, a password in a file.

    Minted roles use ``next_prefix()``, one prefix per test, dropped after it."""

    def __init__(self, cluster: Cluster, workdir: Path) -> None:
        self.cluster = cluster
        self.token = "j" + secrets.token_hex(3)
        t = self.token
        self.orders, self.audit = f"{t}_orders", f"{t}_audit"
        self.read, self.write, self.ddl = f"{t}_read", f"{t}_write", f"{t}_ddl"
        self.admin = f"{t}_admin"
        self.admin_password = secrets.token_urlsafe(24)
        self.admin_password_file = workdir / f"{t}-admin-password"
        self.admin_password_file.write_text(self.admin_password + "\n")
        self.resource = f"postgresql://{cluster.host}:{cluster.port}/{self.orders}"
        self._counter = 0

    # -- lifecycle ------------------------------------------------------------------------

    def setup(self) -> None:
        ident = sql.Identifier
        with self.cluster.connect() as conn:
            for db in (self.orders, self.audit):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(ident(db)))
                conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(ident(db)))
            for group in (self.read, self.write, self.ddl):
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(ident(group)))
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
                    ident(self.admin), sql.Literal(self.admin_password)
                )
            )
            for db in (self.orders, self.audit):
                conn.execute(
                    sql.SQL("GRANT CONNECT ON DATABASE {} TO {}, {}, {}, {}").format(
                        ident(db),
                        ident(self.read),
                        ident(self.write),
                        ident(self.ddl),
                        ident(self.admin),
                    )
                )
        with self.cluster.connect(self.orders) as conn:
            conn.execute("CREATE SCHEMA app")
            conn.execute("CREATE TABLE app.orders (id int PRIMARY KEY, item text NOT NULL)")
            conn.execute("INSERT INTO app.orders VALUES (1, 'tea'), (2, 'milk'), (3, 'bread')")
            conn.execute(
                sql.SQL("GRANT USAGE ON SCHEMA app TO {}, {}, {}").format(
                    ident(self.read), ident(self.write), ident(self.ddl)
                )
            )
            conn.execute(sql.SQL("GRANT SELECT ON app.orders TO {}").format(ident(self.read)))
            conn.execute(
                sql.SQL("GRANT INSERT, UPDATE, DELETE ON app.orders TO {}").format(
                    ident(self.write)
                )
            )
            conn.execute(sql.SQL("GRANT CREATE ON SCHEMA app TO {}").format(ident(self.ddl)))
        with self.cluster.connect(self.audit) as conn:
            conn.execute("CREATE SCHEMA scratch")
            conn.execute(
                sql.SQL("GRANT USAGE, CREATE ON SCHEMA scratch TO {}").format(ident(self.ddl))
            )

    def teardown(self) -> None:
        with self.cluster.connect() as conn:
            for db in (self.orders, self.audit):
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
                )
        self.drop_roles(self.token)
        self.admin_password_file.unlink(missing_ok=True)

    # -- per test -------------------------------------------------------------------------

    def next_prefix(self) -> str:
        """A role prefix of its own for one test (``<token><nnn>_``: 11 characters)."""
        self._counter += 1
        return f"{self.token}{self._counter:03d}_"

    def drop_roles(self, prefix: str) -> None:
        """Drop every role whose name starts with ``prefix``, whatever it owns, wherever."""
        with self.cluster.connect() as conn:
            roles = [
                r[0]
                for r in conn.execute(
                    "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, %s)",
                    (prefix,),
                ).fetchall()
            ]
            if not roles:
                return
            conn.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                "WHERE usename = ANY(%s)",
                (roles,),
            )
            databases = [
                r[0]
                for r in conn.execute(
                    "SELECT datname::text FROM pg_database "
                    "WHERE datallowconn AND datname = ANY(%s)",
                    ([self.orders, self.audit],),
                ).fetchall()
            ]
        for db in [*databases, "postgres"]:
            with self.cluster.connect(db) as conn:
                for role in roles:
                    conn.execute(
                        sql.SQL("REASSIGN OWNED BY {} TO {}; DROP OWNED BY {}").format(
                            sql.Identifier(role),
                            sql.Identifier(self.cluster.superuser),
                            sql.Identifier(role),
                        )
                    )
        with self.cluster.connect() as conn:
            for role in roles:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))

    # -- configuration --------------------------------------------------------------------

    def resources(self) -> dict[str, Any]:
        return {
            self.resource: {
                "database": self.orders,
                "actions": {"read": [self.read], "write": [self.write], "ddl": [self.ddl]},
            }
        }

    def config(self, prefix: str, *, port: int | None = None, **overrides: Any) -> dict[str, Any]:
        """An issuer config: admin ``<t>_admin`` via ``port`` (default: the cluster's)."""
        config: dict[str, Any] = {
            "dsn": (
                f"host={self.cluster.host} port={port or self.cluster.port} "
                f"user={self.admin} dbname=postgres"
            ),
            "password_file": str(self.admin_password_file),
            "role_prefix": prefix,
            "client_host": self.cluster.host,
            "client_port": self.cluster.port,
            "resources": self.resources(),
        }
        config.update(overrides)
        return config

    # -- looking at the server ------------------------------------------------------------

    def role(self, name: str) -> dict[str, Any] | None:
        """pg_authid's row for ``name`` (with the stored verifier), its groups and comment."""
        with self.cluster.connect() as conn:
            cur = conn.execute(
                "SELECT rolname::text, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, "
                "rolreplication, rolbypassrls, rolinherit, rolconnlimit, rolvaliduntil, "
                "rolpassword, shobj_description(oid, 'pg_authid') AS comment, "
                "ARRAY(SELECT g.rolname::text FROM pg_auth_members m "
                "      JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = a.oid "
                "      ORDER BY 1) AS groups "
                "FROM pg_authid a WHERE rolname = %s",
                (name,),
            )
            row = cur.fetchone()
            if row is None:
                return None
            assert cur.description is not None
            return {d.name: v for d, v in zip(cur.description, row, strict=True)}

    def owner_of(self, dbname: str, table: str) -> str | None:
        with self.cluster.connect(dbname) as conn:
            row = conn.execute(
                "SELECT tableowner::text FROM pg_tables WHERE schemaname || '.' || tablename = %s",
                (table,),
            ).fetchone()
            return None if row is None else str(row[0])


def scram_matches(password: str, verifier: str | None) -> bool:
    """Whether ``verifier`` (pg_authid.rolpassword, ``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:
    <ServerKey>``) was made from ``password``: the check SCRAM authentication performs
    (RFC 5802: StoredKey = H(HMAC(SaltedPassword, "Client Key"))). Constant-time compare."""
    if not verifier or not verifier.startswith("SCRAM-SHA-256$"):
        return False
    try:
        _, params, keys = verifier.split("$")
        iterations, salt = params.split(":")
        stored_key, _server_key = keys.split(":")
        salted = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(salt), int(iterations)
        )
    except ValueError:
        return False
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), base64.b64decode(stored_key))


async def psql(conninfo: str, *, password: str, command: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``psql`` client on ``conninfo`` (a URI or ``key=value`` string, with no
    password): the password goes in PGPASSWORD (its environment), never on the command line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({"PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5", "PGAPPNAME": "jit-test-psql"})
    # -X: no ~/.psqlrc; -q -A -t: bare values, no command tags; -w: never prompt
    argv = [
        "psql",
        "-X",
        "-q",
        "-A",
        "-t",
        "-w",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        conninfo,
        "-c",
        command,
    ]
    assert password not in " ".join(argv)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(argv, proc.returncode, out.decode(), err.decode())


class TcpProxy:
    """A loopback TCP forwarder to a cluster. :meth:`outage` stops listening and cuts every
    forwarded connection (the port is then closed), and listens again on the same port after.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    @contextlib.asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        await self.stop()
        try:
            yield
        finally:
            await self.start()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(dst)
            dst.transport.abort()
