"""OpenSSH key revocation lists (KRL), written in pure Python.

Owns the binary format of ``PROTOCOL.krl`` (OpenSSH), for the one thing this issuer needs:
revoking certificates of one CA by serial number. A KRL is::

    uint64  KRL_MAGIC (0x5353484b524c0a00, "SSHKRL\\n\\0")
    uint32  KRL_FORMAT_VERSION (1)
    uint64  krl_version         increases with each change
    uint64  generated_date      seconds since the epoch
    uint64  flags               none defined: 0
    string  reserved            empty
    string  comment
    then sections: byte section_type, string section_data

with one ``KRL_SECTION_CERTIFICATES`` section (``string ca_key`` — the CA's public key blob —
``string reserved``, then sub-sections) holding one ``KRL_SECTION_CERT_SERIAL_LIST`` sub-section
(``uint64`` serials). ``string`` is a uint32 big-endian length and the bytes. An empty serial set
gives a KRL with no sections, which revokes nothing. sshd reads the file named by
``RevokedKeys`` on every authentication; ``ssh-keygen -Q -f <krl> <cert>`` checks one.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final

__all__ = [
    "KRL_FORMAT_VERSION",
    "KRL_MAGIC",
    "KRL_SECTION_CERTIFICATES",
    "KRL_SECTION_CERT_SERIAL_LIST",
    "MAX_SERIAL",
    "build_krl",
]

KRL_MAGIC: Final = 0x5353484B524C0A00
KRL_FORMAT_VERSION: Final = 1
KRL_SECTION_CERTIFICATES: Final = 1
KRL_SECTION_CERT_SERIAL_LIST: Final = 0x20
MAX_SERIAL: Final = 2**64 - 1


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def build_krl(
    ca_public_blob: bytes,
    serials: Iterable[int],
    *,
    version: int,
    generated: int,
    comment: str = "",
) -> bytes:
    """A KRL revoking ``serials`` of certificates signed by the CA whose public key blob (SSH
    wire format) is ``ca_public_blob``. Serials must be in 1..2**64-1 (OpenSSH cannot revoke
    serial 0); they are written sorted and without duplicates."""
    if not ca_public_blob:
        raise ValueError("the CA key blob is required (an empty one would mean every CA)")
    ordered = sorted(set(serials))
    if ordered and (ordered[0] < 1 or ordered[-1] > MAX_SERIAL):
        raise ValueError("serials must be in 1..2**64-1")
    header = (
        struct.pack(">QIQQQ", KRL_MAGIC, KRL_FORMAT_VERSION, version, max(generated, 0), 0)
        + _string(b"")
        + _string(comment.encode())
    )
    if not ordered:
        return header
    serial_list = b"".join(struct.pack(">Q", serial) for serial in ordered)
    certificates = (
        _string(ca_public_blob)
        + _string(b"")  # reserved
        + bytes([KRL_SECTION_CERT_SERIAL_LIST])
        + _string(serial_list)
    )
    return header + bytes([KRL_SECTION_CERTIFICATES]) + _string(certificates)
