"""broker.client: the SDK a workload imports to get credentials from a jit-broker.

It talks HTTP only and imports nothing of the server (only the contract modules
``broker.types``, ``broker.errors``, ``broker.clock``, ``broker.urls`` and the pure
``broker.retry``): importing it starts nothing. See docs/clients.md.

::

    from broker.client import Client

    async with Client() as client, client.task("deploy-7", purpose="deploy orders") as task:
        cred = await task.credential(issuer="pg-orders", resource="postgresql://db/orders",
                                     actions=["read"], ttl="10m")
        connect(password=cred.secret.reveal(), **cred.metadata)
    # the task is completed here: every lease of it is revoked
"""

from broker.client.client import Client, LeaseContext, StatusCallback, Task
from broker.client.errors import (
    ApprovalDenied,
    ApprovalExpired,
    ApprovalRequired,
    ApprovalTimeout,
    BrokerUnavailable,
    ClientError,
    Conflict,
    Denied,
    IdempotencyKeyReused,
    IdentityUnavailable,
    InvalidRequest,
    IssuerFailed,
    NotFound,
    ProtocolError,
    Unauthenticated,
)
from broker.client.identity import (
    GitHubActions,
    GitLabCI,
    IdentitySource,
    KubernetesToken,
    StaticToken,
    TokenFile,
    detect,
)
from broker.client.models import (
    Approval,
    Credential,
    Explanation,
    Exports,
    ExportSource,
    LeaseInfo,
    TaskInfo,
)
from broker.client.sync import SyncClient, SyncTask
from broker.client.transport import RetryPolicy
from broker.types import Secret

__all__ = [
    "Approval",
    "ApprovalDenied",
    "ApprovalExpired",
    "ApprovalRequired",
    "ApprovalTimeout",
    "BrokerUnavailable",
    "Client",
    "ClientError",
    "Conflict",
    "Credential",
    "Denied",
    "Explanation",
    "ExportSource",
    "Exports",
    "GitHubActions",
    "GitLabCI",
    "IdempotencyKeyReused",
    "IdentitySource",
    "IdentityUnavailable",
    "InvalidRequest",
    "IssuerFailed",
    "KubernetesToken",
    "LeaseContext",
    "LeaseInfo",
    "NotFound",
    "ProtocolError",
    "RetryPolicy",
    "Secret",
    "StaticToken",
    "StatusCallback",
    "SyncClient",
    "SyncTask",
    "Task",
    "TaskInfo",
    "TokenFile",
    "Unauthenticated",
    "detect",
]
