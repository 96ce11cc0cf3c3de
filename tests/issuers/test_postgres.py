"""The postgres issuer against real PostgreSQL.

Every test that talks to a server runs on two clusters (``[trust]`` and ``[scram]``, see
postgres_support): the system cluster on 127.0.0.1:5432, whose trust authentication checks
neither passwords nor ``VALID UNTIL``, and a private cluster with scram-sha-256, where both are
really checked at login. What each proves:

- on both: the role exists with exactly the documented attributes, logs in (psql and psycopg),
  can do exactly the granted actions and nothing else, and after revoke cannot log in and its
  open sessions are gone; the conformance kit passes. Under trust, the kit's ``credential_works``
  also checks what password authentication would: the stored SCRAM verifier matches the
  password and ``VALID UNTIL`` has not passed at the kit's (fake) time;
- on scram only: a wrong password is refused, a login after ``VALID UNTIL`` is refused by the
  server itself (one real-time test, ~3 s) while a session opened before stays alive until
  revoke, and the plaintext password never appears in the server's statement log.

The issuer's admin in these tests is a LOGIN CREATEROLE role, not a superuser.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

from broker.clock import Clock, SystemClock
from broker.errors import (
    ConfigError,
    InvalidRequest,
    IssuerError,
    IssuerUnavailable,
    ScopeNotSupported,
)
from broker.issuer import IssuerContext
from broker.testing import FakeClock, IssuerConformance, lease_for, mint_request, new_lease_id
from broker.types import Credential, MintRequest, Scope
from issuers.postgres import PostgresIssuer, role_name
from issuers.postgres.issuer import MARKER
from tests.issuers.postgres_support import (
    Cluster,
    Env,
    TcpProxy,
    private_cluster,
    psql,
    scram_matches,
    system_cluster,
)

NAME = "pg-orders"
BROKER = "https://broker.test"

# -- fixtures --------------------------------------------------------------------------------


def _env(cluster: Cluster, workdir: Path) -> Iterator[Env]:
    env = Env(cluster, workdir)
    try:
        env.setup()
        yield env
    finally:
        env.teardown()


@pytest.fixture(scope="module")
def trust_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    yield from _env(system_cluster(), tmp_path_factory.mktemp("pg-trust"))


@pytest.fixture(scope="module")
def scram_cluster() -> Iterator[Cluster]:
    with private_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def scram_env(scram_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    yield from _env(scram_cluster, tmp_path_factory.mktemp("pg-scram"))


@pytest.fixture(params=["trust", "scram"])
def env(request: pytest.FixtureRequest) -> Env:
    """The environment on one cluster; tests run on both unless parametrized indirectly."""
    value: Env = request.getfixturevalue(f"{request.param}_env")
    return value


@pytest.fixture
def prefix(env: Env) -> Iterator[str]:
    """A role prefix for this test alone; every role under it is dropped afterwards."""
    value = env.next_prefix()
    yield value
    env.drop_roles(value)


only_trust = pytest.mark.parametrize("env", ["trust"], indirect=True)
only_scram = pytest.mark.parametrize("env", ["scram"], indirect=True)


def make_issuer(
    env: Env, prefix: str, clock: Clock | None = None, *, name: str = NAME, **overrides: Any
) -> PostgresIssuer:
    return PostgresIssuer(
        IssuerContext(
            name=name,
            config=env.config(prefix, **overrides),
            clock=clock or FakeClock(),
            broker_url=BROKER,
        )
    )


async def mint(
    issuer: PostgresIssuer,
    env: Env,
    actions: Sequence[str],
    *,
    clock: Clock | None = None,
    ttl: timedelta = timedelta(minutes=5),
) -> tuple[MintRequest, Credential]:
    scope = Scope.of(issuer.name, env.resource, actions)
    issuer.check_scope(scope)
    now = (clock or FakeClock()).now()
    request = mint_request(scope, now=now, ttl=ttl)
    return request, await issuer.mint(request)


async def connect_as(
    credential: Credential, *, dbname: str | None = None, password: str | None = None
) -> psycopg.AsyncConnection[Any]:
    """Log in as the minted role, with the connection facts from the credential's metadata."""
    meta = credential.metadata
    return await psycopg.AsyncConnection.connect(
        host=meta["host"],
        port=int(meta["port"]),
        user=meta["username"],
        dbname=dbname or meta["database"],
        password=password if password is not None else credential.secret.reveal(),
        connect_timeout=5,
        autocommit=True,
    )


