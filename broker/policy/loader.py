"""Load a policy directory (or one text) into a :class:`PolicySet`, or list all its problems.

Owns the directory rules: the ``*.yaml`` and ``*.yml`` files directly in the directory (not in
sub-directories), read as UTF-8 in sorted name order, one document per file; a missing or empty
directory is an error. Owns the checks across documents (a grant id ``<owner>/<name>`` is unique
in the whole set) and the policy version. :func:`load_policy_dir` raises the first problem;
:func:`lint_policy_dir` returns every problem, sorted by file and line, for ``jit policy lint``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from broker.errors import PolicyError
from broker.policy.compile import CompileOptions, PolicyDocument, PolicySet, compile_document

__all__ = ["lint_policy_dir", "load_policy_dir", "load_policy_text", "policy_version"]

KnownClaims = Mapping[str, set[str] | None]

_SUFFIXES = (".yaml", ".yml")


def load_policy_dir(
    path: str | Path,
    *,
    known_claims: KnownClaims | None = None,
    issuers: Collection[str] | None = None,
    approvers: Collection[str] | None = None,
    has_default_approvers: bool = True,
) -> PolicySet:
    """Load and compile every policy file in ``path``. Raises the first :class:`PolicyError`."""
    options = CompileOptions(known_claims, issuers, approvers, has_default_approvers)
    policy, errors = _build_dir(Path(path), options)
    if errors or policy is None:
        raise errors[0]
    return policy


def lint_policy_dir(
    path: str | Path,
    *,
    known_claims: KnownClaims | None = None,
    issuers: Collection[str] | None = None,
    approvers: Collection[str] | None = None,
    has_default_approvers: bool = True,
) -> list[PolicyError]:
    """Every problem in the policy directory (empty: it loads), sorted by file and line."""
    options = CompileOptions(known_claims, issuers, approvers, has_default_approvers)
    return _build_dir(Path(path), options)[1]


def load_policy_text(
    text: str,
    *,
    file: str = "<policy>",
    known_claims: KnownClaims | None = None,
    issuers: Collection[str] | None = None,
    approvers: Collection[str] | None = None,
    has_default_approvers: bool = True,
) -> PolicySet:
    """Compile one document given as text (``file`` names it in errors and in the version)."""
    options = CompileOptions(known_claims, issuers, approvers, has_default_approvers)
    document, errors = compile_document(text, file=file, options=options)
    if document is None:
        raise errors[0]
    return PolicySet(
        version=policy_version([(file, text.encode())]), documents=(document,), files=(file,)
    )


def policy_version(files: Sequence[tuple[str, bytes]]) -> str:
    """A short sha256 over the sorted (file name, content) pairs."""
    digest = hashlib.sha256()
    for name, content in sorted(files):
        encoded = name.encode()
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.hexdigest()[:16]


def _build_dir(
    directory: Path, options: CompileOptions
) -> tuple[PolicySet | None, list[PolicyError]]:
    where = str(directory)
    if not directory.exists():
        return None, [PolicyError("policy directory not found", file=where)]
    if not directory.is_dir():
        return None, [PolicyError("not a directory", file=where)]
    try:
        paths = sorted(p for p in directory.iterdir() if p.suffix in _SUFFIXES and not p.is_dir())
    except OSError as exc:
        return None, [PolicyError(f"cannot list the directory: {exc.strerror}", file=where)]
    if not paths:
        return None, [PolicyError("no policy files (*.yaml, *.yml) in the directory", file=where)]

    errors: list[PolicyError] = []
    documents: list[PolicyDocument] = []
    contents: list[tuple[str, bytes]] = []
    for p in paths:
        shown = str(p)
        try:
            raw = p.read_bytes()
            text = raw.decode("utf-8")
        except OSError as exc:
            errors.append(PolicyError(f"cannot read the file: {exc.strerror}", file=shown))
            continue
        except UnicodeDecodeError:
            errors.append(PolicyError("the file is not UTF-8", file=shown))
            continue
        contents.append((p.name, raw))
        document, problems = compile_document(text, file=shown, options=options)
        errors.extend(problems)
        if document is not None:
            documents.append(document)
    errors.extend(_duplicate_grant_ids(documents))
    if errors:
        errors.sort(key=lambda e: (e.file, e.line or 0))
        return None, errors
    return (
        PolicySet(
            version=policy_version(contents),
            documents=tuple(documents),
            files=tuple(str(p) for p in paths),
        ),
        [],
    )


def _duplicate_grant_ids(documents: Sequence[PolicyDocument]) -> list[PolicyError]:
    """Two documents of the same owner may not both name a grant the same."""
    first: dict[str, str] = {}
    errors: list[PolicyError] = []
    for document in documents:
        for grant in document.grants:
            where = f"{grant.file}:{grant.line}"
            if grant.id in first:
                errors.append(
                    PolicyError(
                        f"grant id {grant.id!r} is already defined at {first[grant.id]}",
                        file=grant.file,
                        line=grant.line,
                    )
                )
            else:
                first[grant.id] = where
    return errors
