"""The ``ssh`` issuer type: short-lived OpenSSH user certificates signed by a broker-held CA.

Registered as the ``ssh`` entry point in the ``jit_broker.issuers`` group. See
docs/issuers/ssh.md for configuration, the scope model and how hosts enforce revocation.
"""

from __future__ import annotations

from issuers.ssh.config import SSHConfig
from issuers.ssh.issuer import SSHIssuer, serial_for

__all__ = ["SSHConfig", "SSHIssuer", "serial_for"]
