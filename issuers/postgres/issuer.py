"""The ``postgres`` issuer: one short-lived PostgreSQL login role per lease.

Owns mint, revoke and health against a PostgreSQL cluster through an admin role with
CREATEROLE:

- **mint** creates ``<role_prefix><lease id>`` (``.`` replaced by ``_``) ``WITH LOGIN`` and no
  other attribute, a broker-generated password (sent to the server only as a SCRAM-SHA-256
  verifier computed by libpq, so the plaintext never reaches a server log), ``VALID UNTIL`` the
  lease's ``not_after`` rounded down to the second, a ``CONNECTION LIMIT``, a comment that marks
  it as minted for this lease, and membership in the NOLOGIN group roles that the configured
  resource maps the requested actions to. One transaction: all of it or nothing.
- **revoke** finds the role from the lease id alone (the handle is optional), refuses to touch a
  role that does not carry this lease's marker, sets it NOLOGIN, terminates its sessions,
  reassigns and drops what it owns in every database where it owns something, and drops it.
- **check_health** runs ``SELECT 1`` and checks the setup: the admin role can create roles, the
  group roles exist and are safe to grant, the databases exist.

Nothing is kept between calls: each operation opens its own admin connection (at most
``max_admin_connections`` at a time). No identifier or value from a request is ever formatted
into SQL: the resource and actions only select entries of the configuration, identifiers are
composed with :mod:`psycopg.sql`, values are bound or quoted by psycopg.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import secrets
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, timedelta
from typing import Any, ClassVar, Final
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from broker.errors import InvalidRequest, IssuerError, IssuerUnavailable, ScopeNotSupported
from broker.issuer import Capabilities, Exports, ExportSource, IssuerContext
from broker.types import Credential, Lease, MintRequest, Scope, Secret
from issuers.postgres.config import (
    MAX_IDENTIFIER_BYTES,
    PostgresConfig,
    Settings,
    load_settings,
    read_password_file,
)

__all__ = ["MARKER", "PostgresIssuer", "group_problem", "role_name"]

log = logging.getLogger("jit.issuers.postgres")

#: Every minted role's comment starts with this, then the lease id: revoke drops nothing else.
MARKER: Final = "jit-broker lease "
#: 32 random bytes, URL-safe base64 (43 characters): a password nobody guesses.
PASSWORD_BYTES: Final = 32
#: Predefined roles that amount to superuser (files and programs on the server).
DANGEROUS_PREDEFINED: Final = frozenset(
    {"pg_execute_server_program", "pg_read_server_files", "pg_write_server_files"}
)

Conn = psycopg.AsyncConnection[TupleRow]

_BROKER_LEASE_ID = re.compile(r"^[0-9a-f]{16}\.[0-9a-f]{32}$")
_ATTRIBUTES: Final = ("SUPERUSER", "CREATEROLE", "CREATEDB", "REPLICATION", "BYPASSRLS", "LOGIN")

_GROUP_CLOSURE: Final = """
WITH RECURSIVE closure(oid, via, depth) AS (
    SELECT oid, rolname::text, 0 FROM pg_roles WHERE rolname = ANY(%s)
  UNION
    SELECT m.roleid, c.via, c.depth + 1
    FROM pg_auth_members m JOIN closure c ON m.member = c.oid
    WHERE c.depth < 32
)
SELECT c.via, r.rolname::text, c.depth, r.rolsuper, r.rolcreaterole, r.rolcreatedb,
       r.rolreplication, r.rolbypassrls, r.rolcanlogin
