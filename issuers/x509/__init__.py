"""The ``x509`` issuer type: short-lived X.509 client certificates for mTLS, signed by a CA the
broker holds, with a CRL the broker publishes.

Registered as the ``x509`` entry point in the ``jit_broker.issuers`` group. See
docs/issuers/x509.md for configuration, the certificate profile, the scope model and
revocation.
"""

from __future__ import annotations

from issuers.x509.issuer import PARAMS, ResourceConfig, X509Config, X509Issuer
from issuers.x509.profile import SCOPE_OID, CertificateScope, read_scope, spiffe_id

__all__ = [
    "PARAMS",
    "SCOPE_OID",
    "CertificateScope",
    "ResourceConfig",
    "X509Config",
    "X509Issuer",
    "read_scope",
    "spiffe_id",
]