async def login_works(env: Env, credential: Credential, now: datetime) -> bool:
    """Whether the credential logs in at ``now``: what password authentication checks (the role
    can log in, the SCRAM verifier matches the password, VALID UNTIL has not passed at ``now``
    — PostgreSQL's rule is ``valid_until < now`` means expired), then a real login."""
    role = env.role(credential.metadata["username"])
    if role is None or not role["rolcanlogin"]:
        return False
    valid_until = role["rolvaliduntil"]
    if valid_until is not None and valid_until < now:
        return False
    if not scram_matches(credential.secret.reveal(), role["rolpassword"]):
        return False
    try:
        conn = await connect_as(credential)
    except psycopg.OperationalError:
        return False
    async with conn:
        cur = await conn.execute("SELECT current_user::text")
        row = await cur.fetchone()
    return row is not None and row[0] == credential.metadata["username"]


#: What each action lets the role do, probed in a transaction that is rolled back.
PROBES: dict[str, str] = {
    "read": "SELECT count(*) FROM app.orders",
    "write": "INSERT INTO app.orders VALUES (1000, 'probe')",
    "ddl": "CREATE TABLE app.probe (id int)",
}


def beyond_probes(env: Env) -> list[str]:
    """Things no lease of this resource may do."""
    return [
        "TRUNCATE app.orders",
        "DROP TABLE app.orders",
        "CREATE SCHEMA probe",
        "CREATE ROLE probe",
        "SELECT rolpassword FROM pg_authid LIMIT 1",
        f"SET ROLE {env.admin}",
        "COPY app.orders TO PROGRAM 'true'",
    ]


async def allowed(credential: Credential, statements: Sequence[str]) -> bool:
    """True if any statement succeeds as the minted role. Only 'permission denied' (42501)
    counts as refused: any other error fails the test, so a broken probe never looks like a
    refusal."""
    conn = await connect_as(credential)
    async with conn:
        for statement in statements:
            try:
                async with conn.transaction(force_rollback=True):
                    await conn.execute(statement)
            except psycopg.errors.InsufficientPrivilege:
                continue
            return True
    return False


# -- the conformance kit, on both clusters ---------------------------------------------------


class TestPostgresConformance(IssuerConformance[PostgresIssuer]):
    """The kit, through a TCP proxy that :meth:`outage` cuts (the port is then closed)."""

    env: Env
    proxy: TcpProxy

    @pytest.fixture
    async def issuer(
        self, clock: FakeClock, env: Env, prefix: str
    ) -> AsyncIterator[PostgresIssuer]:
        self.env = env
        self.proxy = TcpProxy(env.cluster.host, env.cluster.port)
        await self.proxy.start()
        issuer = PostgresIssuer(
            IssuerContext(
                name=NAME,
                config=env.config(prefix, port=self.proxy.port),
                clock=clock,
                broker_url=BROKER,
            )
        )
        yield issuer
        await issuer.aclose()
        await self.proxy.stop()

    def scope(self) -> Scope:
        return Scope.of(NAME, self.env.resource, ["read", "write"])

    def narrower_scope(self) -> Scope | None:
        return Scope.of(NAME, self.env.resource, ["read"])

    def unsupported_scope(self) -> Scope | None:
        return Scope.of(NAME, self.env.resource, ["superuser"])

    async def credential_works(
        self, issuer: PostgresIssuer, credential: Credential, scope: Scope
    ) -> bool:
        return await login_works(self.env, credential, self.clock.now())

    async def credential_allows(
        self, issuer: PostgresIssuer, credential: Credential, action: str
    ) -> bool | None:
        probe = PROBES.get(action)
        return await allowed(credential, [probe] if probe else beyond_probes(self.env))

    def outage(self, issuer: PostgresIssuer) -> AbstractAsyncContextManager[object]:
        return self.proxy.outage()


