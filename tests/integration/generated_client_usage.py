"""A program over the client ``openapi-python-client`` generates from the broker's OpenAPI
document (package ``jit_broker_api_client``). tests/integration/test_openapi_client.py
generates the client, type-checks it together with this file under ``mypy --strict``, and
runs :func:`tour` against the live API: every call below must get the status it expects, and
its answer must parse into the model the document names for that status.

The package exists only in that test's temporary directory, so this module is not imported
anywhere else (ruff lints it; the repository's mypy run does not cover tests/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from jit_broker_api_client import AuthenticatedClient, Client
from jit_broker_api_client.api.approvals import cancel_approval, get_approval, list_approvals
from jit_broker_api_client.api.discovery import (
    get_audit_jwks,
    get_authorization_server_metadata,
    get_jwks,
)
from jit_broker_api_client.api.governance import report_usage
from jit_broker_api_client.api.issuers import get_issuer_document
from jit_broker_api_client.api.oauth import exchange_token, introspect_token, revoke_token
from jit_broker_api_client.api.ops import get_health, get_readiness
from jit_broker_api_client.api.ssf import get_ssf_configuration, get_ssf_jwks
from jit_broker_api_client.api.v1 import (
    complete_task,
    explain_request,
    get_lease,
    get_task,
    list_leases,
    request_credential,
    revoke_all_leases,
    revoke_lease,
)
from jit_broker_api_client.models import (
    ApprovalOut,
    AuthorizationServerMetadata,
    CredentialRequest,
    CredentialResponse,
    ExchangeTokenBody,
    ExchangeTokenBodyGrantType,
    ExchangeTokenBodySubjectTokenType,
    ExplainOut,
    ExplainRequest,
    Health,
    IntrospectionResponse,
    IntrospectTokenBody,
    JsonWebKeySet,
    LeaseView,
    OAuthError,
    Problem,
    Readiness,
    RevocationResponse,
    RevokeAllOut,
    RevokeTokenBody,
    RevokeTokenBodyTokenTypeHint,
    TaskIn,
    TaskOut,
    TokenResponse,
    UsageIn,
    UsageOut,
)
from jit_broker_api_client.types import Response

T = TypeVar("T")

RESOURCE = "https://demo.local"


@dataclass(frozen=True)
class Answer:
    operation: str
    status: int
    parsed: object
    headers: dict[str, str]


@dataclass
class Tour:
    """Every answer the tour got, and the ids the test checks against the broker."""

    answers: list[Answer] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)  # lease ids revoked through the API
    task_id: str = ""

    def take(self, operation: str, response: Response[Any], status: int, kind: type[T]) -> T:
        """The parsed answer, which must have ``status`` and be a ``kind``."""
        assert response.status_code == status, (
            f"{operation}: {response.status_code}, not {status}: {response.content[:300]!r}"
        )
        parsed = response.parsed
        assert isinstance(parsed, kind), f"{operation}: {type(parsed).__name__}, not {kind}"
        headers = {k.lower(): v for k, v in response.headers.items()}
        self.answers.append(Answer(operation, status, parsed, headers))
        return parsed


def _request(task: str, actions: list[str]) -> CredentialRequest:
    return CredentialRequest(
        issuer="jwt",
        resource=RESOURCE,
        actions=actions,
        task=TaskIn(id=task, purpose="openapi client"),
        ttl=300,
    )


async def tour(
    workload: AuthenticatedClient,
    stranger: AuthenticatedClient,
    resource_server: AuthenticatedClient,
    public: Client,
    subject_token: str,
) -> Tour:
    """Drive every route the way a generated client does. ``workload`` holds a workload's
    identity token, ``stranger`` a token the broker refuses, ``resource_server`` a configured
    client's Basic credentials, ``public`` no credentials; ``subject_token`` is the workload's
    identity token again, for the token exchange."""
    t = Tour(task_id="oas-task-1")

    # Credentials: 201, and its replay under the same Idempotency-Key.
    first = t.take(
        "requestCredential",
        await request_credential.asyncio_detailed(
            client=workload, body=_request(t.task_id, ["read"]), idempotency_key="oas-key-1"
        ),
        201,
        CredentialResponse,
    )
    again = t.take(
        "requestCredential (replay)",
        await request_credential.asyncio_detailed(
            client=workload, body=_request(t.task_id, ["read"]), idempotency_key="oas-key-1"
        ),
        201,
        CredentialResponse,
    )
    assert again.lease_id == first.lease_id
    second = t.take(
        "requestCredential",
        await request_credential.asyncio_detailed(
            client=workload, body=_request(t.task_id, ["write"])
        ),
        201,
        CredentialResponse,
    )

    # Approvals: 202 with Location, get, list, cancel.
    pending = t.take(
        "requestCredential (approval)",
        await request_credential.asyncio_detailed(
            client=workload, body=_request("oas-task-2", ["admin"])
        ),
        202,
        ApprovalOut,
    )
    t.take(
        "getApproval",
        await get_approval.asyncio_detailed(pending.approval_id, client=workload),
        200,
        ApprovalOut,
    )
    listed = t.take(
        "listApprovals", await list_approvals.asyncio_detailed(client=workload), 200, list
    )
    assert all(isinstance(a, ApprovalOut) for a in listed)
    assert pending.approval_id in {a.approval_id for a in listed if isinstance(a, ApprovalOut)}
    cancelled = t.take(
        "cancelApproval",
        await cancel_approval.asyncio_detailed(pending.approval_id, client=workload),
        200,
        ApprovalOut,
    )
    assert cancelled.state == "cancelled"

    # Problems: 403 with reasons, 404, 400 with field errors, 401.
    denied = t.take(
        "requestCredential (denied)",
        await request_credential.asyncio_detailed(
            client=workload, body=_request("oas-task-3", ["delete"])
        ),
        403,
        Problem,
    )
    assert denied.reasons
    t.take(
        "getLease (unknown)",
        await get_lease.asyncio_detailed("no-such-lease", client=workload),
        404,
        Problem,
    )
    invalid = t.take(
        "requestCredential (invalid)",
        await request_credential.asyncio_detailed(client=workload, body=_request("oas-task-4", [])),
        400,
        Problem,
    )
    assert invalid.errors
    t.take(
        "listLeases (refused)", await list_leases.asyncio_detailed(client=stranger), 401, Problem
    )

    # Explain, leases, tasks.
    explained = t.take(
        "explainRequest",
        await explain_request.asyncio_detailed(
            client=workload,
            body=ExplainRequest(issuer="jwt", resource=RESOURCE, actions=["admin"]),
        ),
        200,
        ExplainOut,
    )
    assert explained.decision == "approval_required"
    leases = t.take("listLeases", await list_leases.asyncio_detailed(client=workload), 200, list)
    assert first.lease_id in {le.id for le in leases if isinstance(le, LeaseView)}
    t.take(
        "getLease",
        await get_lease.asyncio_detailed(first.lease_id, client=workload),
        200,
        LeaseView,
    )
    revoked = t.take(
        "revokeLease",
        await revoke_lease.asyncio_detailed(first.lease_id, client=workload),
        200,
        LeaseView,
    )
    t.revoked.append(revoked.id)
    t.take("getTask", await get_task.asyncio_detailed(t.task_id, client=workload), 200, TaskOut)

    # Resource servers: introspection and a usage report.
    facts = t.take(
        "introspectToken",
        await introspect_token.asyncio_detailed(
            client=resource_server, body=IntrospectTokenBody(token=second.credential.secret)
        ),
        200,
        IntrospectionResponse,
    )
    assert facts.active is True
    t.take(
        "reportUsage",
        await report_usage.asyncio_detailed(
            client=workload, body=UsageIn(token=second.credential.secret, resource=RESOURCE)
        ),
        200,
        UsageOut,
    )
    completed = t.take(
        "completeTask",
        await complete_task.asyncio_detailed(t.task_id, client=workload),
        200,
        TaskOut,
    )
    t.revoked.extend(le.id for le in completed.leases)

    # OAuth: token exchange (a form body), invalid_grant, RFC 7009 revocation.
    exchange = ExchangeTokenBody(
        grant_type=ExchangeTokenBodyGrantType.URNIETFPARAMSOAUTHGRANT_TYPETOKEN_EXCHANGE,
        subject_token=subject_token,
        subject_token_type=ExchangeTokenBodySubjectTokenType.URNIETFPARAMSOAUTHTOKEN_TYPEJWT,
        resource=RESOURCE,
        scope="read",
        task_id="oas-task-5",
    )
    token = t.take(
        "exchangeToken",
        await exchange_token.asyncio_detailed(client=public, body=exchange),
        200,
        TokenResponse,
    )
    exchange.subject_token = "not-a-token"
    refused = t.take(
        "exchangeToken (invalid_grant)",
        await exchange_token.asyncio_detailed(client=public, body=exchange),
        400,
        OAuthError,
    )
    assert refused.error == "invalid_grant"
    t.take(
        "revokeToken",
        await revoke_token.asyncio_detailed(
            client=workload,
            body=RevokeTokenBody(
                token=token.access_token, token_type_hint=RevokeTokenBodyTokenTypeHint.ACCESS_TOKEN
            ),
        ),
        200,
        RevocationResponse,
    )
    t.revoked.append(token.lease_id)

    # Revoke-all (with one live lease to revoke).
    t.take(
        "requestCredential",
        await request_credential.asyncio_detailed(
            client=workload, body=_request("oas-task-6", ["read"])
        ),
        201,
        CredentialResponse,
    )
    all_out = t.take(
        "revokeAllLeases",
        await revoke_all_leases.asyncio_detailed(client=workload),
        200,
        RevokeAllOut,
    )
    assert all_out.revoked == 1

    # Public documents and operations.
    t.take(
        "getAuthorizationServerMetadata",
        await get_authorization_server_metadata.asyncio_detailed(client=public),
        200,
        AuthorizationServerMetadata,
    )
    jwks = t.take("getJwks", await get_jwks.asyncio_detailed(client=public), 200, JsonWebKeySet)
    assert jwks.keys
    audit_keys = t.take(
        "getAuditJwks", await get_audit_jwks.asyncio_detailed(client=public), 200, JsonWebKeySet
    )
    assert audit_keys.keys
    t.take("getHealth", await get_health.asyncio_detailed(client=public), 200, Health)
    ready = t.take(
        "getReadiness", await get_readiness.asyncio_detailed(client=public), 200, Readiness
    )
    assert ready.status == "ready"
    t.take(
        "getSsfConfiguration (off)",
        await get_ssf_configuration.asyncio_detailed(client=public),
        404,
        Problem,
    )
    t.take("getSsfJwks (off)", await get_ssf_jwks.asyncio_detailed(client=public), 404, Problem)
    t.take(
        "getIssuerDocument (unknown)",
        await get_issuer_document.asyncio_detailed("jwt", "ca.pem", client=public),
        404,
        Problem,
    )
    return t
