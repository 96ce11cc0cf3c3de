"""A local AWS for the aws issuer's tests: moto's server on 127.0.0.1, plus what moto lacks.

moto (5.x) in server mode, with IAM authentication on, checks every request's SigV4 signature
and session token and evaluates the caller's *identity* policies (a role's inline and attached
policies for an assumed-role session), including the ``Resource`` element and a role's trust
policy with its ``sts:ExternalId`` condition. Two rules of real AWS that this issuer depends on
are missing from it:

1. **Session policies.** AWS grants an assumed-role session the *intersection* of the role's
   policies and the inline session ``Policy`` passed to AssumeRole; moto records that policy
   but grants the role's policies alone.
2. **Expiry.** moto never refuses a session's keys after its ``Expiration``.

:class:`MotoAWS` adds both to moto's own authorization step (``IAMRequestBase.
check_action_permitted``), evaluating the session policy moto recorded with moto's own policy
evaluator (``IAMPolicy``), and refusing expired keys with ``ExpiredToken``. Everything else —
signatures, tokens, the role's policies, trust policies — is moto's.

Time: moto's STS clock (when it issues a session, and when the added expiry rule checks it)
is :attr:`MotoAWS.clock` if set, else real time. The conformance tests run on a ``FakeClock``
that starts at real time and set it as moto's clock: when the kit moves its clock past
``not_after``, the backend's clock moves too, as it would for real.

The server is wrapped in a small WSGI recorder that keeps every STS request as it arrived on
the wire (its form parameters and the access key id that signed it), and can answer the next
matching STS request with an error or delay it — to test throttling and timeouts without
patching the issuer.

This module touches a few private parts of moto (the names above and
``ThreadedMotoServer._server_entry``); a moto upgrade that moves them fails these tests loudly
rather than silently weakening them.
"""

from __future__ import annotations

import io
import json
import secrets
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import boto3
import moto.sts.models as moto_sts_models
from botocore.config import Config
from moto import settings as moto_settings
from moto.core.authorization import ActionAuthenticatorMixin
from moto.core.exceptions import InvalidClientTokenIdError
from moto.iam import access_control
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.s3.exceptions import S3ClientError
from moto.server import ThreadedMotoServer
from moto.sts.models import sts_backends
from werkzeug.serving import make_server

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
ROLE_PREFIX = "jit-test-"
S3_CONFIG = Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1})


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


@dataclass
class StsCall:
    """One STS request as it arrived at the server."""

    action: str
    params: dict[str, str]  # the form parameters (Tags.member.1.Key=...), first value each
    access_key_id: str  # the key that signed it (from the Authorization header)

    def tags(self) -> dict[str, str]:
        """The ``Tags.member.N`` pairs as a mapping."""
        out: dict[str, str] = {}
        n = 1
        while f"Tags.member.{n}.Key" in self.params:
            out[self.params[f"Tags.member.{n}.Key"]] = self.params.get(f"Tags.member.{n}.Value", "")
            n += 1
        return out


@dataclass
class _Injection:
    action: str
    status: int = 0
    code: str = ""
    delay: float = 0.0


class _Recorder:
    """WSGI middleware: records STS requests, injects errors and delays."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls: list[StsCall] = []
        self.injections: list[_Injection] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if "/sts/aws4_request" in auth and environ.get("REQUEST_METHOD") == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length)
            environ["wsgi.input"] = io.BytesIO(body)
            params = dict(parse_qsl(body.decode(), keep_blank_values=True))
            key_id = auth.partition("Credential=")[2].partition("/")[0]
            action = params.get("Action", "")
            with self.lock:
                self.calls.append(StsCall(action=action, params=params, access_key_id=key_id))
                injection = next((i for i in self.injections if i.action == action), None)
                if injection is not None:
                    self.injections.remove(injection)
            if injection is not None:
                if injection.delay:
                    time.sleep(injection.delay)
                if injection.status:
                    xml = (
                        '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
                        f"<Error><Type>Sender</Type><Code>{injection.code}</Code>"
                        "<Message>injected by the test</Message></Error>"
                        "<RequestId>00000000-0000-0000-0000-000000000000</RequestId>"
                        "</ErrorResponse>"
                    ).encode()
                    start_response(
                        f"{injection.status} Injected",
                        [("Content-Type", "text/xml"), ("Content-Length", str(len(xml)))],
                    )
                    return [xml]
        return self.app(environ, start_response)


class _Server(ThreadedMotoServer):
    """ThreadedMotoServer with the recorder around moto's WSGI app."""

    def __init__(self, recorder: _Recorder, port: int) -> None:
        super().__init__(ip_address="127.0.0.1", port=port, verbose=False)
        self.recorder = recorder

    def _server_entry(self) -> None:
        self.recorder.app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            self._ip_address,
            self._port,
            self.recorder,
            True,
            request_handler=MotoRequestHandler,
        )
        self._server_ready_event.set()
        self._server.serve_forever(poll_interval=0.02)  # stop() waits for one poll


