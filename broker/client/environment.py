"""A credential's exports made real: environment variables, and files with mode 0600.

The broker sends, with each credential of an issuer that defines them (ADR 0031), *which part*
of the credential goes where (``Exports``): the secret, one member of a JSON secret, a metadata
entry, a literal, the private key the SDK generated, a public document of the issuer, or the
path of one of the files. This module resolves those names against the :class:`Credential`
held here and writes the files: nothing secret is ever on a command line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from broker.client.errors import ProtocolError
from broker.client.models import Credential, ExportSource

__all__ = ["materialise", "write_private"]

Fetch = Callable[[str, str], Awaitable[bytes]]


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (never follow a planted symlink, never reuse a file)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


async def _resolve(
    cred: Credential, where: str, source: ExportSource, files: dict[str, Path], fetch: Fetch
) -> bytes | None:
    """The bytes a source names; None for a private key the SDK did not generate (the workload
    brought its own key: that export is left out)."""
    if source.secret:
        return cred.secret.reveal().encode()
    if source.member is not None:
        try:
            value = json.loads(cred.secret.reveal()).get(source.member)
        except (ValueError, AttributeError):
            value = None
        if not isinstance(value, str):
            raise ProtocolError(f"{cred.issuer}: export {where} names an absent secret member")
        return value.encode()
    if source.metadata is not None:
        if source.metadata not in cred.metadata:
            raise ProtocolError(f"{cred.issuer}: export {where} names absent metadata")
        return cred.metadata[source.metadata].encode()
    if source.value is not None:
        return source.value.encode()
    if source.file is not None:
        if source.file not in files:
            return None  # that file was left out (a private key not generated here)
        return str(files[source.file]).encode()
    if source.private_key:
        return None if cred.private_key is None else cred.private_key.reveal().encode()
    if source.document is not None:
        return await fetch(cred.issuer, source.document)
    raise ProtocolError(f"{cred.issuer}: export {where} has no source this SDK knows")


async def materialise(
    cred: Credential, directory: Path, fetch: Fetch, *, prefix: str = ""
) -> dict[str, str]:
    """Write ``cred``'s exported files into ``directory`` (created 0700 if absent; each file
    0600) and return its environment variables (names prefixed with ``prefix``). A credential
    without exports gets ``JIT_CREDENTIAL`` (the secret), so every credential can be used."""
    exports = cred.exports
    if exports is None or not (exports.env or exports.files):
        return {f"{prefix}JIT_CREDENTIAL": cred.secret.reveal()}
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # noqa: ASYNC240 (local, tiny)
    os.chmod(directory, 0o700)
    files: dict[str, Path] = {}
    for name, source in exports.files.items():
        if "/" in name or name.startswith(".") or name in ("", ".."):
            raise ProtocolError(f"{cred.issuer}: export file name {name!r} is not a plain name")
        data = await _resolve(cred, name, source, files, fetch)
        if data is None:
            continue
        path = directory / name
        write_private(path, data)
        files[name] = path
    env: dict[str, str] = {}
    for name, source in exports.env.items():
        data = await _resolve(cred, name, source, files, fetch)
        if data is not None:
            env[prefix + name] = data.decode()
    return env