# -- real clients, on both clusters ----------------------------------------------------------


async def test_psql_can_do_exactly_the_granted_actions(env: Env, prefix: str) -> None:
    issuer = make_issuer(env, prefix)
    _, reader = await mint(issuer, env, ["read"])
    _, writer = await mint(issuer, env, ["read", "write"])
    uri = reader.metadata["connection_uri"]
    password = reader.secret.reveal()

    done = await psql(uri, password=password, command="SELECT count(*) FROM app.orders")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"
    done = await psql(uri, password=password, command="INSERT INTO app.orders VALUES (7, 'x')")
    assert done.returncode != 0
    assert "permission denied for table orders" in done.stderr
    done = await psql(uri, password=password, command="CREATE TABLE app.mine (id int)")
    assert done.returncode != 0
    assert "permission denied for schema app" in done.stderr

    uri, password = writer.metadata["connection_uri"], writer.secret.reveal()
    done = await psql(
        uri,
        password=password,
        command="BEGIN; INSERT INTO app.orders VALUES (7, 'x'); "
        "SELECT count(*) FROM app.orders; ROLLBACK",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["4"]
    # the metadata's URI is all a client needs besides the password
    assert uri == (
        f"postgresql://{writer.metadata['username']}@{env.cluster.host}:{env.cluster.port}/"
        f"{env.orders}"
    )


async def test_revoke_ends_logins_and_terminates_open_sessions(env: Env, prefix: str) -> None:
    issuer = make_issuer(env, prefix)
    request, credential = await mint(issuer, env, ["read"])
    _, bystander = await mint(issuer, env, ["read"])
    role = credential.metadata["username"]
    uri, password = credential.metadata["connection_uri"], credential.secret.reveal()
    open_session = await connect_as(credential)
    other_session = await connect_as(bystander)
    try:
        cur = await open_session.execute("SELECT count(*) FROM app.orders")
        assert await cur.fetchone() == (3,)
        assert (await psql(uri, password=password, command="SELECT 1")).returncode == 0

        await issuer.revoke(lease_for(request, credential))

        with pytest.raises(psycopg.OperationalError):
            await open_session.execute("SELECT 1")  # terminated by revoke
        done = await psql(uri, password=password, command="SELECT 1")
        assert done.returncode != 0
        if env.cluster.checks_passwords:
            assert "password authentication failed" in done.stderr
        else:
            assert f'role "{role}" does not exist' in done.stderr
        assert env.role(role) is None
        # the other lease's session and role are untouched
        cur = await other_session.execute("SELECT 1")
        assert await cur.fetchone() == (1,)
        assert env.role(bystander.metadata["username"]) is not None
    finally:
        await open_session.close()
        await other_session.close()
    await issuer.revoke(lease_for(request, credential))  # again: nothing left, no error


async def test_revoke_reassigns_what_the_role_owns_in_every_database(env: Env, prefix: str) -> None:
    issuer = make_issuer(env, prefix)
    request, credential = await mint(issuer, env, ["ddl"])
    table = f"made_by_{prefix}"
    for dbname, schema in ((env.orders, "app"), (env.audit, "scratch")):
        conn = await connect_as(credential, dbname=dbname)
        async with conn:
            await conn.execute(
                sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(schema, table))
            )
        assert env.owner_of(dbname, f"{schema}.{table}") == credential.metadata["username"]

    # the broker crashed before it recorded the handle: the lease id is all there is
    await issuer.revoke(lease_for(request, handle={}))

    assert env.role(credential.metadata["username"]) is None
    assert env.owner_of(env.orders, f"app.{table}") == env.admin
    assert env.owner_of(env.audit, f"scratch.{table}") == env.admin