FROM closure c JOIN pg_roles r ON r.oid = c.oid
ORDER BY c.via, c.depth, r.rolname
"""

_FIND_ROLE: Final = (
    "SELECT oid, shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s"
)
_INVENTORY: Final = (
    "SELECT rolname::text, shobj_description(oid, 'pg_authid') FROM pg_roles "
    "WHERE rolname LIKE %s ESCAPE '\\'"
)
_SESSIONS: Final = (
    "SELECT count(*) FROM pg_stat_activity WHERE usesysid = %s::oid AND pid <> pg_backend_pid()"
)
_TERMINATE: Final = (
    "SELECT count(*) FILTER (WHERE NOT pg_terminate_backend(pid, %s::bigint)) "
    "FROM pg_stat_activity WHERE usesysid = %s::oid AND pid <> pg_backend_pid()"
)
_OWNING_DATABASES: Final = (
    "SELECT DISTINCT d.datname::text FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid "
    "WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = %s::oid ORDER BY 1"
)


def role_name(prefix: str, lease_id: str) -> str:
    """The role minted for ``lease_id``: deterministic, so revoke needs only the lease id.

    A broker lease id (``<16 hex>.<32 hex>``, ADR 0001) gives ``<prefix><16 hex>_<32 hex>``
    (at most 63 bytes, PostgreSQL's limit). Any other string gives ``<prefix>x<sha256 hex>``,
    cut to 63 bytes: never equal to the first form (whose body starts with a hex digit)."""
    if _BROKER_LEASE_ID.match(lease_id):
        return prefix + lease_id.replace(".", "_")
    digest = hashlib.sha256(lease_id.encode()).hexdigest()
    return (prefix + "x" + digest)[:MAX_IDENTIFIER_BYTES]


def group_problem(names: Sequence[str], rows: Iterable[Sequence[Any]]) -> str | None:
    """Why the group roles ``names`` must not be granted, or None.

    ``rows`` are those of the closure query: each group role and every role it is (directly or
    transitively) a member of. A member can ``SET ROLE`` to any of them, so none may carry an
    attribute beyond plain privileges or be a login role, and none may be a predefined role
    that reaches the server's files or programs."""
    rows = list(rows)
    found = {row[0] for row in rows if row[2] == 0}
    missing = sorted(set(names) - found)
    if missing:
        return f"group role(s) {missing} do not exist"
    for via, rolname, depth, *flags in rows:
        attrs = [attr for attr, on in zip(_ATTRIBUTES, flags, strict=True) if on]
        who = f"group role {via!r}" if depth == 0 else f"group role {via!r} inherits {rolname!r}"
        if attrs:
            return (
                f"{who}, which has {', '.join(attrs)}: only NOLOGIN roles without role "
                "attributes may be granted"
            )
        if rolname in DANGEROUS_PREDEFINED:
            return f"{who}, which is superuser-equivalent"
    return None


def _describe(exc: psycopg.Error) -> str:
    """An error's class and SQLSTATE: never its text, which may quote a statement."""
    state = f" {exc.sqlstate}" if exc.sqlstate else ""
    return f"{type(exc).__name__}{state}"


def _connect_failure(exc: psycopg.Error) -> str:
    """libpq's reason for a failed connection (it never echoes a password), on one line."""
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


class PostgresIssuer:
    """Mints PostgreSQL login roles; see the module docstring. Implements ``Issuer``.

    Raises ConfigError at construction for invalid config (nothing is contacted yet: the
    broker's first ``check_health()`` does that)."""

    #: The ``config:`` of an instance, checked by the broker before construction.
    config_type: ClassVar[type[PostgresConfig]] = PostgresConfig

    def __init__(self, context: IssuerContext) -> None:
        self.name: str = context.name
        self._settings: Settings = load_settings(self.name, context.config)
        s = self._settings
        self.capabilities: Capabilities = Capabilities(
            max_ttl=s.max_ttl,
            default_ttl=s.default_ttl,
            min_ttl=timedelta(seconds=1),  # VALID UNTIL has a one-second grain (rounded down)
            revocable=True,
            renewable=False,
        )
        self._slots = asyncio.Semaphore(s.max_admin_connections)
        self._connect_timeout = max(2, math.ceil(s.timeout.total_seconds()))  # libpq's minimum
        self._timeout_ms = max(1000, int(s.timeout.total_seconds() * 1000))
        self._closed = False

    def __repr__(self) -> str:
        s = self._settings
        return (
            f"PostgresIssuer(name={self.name!r}, server={s.client_host}:{s.client_port}, "
            f"admin={s.admin_user!r}, resources={sorted(s.resources)!r})"
        )

    def role_name(self, lease_id: str) -> str:
        """The login role this instance mints for ``lease_id``."""
        return role_name(self._settings.role_prefix, lease_id)

    # -- Issuer ----------------------------------------------------------------------------

    def check_scope(self, requested: Scope) -> None:
        """The resource must be a configured resource (matched exactly) and every action one
        that resource defines."""
        if requested.issuer != self.name:
            raise ScopeNotSupported(f"scope is for issuer {requested.issuer!r}, not {self.name!r}")
        resource = self._settings.resources.get(requested.resource)
        if resource is None:
            raise ScopeNotSupported(
                f"postgres issuer {self.name!r} has no resource {requested.resource!r}"
            )
        if not requested.actions:
            raise ScopeNotSupported("at least one action is required")
        unknown = sorted(set(requested.actions) - set(resource.actions))
        if unknown:
            raise ScopeNotSupported(f"resource {requested.resource!r} has no action(s) {unknown}")

    async def mint(self, request: MintRequest) -> Credential:
        """A new login role for ``request.lease_id`` with a fresh password, valid until
        ``not_after`` (rounded down to the second), member of the group roles of the requested
        actions. Raises InvalidRequest for any param (none are accepted), IssuerError when the
        group roles are unsafe or missing or the role already exists, IssuerUnavailable when
        PostgreSQL cannot be reached."""
        scope = request.scope
        self.check_scope(scope)
        if request.params:
            raise InvalidRequest(
                f"postgres issuer {self.name!r} accepts no params (got {sorted(request.params)})"
            )
        s = self._settings
        resource = s.resources[scope.resource]
        groups = sorted({group for action in scope.actions for group in resource.actions[action]})
        role = self.role_name(request.lease_id)
        expires_at = request.not_after.astimezone(UTC).replace(microsecond=0)
        if expires_at <= request.issued_at:
            raise InvalidRequest("the credential would be born expired (ttl under one second)")
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        # Only the lease id and instance: every role of the cluster can read role comments.
        comment = f"{MARKER}{request.lease_id} (issuer {self.name})"
        ident = sql.Identifier(role)
        async with self._admin("mint") as conn:
            # The server receives a SCRAM-SHA-256 verifier, never the password: statement logs,
            # pg_stat_statements and error reports cannot show it.
            verifier = conn.pgconn.encrypt_password(
                password.encode(), role.encode(), b"scram-sha-256"
            ).decode("ascii")
            async with conn.transaction():
                cur = await conn.execute(_GROUP_CLOSURE, (groups,))
                problem = group_problem(groups, await cur.fetchall())
                if problem is not None:
                    raise IssuerError(f"postgres issuer {self.name!r}: {problem}; not minting")
                await conn.execute(
                    sql.SQL(
                        "CREATE ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                        "NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT {limit} "
                        "VALID UNTIL {until} PASSWORD {verifier}"
                    ).format(
                        role=ident,
                        limit=sql.Literal(s.connection_limit),
                        until=sql.Literal(expires_at.isoformat(sep=" ")),
                        verifier=sql.Literal(verifier),
                    )
                )
                await conn.execute(
                    sql.SQL("COMMENT ON ROLE {role} IS {comment}").format(
                        role=ident, comment=sql.Literal(comment)
                    )
                )
                await conn.execute(
                    sql.SQL("GRANT {groups} TO {role}").format(
                        groups=sql.SQL(", ").join(sql.Identifier(g) for g in groups), role=ident
                    )
                )
        log.info(
            "postgres issuer %r: created role %s for lease %s (groups %s, valid until %s)",
            self.name,
            role,
            request.lease_id,
            ",".join(groups),
            expires_at.isoformat(),
        )
        host = f"[{s.client_host}]" if ":" in s.client_host else s.client_host
        uri = (
            f"postgresql://{quote(role, safe='')}@{host}:{s.client_port}/"
            f"{quote(resource.database, safe='')}"
        )
        return Credential(
            secret=Secret(password),
            expires_at=expires_at,
            token_type="password",  # noqa: S106 (a credential type, not a password)
            handle={"role": role},
            metadata={
                "username": role,
                "host": s.client_host,
                "port": str(s.client_port),
                "database": resource.database,
                "connection_uri": uri,
            },
        )

    async def revoke(self, lease: Lease) -> None:
        """Drop the lease's role and end its sessions. Idempotent: no role, nothing to do.

        The role is found from the lease id (and the handle's ``role`` if it names another);
        a role without this lease's marker comment is never touched (IssuerError). Steps:
        NOLOGIN (no new session), terminate its sessions and wait for them, in every database
        where it owns objects or holds privileges (``pg_shdepend``) ``REASSIGN OWNED`` to the
        admin role and ``DROP OWNED``, then ``DROP ROLE``. Raises IssuerUnavailable when
        PostgreSQL cannot be reached or a session does not end: the broker retries."""
        candidates = [self.role_name(lease.id)]
        named = lease.handle.get("role")
        if named and named not in candidates:
            if len(named.encode()) > MAX_IDENTIFIER_BYTES or "\0" in named:
                raise IssuerError(f"postgres issuer {self.name!r}: the handle's role is invalid")
            candidates.append(named)
        async with self._admin("revoke") as conn:
            targets: list[tuple[str, int]] = []
            for role in candidates:
                cur = await conn.execute(_FIND_ROLE, (role,))
                row = await cur.fetchone()
                if row is None:
                    continue
                oid, comment = row
                if not _is_marked_for(comment, lease.id):
                    raise IssuerError(
                        f"postgres issuer {self.name!r}: role {role!r} exists but is not marked "
                        f"as minted for lease {lease.id}; refusing to drop it"
                    )
                targets.append((role, int(oid)))
            if not targets:
                log.debug("postgres issuer %r: lease %s has no role", self.name, lease.id)
                return
            here = conn.info.dbname
            elsewhere: set[str] = set()
            for role, oid in targets:
                await self._lock_out(conn, role, oid)
                cur = await conn.execute(_OWNING_DATABASES, (oid,))
                elsewhere.update(str(r[0]) for r in await cur.fetchall())
        for database in sorted(elsewhere - {here}):
            async with self._admin(f"revoke (database {database!r})", dbname=database) as conn:
                for role, _ in targets:
                    async with conn.transaction():
                        await _drop_owned(conn, role)
        async with self._admin("revoke") as conn:
            for role, oid in targets:
                await self._terminate(conn, oid)  # anything that slipped in meanwhile
                async with conn.transaction():
                    await _drop_owned(conn, role)  # here, and privileges on shared objects
                    await conn.execute(
                        sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role))
                    )
                log.info(
                    "postgres issuer %r: dropped role %s of lease %s", self.name, role, lease.id
                )

    async def inventory(self) -> list[str]:
        """The lease ids of the roles under this instance's ``role_prefix`` that carry this
        broker's lease marker (a role without the marker is never reported, so never touched)."""
        async with self._admin("inventory") as conn:
            cur = await conn.execute(_INVENTORY, (_like_prefix(self._settings.role_prefix),))
            rows = await cur.fetchall()
        found: list[str] = []
        for role, comment in rows:
            if not isinstance(comment, str) or not comment.startswith(MARKER):
                continue
            lease_id = comment[len(MARKER) :].split(" ", 1)[0]
            if self.role_name(lease_id) == role:
                found.append(lease_id)
        return found

    def exports(self, credential: Credential, request: MintRequest) -> Exports:
        """libpq's variables: ``psql`` and every libpq client connect with no argument."""
        return Exports(
            env={
                "PGHOST": ExportSource(metadata="host"),
                "PGPORT": ExportSource(metadata="port"),
                "PGUSER": ExportSource(metadata="username"),
                "PGPASSWORD": ExportSource(secret=True),
                "PGDATABASE": ExportSource(metadata="database"),
            }
        )

    async def check_health(self) -> None:
        """``SELECT 1`` on an admin connection, then the setup: the admin role may create
        roles, every configured group role exists and is safe to grant, every database
        exists. Raises IssuerUnavailable naming what is wrong."""
        s = self._settings
        async with self._admin("health check") as conn:
            await conn.execute("SELECT 1")
            cur = await conn.execute(
                "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
            )
            row = await cur.fetchone()
            if row is None or not row[0]:
                raise IssuerUnavailable(
                    f"postgres issuer {self.name!r}: the admin role lacks CREATEROLE"
                )
            groups = sorted(
                {g for r in s.resources.values() for gs in r.actions.values() for g in gs}
            )
            cur = await conn.execute(_GROUP_CLOSURE, (groups,))
            problem = group_problem(groups, await cur.fetchall())
            if problem is not None:
                raise IssuerUnavailable(f"postgres issuer {self.name!r}: {problem}")
            wanted = sorted({r.database for r in s.resources.values()})
            cur = await conn.execute(
                "SELECT datname::text FROM pg_database WHERE datname = ANY(%s) AND datallowconn",
                (wanted,),
            )
            missing = sorted(set(wanted) - {str(r[0]) for r in await cur.fetchall()})
            if missing:
                raise IssuerUnavailable(
                    f"postgres issuer {self.name!r}: database(s) {missing} do not exist or "
                    "refuse connections"
                )

    async def aclose(self) -> None:
        """No connection is held between calls; later calls raise IssuerUnavailable."""
        self._closed = True

    # -- internals -------------------------------------------------------------------------

    async def _lock_out(self, conn: Conn, role: str, oid: int) -> None:
        """NOLOGIN, admin membership (for terminate, REASSIGN and DROP OWNED), no session."""
        ident = sql.Identifier(role)
        await conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(ident))
        cur = await conn.execute("SELECT pg_has_role(current_user, %s::oid, 'USAGE')", (oid,))
        row = await cur.fetchone()
        if row is None or not row[0]:
            await conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(ident))
        await self._terminate(conn, oid)

    async def _terminate(self, conn: Conn, oid: int) -> None:
        """Terminate every session of role ``oid`` and make sure they are gone."""
        wait_ms = max(500, self._timeout_ms // 2)
        await conn.execute(_TERMINATE, (wait_ms, oid))
        # autocommit: a new transaction, so a fresh pg_stat_activity snapshot
        cur = await conn.execute(_SESSIONS, (oid,))
        row = await cur.fetchone()
        if row is not None and row[0]:
            raise IssuerUnavailable(
                f"postgres issuer {self.name!r}: {row[0]} session(s) of the role did not end yet"
            )

    def _admin_password(self) -> str | None:
        path = self._settings.password_file
        if path is None:
            return None
        try:
            return read_password_file(path)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise IssuerUnavailable(
                f"postgres issuer {self.name!r}: password_file unusable ({reason})"
            ) from None

    @asynccontextmanager
    async def _admin(self, what: str, *, dbname: str | None = None) -> AsyncIterator[Conn]:
        """An autocommit admin connection with statement and lock timeouts, closed after.

        psycopg errors become IssuerUnavailable (connection, timeout, shutdown, lock: the
        broker retries) or IssuerError (anything else), described by class and SQLSTATE."""
        if self._closed:
            raise IssuerUnavailable(f"postgres issuer {self.name!r} is closed")
        kwargs: dict[str, Any] = {"connect_timeout": self._connect_timeout}
        if dbname is not None:
            kwargs["dbname"] = dbname
        password = self._admin_password()
        if password is not None:
            kwargs["password"] = password
        async with self._slots:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._settings.dsn, autocommit=True, **kwargs
                )
            except psycopg.Error as exc:
                raise IssuerUnavailable(
                    f"postgres issuer {self.name!r}: {what}: cannot connect "
                    f"({_connect_failure(exc)})"
                ) from None
            try:
                async with conn:
                    await conn.execute(
                        "SELECT set_config('statement_timeout', %s, false), "
                        "set_config('lock_timeout', %s, false)",
                        (str(self._timeout_ms), str(self._timeout_ms)),
                    )
                    yield conn
            except psycopg.OperationalError as exc:
                raise IssuerUnavailable(
                    f"postgres issuer {self.name!r}: {what} failed ({_describe(exc)})"
                ) from None
            except psycopg.errors.InsufficientPrivilege as exc:
                raise IssuerError(
                    f"postgres issuer {self.name!r}: {what}: the admin role lacks a privilege "
                    f"({_describe(exc)}); it needs CREATEROLE (and on PostgreSQL 16 or later "
                    "ADMIN OPTION on the group roles)"
                ) from None
            except psycopg.Error as exc:
                raise IssuerError(
                    f"postgres issuer {self.name!r}: {what} failed ({_describe(exc)})"
                ) from None


async def _drop_owned(conn: Conn, role: str) -> None:
    ident = sql.Identifier(role)
    await conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(ident))
    await conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))


def _like_prefix(prefix: str) -> str:
    """A LIKE pattern matching names that start with ``prefix`` (its wildcards escaped)."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _is_marked_for(comment: object, lease_id: str) -> bool:
    if not isinstance(comment, str):
        return False
    marker = MARKER + lease_id
    return comment == marker or comment.startswith(marker + " ")
