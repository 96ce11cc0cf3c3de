"""The ``aws`` issuer type: AWS STS AssumeRole sessions narrowed to one lease's scope.

Registered as the ``aws`` entry point in the ``jit_broker.issuers`` group (needs the ``aws``
extra: boto3). See docs/issuers/aws.md for configuration, the scope model and the limits of an
expiry-only backend.
"""

from __future__ import annotations

from issuers.aws.config import AWSConfig, ResourceConfig
from issuers.aws.issuer import AWSIssuer

__all__ = ["AWSConfig", "AWSIssuer", "ResourceConfig"]