async def test_the_minted_role_is_exactly_what_the_docs_say(env: Env, prefix: str) -> None:
    issuer = make_issuer(env, prefix, connection_limit=3)
    request, credential = await mint(issuer, env, ["write", "read"], ttl=timedelta(minutes=7))
    name = issuer.role_name(request.lease_id)
    role = env.role(name)
    assert role is not None
    assert name == prefix + request.lease_id.replace(".", "_")
    assert len(name.encode()) <= 63
    assert role["rolcanlogin"] is True
    assert role["rolinherit"] is True
    for attr in ("rolsuper", "rolcreaterole", "rolcreatedb", "rolreplication", "rolbypassrls"):
        assert role[attr] is False, attr
    assert role["rolconnlimit"] == 3
    assert role["groups"] == sorted([env.read, env.write])
    assert role["rolvaliduntil"] == credential.expires_at == request.not_after  # whole seconds
    assert role["rolpassword"].startswith("SCRAM-SHA-256$4096:")
    assert scram_matches(credential.secret.reveal(), role["rolpassword"])
    assert not scram_matches(credential.secret.reveal() + "x", role["rolpassword"])
    assert role["comment"] == f"{MARKER}{request.lease_id} (issuer {NAME})"
    assert credential.token_type == "password"
    assert credential.handle == {"role": name}
    assert credential.metadata == {
        "username": name,
        "host": env.cluster.host,
        "port": str(env.cluster.port),
        "database": env.orders,
        "connection_uri": (
            f"postgresql://{name}@{env.cluster.host}:{env.cluster.port}/{env.orders}"
        ),
    }
    admin = env.role(env.admin)
    assert admin is not None
    assert admin["rolsuper"] is False  # the issuer needs CREATEROLE, not a superuser
    assert admin["rolcreaterole"] is True


async def test_expires_at_is_not_after_rounded_down(env: Env, prefix: str) -> None:
    issuer = make_issuer(env, prefix)
    clock = FakeClock(datetime(2031, 5, 6, 7, 8, 9, 999_999, tzinfo=UTC))
    request, credential = await mint(issuer, env, ["read"], clock=clock, ttl=timedelta(seconds=1))
    assert credential.expires_at == datetime(2031, 5, 6, 7, 8, 10, tzinfo=UTC)
    assert request.issued_at < credential.expires_at <= request.not_after
    role = env.role(credential.metadata["username"])
    assert role is not None
    assert role["rolvaliduntil"] == credential.expires_at


# -- password authentication, on the private scram cluster ------------------------------------


@only_scram
async def test_the_server_checks_the_password(env: Env, prefix: str) -> None:
    issuer = make_issuer(env, prefix)
    _, credential = await mint(issuer, env, ["read"])
    uri = credential.metadata["connection_uri"]
    done = await psql(uri, password="not-" + credential.secret.reveal(), command="SELECT 1")
    assert done.returncode != 0
    assert "password authentication failed" in done.stderr
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        await connect_as(credential, password="wrong")
    done = await psql(uri, password=credential.secret.reveal(), command="SELECT current_user")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == credential.metadata["username"]


@only_scram
async def test_valid_until_ends_logins_but_only_revoke_ends_open_sessions(
    env: Env, prefix: str
) -> None:
    """The one real-time test: a 3 s lease, then a wait past its VALID UNTIL."""
    clock = SystemClock()
    issuer = make_issuer(env, prefix, clock)
    request, credential = await mint(issuer, env, ["read"], clock=clock, ttl=timedelta(seconds=3))
    uri, password = credential.metadata["connection_uri"], credential.secret.reveal()
    assert (await psql(uri, password=password, command="SELECT 1")).returncode == 0
    session = await connect_as(credential)
    try:
        await asyncio.sleep((credential.expires_at - clock.now()).total_seconds() + 1.2)

        done = await psql(uri, password=password, command="SELECT 1")
        assert done.returncode != 0
        assert "password authentication failed" in done.stderr
        assert env.cluster.log_path is not None
        log = env.cluster.log_path.read_text(errors="replace")
        assert f'User "{credential.metadata["username"]}" has an expired password' in log
        # VALID UNTIL is checked only at login: the session opened before it is still alive
        cur = await session.execute("SELECT count(*) FROM app.orders")
        assert await cur.fetchone() == (3,)

        await issuer.revoke(lease_for(request, credential))  # the reaper's revoke
        with pytest.raises(psycopg.OperationalError):
            await session.execute("SELECT 1")
        assert env.role(credential.metadata["username"]) is None
    finally:
        await session.close()