class _ExpiredToken(InvalidClientTokenIdError):
    """The error AWS answers for a session's keys after its Expiration."""

    def __init__(self) -> None:
        super(InvalidClientTokenIdError, self).__init__(
            "ExpiredToken", "The security token included in the request is expired"
        )


@dataclass
class World:
    """One test's own AWS objects: the role and the bucket it may use. ``other_bucket`` is
    shared by the module and only ever read: the role's own policy does not cover it."""

    bucket: str
    other_bucket: str
    role_name: str
    role_arn: str
    key: str = "hello.txt"

    @property
    def bucket_arn(self) -> str:
        return f"arn:aws:s3:::{self.bucket}"


@dataclass
class Identity:
    """An IAM user of moto's and its access key."""

    arn: str
    access_key_id: str
    secret_access_key: str

    def credentials_file(self, profile: str = "default") -> str:
        return (
            f"[{profile}]\naws_access_key_id = {self.access_key_id}\n"
            f"aws_secret_access_key = {self.secret_access_key}\n"
        )


@dataclass
class MotoAWS:
    """The running server, its admin and broker identities, and the rule patches."""

    server: _Server | None = None
    port: int = 0
    recorder: _Recorder = field(default_factory=lambda: _Recorder(None))
    clock: Callable[[], datetime] | None = None  # moto's STS clock; None: real time
    admin: Identity | None = None
    broker: Identity | None = None
    broker2: Identity | None = None
    other_bucket: str = "jit-test-shared-other"
    _originals: dict[str, Any] = field(default_factory=dict)
    _auth: tuple[float, int] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server = _Server(self.recorder, self.port)
        self.server.start()
        self.port = self.server.get_host_and_port()[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def setup(self) -> None:
        """Start, patch moto, create the identities, then turn IAM authentication on."""
        self.start()
        self._patch()
        self.admin = self._user("jit-test-admin", policy(_allow("*", "*")))
        assume = policy(
            _allow(["sts:AssumeRole", "sts:TagSession"], f"arn:aws:iam::{ACCOUNT}:role/jit-test-*")
        )
        self.broker = self._user("jit-test-broker", assume)
        self.broker2 = self._user("jit-test-broker-2", assume)
        s3 = self.client("s3")
        s3.create_bucket(Bucket=self.other_bucket)
        s3.put_object(Bucket=self.other_bucket, Key="hello.txt", Body=b"hello")
        self._auth = (
            moto_settings.INITIAL_NO_AUTH_ACTION_COUNT,
            ActionAuthenticatorMixin.request_count,
        )
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # every request is authenticated
        ActionAuthenticatorMixin.request_count = 0

    def teardown(self) -> None:
        if self._auth is not None:
            moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = self._auth[0]
            ActionAuthenticatorMixin.request_count = self._auth[1]
            self._auth = None
        try:
            if self.server is not None:
                req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
                urllib.request.urlopen(req, timeout=10).close()  # drop every backend's state
        finally:
            self.stop()
            self._unpatch()

    # -- what moto lacks -------------------------------------------------------------------

    def now(self) -> datetime:
        """moto's STS clock (naive UTC, as moto keeps it)."""
        now = self.clock() if self.clock is not None else datetime.now(UTC)
        return now.astimezone(UTC).replace(tzinfo=None)

    def _patch(self) -> None:
        base = access_control.IAMRequestBase
        original = base.check_action_permitted
        self._originals = {"utcnow": moto_sts_models.utcnow, "check": original}
        moto_sts_models.utcnow = self.now  # sessions are issued on our clock
        aws = self

        def check_action_permitted(request: Any, resource: str) -> None:
            key = request._access_key
            if isinstance(key, access_control.AssumedRoleAccessKey):
                session = aws.session_for(key._access_key_id)
                if session is not None:
                    expiration = session.expiration.replace(tzinfo=None)
                    if aws.now() >= expiration:
                        if isinstance(request, access_control.S3IAMRequest):
                            raise S3ClientError("ExpiredToken", "The provided token has expired.")
                        raise _ExpiredToken()
                    if session.policy and request._action != "sts:GetCallerIdentity":
                        verdict = access_control.IAMPolicy(session.policy).is_action_permitted(
                            request._action, resource
                        )
                        if verdict is not access_control.PermissionResult.PERMITTED:
                            request._raise_access_denied()
            original(request, resource)

        base.check_action_permitted = check_action_permitted

    def _unpatch(self) -> None:
        if self._originals:
            moto_sts_models.utcnow = self._originals["utcnow"]
            access_control.IAMRequestBase.check_action_permitted = self._originals["check"]
            self._originals = {}

    # -- moto's state ----------------------------------------------------------------------

    def session_for(self, access_key_id: str) -> Any:
        """moto's record of the assumed-role session with this access key id, or None."""
        for session in sts_backends[ACCOUNT]["aws"].assumed_roles:
            if session.access_key_id == access_key_id:
                return session
        return None

    def sts_calls(self, action: str = "AssumeRole") -> list[StsCall]:
        with self.recorder.lock:
            return [c for c in self.recorder.calls if c.action == action]

    def inject(self, action: str, *, status: int = 0, code: str = "", delay: float = 0) -> None:
        """Answer the next ``action`` request with an error (or delay it)."""
        with self.recorder.lock:
            self.recorder.injections.append(_Injection(action, status, code, delay))

    def clear_injections(self) -> None:
        with self.recorder.lock:
            self.recorder.injections.clear()

    # -- clients and objects ---------------------------------------------------------------

    def client(self, service: str, identity: Identity | None = None, **creds: str) -> Any:
        if identity is not None:
            creds = {
                "aws_access_key_id": identity.access_key_id,
                "aws_secret_access_key": identity.secret_access_key,
            }
        return boto3.client(
            service, endpoint_url=self.url, region_name=REGION, config=S3_CONFIG, **creds
        )

    def create_world(self, *, trust_broker: bool = True, external_id: str | None = None) -> World:
        suffix = secrets.token_hex(4)
        name = f"{ROLE_PREFIX}{suffix}"
        assert self.admin is not None
        assert self.broker is not None
        iam = self.client("iam", self.admin)
        s3 = self.client("s3", self.admin)
        assert self.broker2 is not None
        trusted = (
            [self.broker.arn, self.broker2.arn]
            if trust_broker
            else [f"arn:aws:iam::{ACCOUNT}:user/nobody"]
        )
        statement: dict[str, Any] = {
            "Effect": "Allow",
            "Principal": {"AWS": trusted},
            "Action": ["sts:AssumeRole", "sts:TagSession"],
        }
        if external_id is not None:
            statement["Condition"] = {"StringEquals": {"sts:ExternalId": external_id}}
        role = iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=policy(statement), MaxSessionDuration=43200
        )["Role"]
        world = World(
            bucket=f"{name}-data",
            other_bucket=self.other_bucket,
            role_name=name,
            role_arn=role["Arn"],
        )
        # The role itself may do anything on its bucket: the session policy is what narrows.
        iam.put_role_policy(
            RoleName=name,
            PolicyName="bucket",
            PolicyDocument=policy(
                _allow("s3:*", [f"arn:aws:s3:::{world.bucket}", f"arn:aws:s3:::{world.bucket}/*"])
            ),
        )
        s3.create_bucket(Bucket=world.bucket)
        s3.put_object(Bucket=world.bucket, Key=world.key, Body=b"hello")
        return world

    def delete_world(self, world: World) -> None:
        assert self.admin is not None
        iam = self.client("iam", self.admin)
        s3 = self.client("s3", self.admin)
        for obj in s3.list_objects_v2(Bucket=world.bucket).get("Contents", []):
            s3.delete_object(Bucket=world.bucket, Key=obj["Key"])
        s3.delete_bucket(Bucket=world.bucket)
        iam.delete_role_policy(RoleName=world.role_name, PolicyName="bucket")
        iam.delete_role(RoleName=world.role_name)

    def _user(self, name: str, document: str) -> Identity:
        iam = self.client("iam")  # authentication is still off: moto's default keys do
        user = iam.create_user(UserName=name)["User"]
        iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=document)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return Identity(user["Arn"], key["AccessKeyId"], key["SecretAccessKey"])


def _allow(action: str | list[str], resource: str | list[str]) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource}


@dataclass
class Session:
    """Boto3 clients on a minted credential (its secret JSON, as a workload receives it)."""

    aws: MotoAWS
    secret: dict[str, Any]

    def client(self, service: str) -> Any:
        return self.aws.client(
            service,
            aws_access_key_id=self.secret["AccessKeyId"],
            aws_secret_access_key=self.secret["SecretAccessKey"],
            aws_session_token=self.secret["SessionToken"],
        )