@only_scram
async def test_the_password_never_reaches_the_server_log(env: Env, prefix: str) -> None:
    issuer = make_issuer(env, prefix)
    request, credential = await mint(issuer, env, ["read"])
    uri, password = credential.metadata["connection_uri"], credential.secret.reveal()
    assert (await psql(uri, password=password, command="SELECT 1")).returncode == 0
    await issuer.revoke(lease_for(request, credential))
    assert env.cluster.log_path is not None
    name = credential.metadata["username"]
    log = ""
    for _ in range(50):  # the server writes its log asynchronously
        log = env.cluster.log_path.read_text(errors="replace")
        if f'DROP ROLE IF EXISTS "{name}"' in log:
            break
        await asyncio.sleep(0.1)
    create = [line for line in log.splitlines() if f'CREATE ROLE "{name}"' in line]
    assert create, "log_statement=all did not record the CREATE ROLE"
    assert "PASSWORD 'SCRAM-SHA-256$4096:" in create[0]  # only the verifier was sent
    assert password not in log


@only_scram
async def test_the_admin_password_is_read_from_password_file(
    env: Env, prefix: str, tmp_path: Path
) -> None:
    wrong = "wrong-" + secrets.token_urlsafe(12)
    password_file = tmp_path / "admin-password"
    password_file.write_text(wrong + "\n")
    issuer = make_issuer(env, prefix, password_file=str(password_file))
    with pytest.raises(IssuerUnavailable) as caught:
        await issuer.check_health()
    assert "password authentication failed" in str(caught.value)
    assert wrong not in str(caught.value)
    assert env.admin_password not in str(caught.value)
    # the file is read at every connection: a rotated password is used without a restart
    password_file.write_text(env.admin_password + "\n")
    await issuer.check_health()


# -- the system cluster ----------------------------------------------------------------------


@only_trust
async def test_connection_limit_is_enforced(env: Env, prefix: str) -> None:
    issuer = make_issuer(env, prefix, connection_limit=1)
    _, credential = await mint(issuer, env, ["read"])
    first = await connect_as(credential)
    try:
        with pytest.raises(psycopg.OperationalError, match="too many connections for role"):
            await connect_as(credential)
    finally:
        await first.close()


@only_trust
async def test_revoke_never_drops_a_role_that_is_not_marked_for_the_lease(
    env: Env, prefix: str
) -> None:
    issuer = make_issuer(env, prefix)
    # A role with the lease's name that the issuer did not mint (no marker comment)
    lease_id = new_lease_id()
    name = issuer.role_name(lease_id)
    with env.cluster.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
    scope = Scope.of(NAME, env.resource, ["read"])
    stranger = mint_request(
        scope, now=FakeClock().now(), ttl=timedelta(minutes=1), lease_id=lease_id
    )
    with pytest.raises(IssuerError, match="not marked"):
        await issuer.revoke(lease_for(stranger))
    assert env.role(name) is not None

    # A handle tampered with to name a group role: refused, and nothing is dropped
    request, credential = await mint(issuer, env, ["read"])
    with pytest.raises(IssuerError, match="not marked"):
        await issuer.revoke(lease_for(request, handle={"role": env.read}))
    assert env.role(env.read) is not None
    assert env.role(credential.metadata["username"]) is not None
    # the role of another lease is not this lease's either
    _, other = await mint(issuer, env, ["read"])
    with pytest.raises(IssuerError, match="not marked"):
        await issuer.revoke(lease_for(request, handle={"role": other.metadata["username"]}))
    assert env.role(other.metadata["username"]) is not None


UNSAFE_GROUPS = {
    # case: (setup statements with {g} the group role and {p} a helper role, expected message)
    "a login role": (["CREATE ROLE {g} LOGIN"], "which has LOGIN"),
    "a role with bypassrls": (["CREATE ROLE {g} NOLOGIN BYPASSRLS"], "which has BYPASSRLS"),
    "a member of a createrole role": (
        ["CREATE ROLE {p} NOLOGIN CREATEROLE", "CREATE ROLE {g} NOLOGIN", "GRANT {p} TO {g}"],
        "which has CREATEROLE",
    ),
    "a member of a member of a superuser": (
        [
            "CREATE ROLE {p} NOLOGIN SUPERUSER",
            "CREATE ROLE {p}2 NOLOGIN",
            "GRANT {p} TO {p}2",
            "CREATE ROLE {g} NOLOGIN",
            "GRANT {p}2 TO {g}",
        ],
        "which has SUPERUSER",
    ),
    "a member of pg_execute_server_program": (
        ["CREATE ROLE {g} NOLOGIN", "GRANT pg_execute_server_program TO {g}"],
        "superuser-equivalent",
    ),
    "a role that does not exist": ([], "do not exist"),
}


@only_trust
@pytest.mark.parametrize("case", sorted(UNSAFE_GROUPS))
async def test_unsafe_group_roles_are_never_granted(env: Env, prefix: str, case: str) -> None:
    statements, message = UNSAFE_GROUPS[case]
    helpers = env.next_prefix()
    group, helper = f"{helpers}group", f"{helpers}helper"
    try:
        with env.cluster.connect() as conn:
            for statement in statements:
                conn.execute(statement.format(g=group, p=helper))
        resources = {env.resource: {"database": env.orders, "actions": {"read": [group]}}}
        issuer = make_issuer(env, prefix, resources=resources)
        with pytest.raises(IssuerUnavailable, match=message):
            await issuer.check_health()
        with pytest.raises(IssuerError, match=message):
            await mint(issuer, env, ["read"])
        with env.cluster.connect() as conn:
            cur = conn.execute(
                "SELECT count(*) FROM pg_roles WHERE starts_with(rolname, %s)", (prefix,)
            )
            assert cur.fetchone() == (0,), "a refused mint left a role behind"
    finally:
        env.drop_roles(helpers)


@only_trust
async def test_check_health_reports_a_setup_that_cannot_work(env: Env, prefix: str) -> None:
    issuer = make_issuer(env, prefix)
    await issuer.check_health()

    resources = {env.resource: {"database": f"{env.token}_nope", "actions": {"read": [env.read]}}}
    with pytest.raises(IssuerUnavailable, match="do not exist or refuse connections"):
        await make_issuer(env, prefix, resources=resources).check_health()

    helpers = env.next_prefix()
    try:
        with env.cluster.connect() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(f"{helpers}x")))
        dsn = f"host={env.cluster.host} port={env.cluster.port} user={helpers}x dbname=postgres"
        weak = make_issuer(env, prefix, dsn=dsn, password_file=None)
        with pytest.raises(IssuerUnavailable, match="lacks CREATEROLE"):
            await weak.check_health()
        with pytest.raises(IssuerError, match="lacks a privilege"):
            await mint(weak, env, ["read"])
    finally:
        env.drop_roles(helpers)


@only_trust
async def test_an_unreachable_server_raises_issuer_unavailable(env: Env, prefix: str) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    issuer = make_issuer(env, prefix, port=closed)
    request = mint_request(
        Scope.of(NAME, env.resource, ["read"]), now=FakeClock().now(), ttl=timedelta(minutes=1)
    )
    for call in (issuer.check_health(), issuer.mint(request), issuer.revoke(lease_for(request))):
        with pytest.raises(IssuerUnavailable, match="cannot connect") as caught:
            await call
        assert env.admin_password not in str(caught.value)


@only_trust
async def test_concurrent_mints_share_a_few_admin_connections(env: Env, prefix: str) -> None:
    issuer = make_issuer(env, prefix, max_admin_connections=2)
    minted = await asyncio.gather(*(mint(issuer, env, ["read"]) for _ in range(8)))
    names = {credential.metadata["username"] for _, credential in minted}
    assert len(names) == 8
    now = FakeClock().now()
    assert all([await login_works(env, credential, now) for _, credential in minted])
    await asyncio.gather(*(issuer.revoke(lease_for(r, c)) for r, c in minted))
    assert all(env.role(name) is None for name in names)


@only_trust
async def test_a_closed_issuer_refuses_to_work(env: Env, prefix: str) -> None:
    issuer = make_issuer(env, prefix)
    await issuer.aclose()
    with pytest.raises(IssuerUnavailable, match="closed"):
        await issuer.check_health()


# -- no server needed ------------------------------------------------------------------------


def offline_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    password_file = tmp_path / "admin-password"
    if not password_file.exists():
        password_file.write_text("admin-secret-for-tests\n")
    config: dict[str, Any] = {
        "dsn": "host=127.0.0.1 port=1 user=jit_admin dbname=postgres",
        "password_file": str(password_file),
        "resources": {
            "postgresql://db.internal/orders": {
                "database": "orders",
                "actions": {"read": ["orders_read"], "write": ["orders_write", "orders_read"]},
            }
        },
    }
    config.update(overrides)
    return config


def offline_issuer(tmp_path: Path, **overrides: Any) -> PostgresIssuer:
    return PostgresIssuer(
        IssuerContext(
            name=NAME,
            config=offline_config(tmp_path, **overrides),
            clock=FakeClock(),
            broker_url=BROKER,
        )
    )


def test_the_entry_point_is_this_class() -> None:
    (entry,) = [e for e in entry_points(group="jit_broker.issuers") if e.name == "postgres"]
    assert entry.load() is PostgresIssuer


def test_a_valid_config_gives_capabilities_and_a_repr_without_secrets(tmp_path: Path) -> None:
    issuer = offline_issuer(tmp_path, max_ttl="2h", default_ttl="30m")
    caps = issuer.capabilities
    assert (caps.min_ttl, caps.default_ttl, caps.max_ttl) == (
        timedelta(seconds=1),
        timedelta(minutes=30),
        timedelta(hours=2),
    )
    assert caps.revocable
    assert not caps.renewable
    assert "admin-secret-for-tests" not in repr(issuer)
    assert "jit_admin" in repr(issuer)


BAD_CONFIGS: list[tuple[str, dict[str, Any], str]] = [
    ("an unknown key", {"pasword_file": "/x"}, "pasword_file"),
    ("a password in the dsn", {"dsn": "host=h user=u password=hunter2"}, "must not contain"),
    ("a dsn libpq cannot parse", {"dsn": "host=h bogus=1"}, "dsn"),
    ("a missing password file", {"password_file": "/nonexistent/pw"}, "password_file"),
    ("an empty password_file path", {"password_file": ""}, "password_file"),
    ("a bad max_ttl", {"max_ttl": "forever"}, "max_ttl"),
    ("default_ttl above max_ttl", {"max_ttl": "5m", "default_ttl": "1h"}, "default_ttl"),
    ("a zero timeout", {"timeout": "0s"}, "timeout"),
    ("a prefix starting with pg_", {"role_prefix": "pg_jit_"}, "role_prefix"),
    ("an upper-case prefix", {"role_prefix": "JIT_"}, "role_prefix"),
    ("a prefix too long for 63 bytes", {"role_prefix": "a" * 15}, "role_prefix"),
    ("a connection limit of 0", {"connection_limit": 0}, "connection_limit"),
    ("no admin connections", {"max_admin_connections": 0}, "max_admin_connections"),
    ("no resources", {"resources": {}}, "resources"),
    (
        "an unknown resource key",
        {"resources": {"r": {"database": "d", "actions": {"a": ["g"]}, "schema": "x"}}},
        "schema",
    ),
    ("a resource without actions", {"resources": {"r": {"database": "d", "actions": {}}}}, "r"),
    (
        "an action without group roles",
        {"resources": {"r": {"database": "d", "actions": {"read": []}}}},
        "read",
    ),
    (
        "an action name with a space",
        {"resources": {"r": {"database": "d", "actions": {"re ad": ["g"]}}}},
        "re ad",
    ),
    (
        "a predefined group role",
        {"resources": {"r": {"database": "d", "actions": {"read": ["pg_read_all_data"]}}}},
        "predefined",
    ),
    (
        "a group role with the minted prefix",
        {"resources": {"r": {"database": "d", "actions": {"read": ["jit_read"]}}}},
        "reserved for minted roles",
    ),
    (
        "a database name over 63 bytes",
        {"resources": {"r": {"database": "d" * 64, "actions": {"read": ["g"]}}}},
        "database",
    ),
    (
        "a resource with a space",
        {"resources": {"a b": {"database": "d", "actions": {"read": ["g"]}}}},
        "resource",
    ),
    ("a socket dsn without client_host", {"dsn": "host=/run/postgresql user=u"}, "client_host"),
    ("a multi-host dsn without client_host", {"dsn": "host=a,b user=u"}, "client_host"),
    ("a bad client_port", {"client_port": 70000}, "client_port"),
]


@pytest.mark.parametrize(
    ("config", "message"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS]
)
def test_bad_config_is_refused_naming_the_key(
    tmp_path: Path, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        offline_issuer(tmp_path, **config)
    assert NAME in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert "admin-secret-for-tests" not in str(caught.value)


def test_an_empty_password_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="password_file: the file is empty"):
        offline_issuer(tmp_path, password_file=str(empty))


def test_a_socket_dsn_works_with_client_host(tmp_path: Path) -> None:
    issuer = offline_issuer(
        tmp_path, dsn="host=/run/postgresql user=jit_admin", client_host="db.internal"
    )
    assert "db.internal:5432" in repr(issuer)


SCOPES: list[tuple[str, Scope]] = [
    ("another issuer", Scope.of("pg-other", "postgresql://db.internal/orders", ["read"])),
    ("an unknown resource", Scope.of(NAME, "postgresql://db.internal/billing", ["read"])),
    ("a resource matched loosely", Scope.of(NAME, "postgresql://db.internal/orders/", ["read"])),
    ("an unknown action", Scope.of(NAME, "postgresql://db.internal/orders", ["read", "drop"])),
    ("no action", Scope.of(NAME, "postgresql://db.internal/orders", [])),
]


@pytest.mark.parametrize("scope", [s[1] for s in SCOPES], ids=[s[0] for s in SCOPES])
def test_check_scope_refuses(tmp_path: Path, scope: Scope) -> None:
    with pytest.raises(ScopeNotSupported):
        offline_issuer(tmp_path).check_scope(scope)


def test_check_scope_accepts_configured_resources_and_actions(tmp_path: Path) -> None:
    issuer = offline_issuer(tmp_path)
    issuer.check_scope(Scope.of(NAME, "postgresql://db.internal/orders", ["read"]))
    issuer.check_scope(Scope.of(NAME, "postgresql://db.internal/orders", ["read", "write"]))


async def test_params_are_refused_before_anything_is_contacted(tmp_path: Path) -> None:
    issuer = offline_issuer(tmp_path)  # port 1: a connection attempt would raise Unavailable
    request = mint_request(
        Scope.of(NAME, "postgresql://db.internal/orders", ["read"]),
        now=FakeClock().now(),
        ttl=timedelta(minutes=1),
    )
    with_params = MintRequest(**{**_fields(request), "params": {"public_key": "x"}})
    with pytest.raises(InvalidRequest, match="accepts no params"):
        await issuer.mint(with_params)


def _fields(request: MintRequest) -> dict[str, Any]:
    return {f: getattr(request, f) for f in request.__struct_fields__}


def test_role_names_follow_the_lease_id() -> None:
    lease_id = new_lease_id()
    assert role_name("jit_", lease_id) == "jit_" + lease_id.replace(".", "_")
    assert len(role_name("a" * 14, lease_id).encode()) == 63


@given(st.text(min_size=1, max_size=300))
def test_any_lease_id_gives_a_safe_deterministic_role_name(lease_id: str) -> None:
    name = role_name("jit_", lease_id)
    assert name == role_name("jit_", lease_id)
    assert len(name.encode()) <= 63
    assert name.startswith("jit_")
    assert all(c in "abcdefghijklmnopqrstuvwxyz0123456789_" for c in name)
    if "." not in lease_id:  # never the shape of a broker lease id: the hashed form
        assert name.startswith("jit_x")


def test_hashed_names_never_collide_with_lease_id_names() -> None:
    lease_id = new_lease_id()
    direct = role_name("jit_", lease_id)
    assert direct[len("jit_")] in "0123456789abcdef"
    assert role_name("jit_", lease_id.upper()).startswith("jit_x")
    assert role_name("jit_", lease_id.upper()) != direct
