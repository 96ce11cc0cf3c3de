"""The JWT issuer's key directory: generate (rotate), list, prune, and the reloading KeyRing."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.errors import ConfigError
from broker.testing import FakeClock
from issuers.jwt.keys import (
    RELOAD_INTERVAL,
    KeyInfo,
    KeyRing,
    generate_key,
    list_keys,
    prune_keys,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint_of(pem: bytes) -> str:
    """RFC 7638, computed here without joserfc: required members, sorted, no whitespace."""
    key = serialization.load_pem_private_key(pem, password=None)
    if isinstance(key, Ed25519PrivateKey):
        x = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        members = {"crv": "Ed25519", "kty": "OKP", "x": b64(x)}
    else:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        nums = key.public_key().public_numbers()
        members = {
            "crv": "P-256",
            "kty": "EC",
            "x": b64(nums.x.to_bytes(32, "big")),
            "y": b64(nums.y.to_bytes(32, "big")),
        }
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    return b64(hashlib.sha256(canonical).digest())


def pem_of(key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize(
    ("algorithm", "key_type"),
    [("EdDSA", Ed25519PrivateKey), ("ES256", ec.EllipticCurvePrivateKey)],
)
def test_generate_key_writes_a_0600_pkcs8_file_named_after_its_time_and_thumbprint(
    tmp_path: Path, algorithm: str, key_type: type
) -> None:
    info = generate_key(tmp_path, algorithm, T0 + timedelta(microseconds=700))
    created = int(T0.timestamp())
    assert info.path == tmp_path / f"{created}-{info.kid}.pem"
    assert stat.S_IMODE(info.path.stat().st_mode) == 0o600
    pem = info.path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert isinstance(serialization.load_pem_private_key(pem, password=None), key_type)
    assert info.kid == thumbprint_of(pem)
    assert info == KeyInfo(
        kid=info.kid,
        algorithm=algorithm,
        created_at=T0,
        path=info.path,
        retired_at=None,
        active=True,
    )
    assert [p.name for p in tmp_path.iterdir()] == [info.path.name]  # no temporary file left


def test_generate_key_creates_the_directory_and_refuses_unknown_algorithms(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match="RS256"):
        generate_key(tmp_path / "k", "RS256", T0)
    info = generate_key(tmp_path / "new" / "keys", "EdDSA", T0)
    assert info.path.exists()


def test_a_key_generated_in_the_same_second_is_still_the_newest(tmp_path: Path) -> None:
    a = generate_key(tmp_path, "EdDSA", T0)
    b = generate_key(tmp_path, "EdDSA", T0)
    c = generate_key(tmp_path, "EdDSA", T0 - timedelta(hours=1))  # a clock that went back
    assert [a.created_at, b.created_at, c.created_at] == [
        T0,
        T0 + timedelta(seconds=1),
        T0 + timedelta(seconds=2),
    ]
    assert [k.kid for k in list_keys(tmp_path)] == [a.kid, b.kid, c.kid]
    assert [k.active for k in list_keys(tmp_path)] == [False, False, True]


def test_list_keys_shows_retirement_and_the_active_key(tmp_path: Path) -> None:
    a = generate_key(tmp_path, "EdDSA", T0)
    b = generate_key(tmp_path, "EdDSA", T0 + timedelta(days=30))
    c = generate_key(tmp_path, "EdDSA", T0 + timedelta(days=60))
    listed = list_keys(tmp_path)
    assert [(k.kid, k.retired_at, k.active) for k in listed] == [
        (a.kid, b.created_at, False),
        (b.kid, c.created_at, False),
        (c.kid, None, True),
    ]
    assert listed[-1] == c


def test_prune_removes_a_key_only_after_max_token_lifetime_past_its_retirement(
    tmp_path: Path,
) -> None:
    a = generate_key(tmp_path, "EdDSA", T0)
    b = generate_key(tmp_path, "EdDSA", T0 + timedelta(hours=2))
    life = timedelta(hours=1)
    retired = b.created_at
    assert prune_keys(tmp_path, max_token_lifetime=life, now=retired) == []
    assert prune_keys(tmp_path, max_token_lifetime=life, now=retired + life) == []
    assert a.path.exists()
    removed = prune_keys(
        tmp_path, max_token_lifetime=life, now=retired + life + timedelta(seconds=1)
    )
    assert [k.kid for k in removed] == [a.kid]
    assert not a.path.exists()
    assert [k.kid for k in list_keys(tmp_path)] == [b.kid]


def test_prune_never_removes_the_active_key(tmp_path: Path) -> None:
    only = generate_key(tmp_path, "EdDSA", T0)
    assert prune_keys(tmp_path, max_token_lifetime=timedelta(0), now=T0 + timedelta(days=999)) == []
    assert only.path.exists()
    newer = generate_key(tmp_path, "EdDSA", T0 + timedelta(days=1))
    removed = prune_keys(tmp_path, max_token_lifetime=timedelta(0), now=T0 + timedelta(days=999))
    assert [k.kid for k in removed] == [only.kid]
    assert [k.kid for k in list_keys(tmp_path)] == [newer.kid]


def test_prune_refuses_a_negative_lifetime(tmp_path: Path) -> None:
    generate_key(tmp_path, "EdDSA", T0)
    with pytest.raises(ValueError, match="negative"):
        prune_keys(tmp_path, max_token_lifetime=timedelta(seconds=-1), now=T0)


def test_listing_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        list_keys(tmp_path / "nope")


def test_hidden_and_non_pem_files_are_ignored(tmp_path: Path) -> None:
    info = generate_key(tmp_path, "EdDSA", T0)
    (tmp_path / ".1893456000-abc.pem.tmp").write_text("half a key")
    (tmp_path / "README").write_text("keys for the broker")
    (tmp_path / "..data").mkdir()  # what a Kubernetes secret volume holds
    assert [k.kid for k in list_keys(tmp_path)] == [info.kid]


@pytest.mark.parametrize("name", ["key.pem", "1893456000.pem", "x-1893456000-abc.pem"])
def test_a_misnamed_pem_file_is_an_error_not_silently_skipped(tmp_path: Path, name: str) -> None:
    info = generate_key(tmp_path, "EdDSA", T0)
    (tmp_path / name).write_bytes(info.path.read_bytes())
    with pytest.raises(ConfigError, match=r"<created_unix>-<kid>\.pem"):
        list_keys(tmp_path)


def test_a_file_whose_name_does_not_match_its_thumbprint_is_refused(tmp_path: Path) -> None:
    info = generate_key(tmp_path, "EdDSA", T0)
    info.path.rename(tmp_path / f"{int(T0.timestamp())}-{'A' * 43}.pem")
    with pytest.raises(ConfigError, match="thumbprint"):
        list_keys(tmp_path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        pytest.param(
            lambda: pem_of(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "unsupported key type",
            id="an RSA key",
        ),
        pytest.param(
            lambda: pem_of(ec.generate_private_key(ec.SECP384R1())),
            "unsupported key type",
            id="a P-384 key",
        ),
        pytest.param(
            lambda: Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"passphrase"),
            ),
            "not an unencrypted PEM private key",
            id="an encrypted key",
        ),
        pytest.param(lambda: b"not a key at all", "not an unencrypted PEM", id="garbage"),
    ],
)
def test_unusable_key_files_are_config_errors_that_do_not_show_the_content(
    tmp_path: Path, content: object, match: str
) -> None:
    assert callable(content)
    data: bytes = content()
    path = tmp_path / f"{int(T0.timestamp())}-{'A' * 43}.pem"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=match) as err:
        list_keys(tmp_path)
    assert str(path) in str(err.value)
    lines = [ln for ln in data.decode(errors="replace").splitlines() if not ln.startswith("-")]
    assert lines
    assert not [ln for ln in lines if ln in str(err.value)]
    assert err.value.__cause__ is None
    assert err.value.__context__ is None or err.value.__suppress_context__


def test_no_private_key_material_in_reprs_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock(T0)
    info = generate_key(tmp_path, "EdDSA", T0)
    ring = KeyRing.load(tmp_path, algorithm="EdDSA", clock=clock)
    private = str(ring.signing.private.as_dict(private=True)["d"])
    body = b"".join(info.path.read_bytes().splitlines()[1:-1]).decode()
    for text in (repr(ring), repr(ring.signing), repr(info), str(ring.jwks()), caplog.text):
        assert private not in text
        assert body not in text
    assert all("d" not in jwk for jwk in ring.jwks()["keys"])


def test_a_group_readable_key_file_is_loaded_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    info = generate_key(tmp_path, "EdDSA", T0)
    os.chmod(info.path, 0o644)
    ring = KeyRing.load(tmp_path, algorithm="EdDSA", clock=FakeClock(T0))
    assert ring.signing.kid == info.kid
    assert "should be 0600" in caplog.text


# -- KeyRing -------------------------------------------------------------------------------


def test_the_ring_signs_with_the_newest_key_and_verifies_with_all(tmp_path: Path) -> None:
    a = generate_key(tmp_path, "ES256", T0)
    b = generate_key(tmp_path, "ES256", T0 + timedelta(days=1))
    ring = KeyRing.load(tmp_path, algorithm="ES256", clock=FakeClock(T0))
    assert ring.signing.kid == b.kid
    assert [k.kid for k in ring.keys] == [a.kid, b.kid]
    assert ring.get(a.kid) is not None
    assert ring.get("nope") is None
    assert [(j["kid"], j["alg"], j["use"], j["kty"]) for j in ring.jwks()["keys"]] == [
        (a.kid, "ES256", "sig", "EC"),
        (b.kid, "ES256", "sig", "EC"),
    ]


def test_loading_an_empty_or_missing_directory_says_how_to_make_a_key(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    with pytest.raises(ConfigError, match=r"jit keys rotate --dir"):
        KeyRing.load(tmp_path, algorithm="EdDSA", clock=clock)
    with pytest.raises(ConfigError, match=r"jit keys rotate --dir"):
        KeyRing.load(tmp_path / "missing", algorithm="EdDSA", clock=clock)


def test_a_key_of_another_algorithm_is_refused(tmp_path: Path) -> None:
    generate_key(tmp_path, "EdDSA", T0)
    generate_key(tmp_path, "ES256", T0 + timedelta(seconds=5))
    with pytest.raises(ConfigError, match="ES256 but the issuer's algorithm is EdDSA"):
        KeyRing.load(tmp_path, algorithm="EdDSA", clock=FakeClock(T0))


def test_the_ring_reloads_a_changed_directory_at_most_once_per_interval(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    a = generate_key(tmp_path, "EdDSA", T0)
    ring = KeyRing.load(tmp_path, algorithm="EdDSA", clock=clock)
    b = generate_key(tmp_path, "EdDSA", T0 + timedelta(seconds=1))
    assert ring.refresh() is False  # no time has passed: no look at the directory
    clock.advance(RELOAD_INTERVAL / 2)
    assert ring.refresh() is False
    assert ring.signing.kid == a.kid
    clock.advance(RELOAD_INTERVAL / 2)
    assert ring.refresh() is True
    assert ring.signing.kid == b.kid
    assert [k.kid for k in ring.keys] == [a.kid, b.kid]
    clock.advance(RELOAD_INTERVAL)
    assert ring.refresh() is False  # unchanged


def test_a_directory_that_breaks_never_replaces_a_good_ring(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(T0)
    a = generate_key(tmp_path, "EdDSA", T0)
    ring = KeyRing.load(tmp_path, algorithm="EdDSA", clock=clock)
    stray = tmp_path / "stray.pem"
    stray.write_text("junk")
    clock.advance(RELOAD_INTERVAL)
    assert ring.refresh() is False
    assert ring.signing.kid == a.kid
    assert ring.error is not None
    assert "stray.pem" in ring.error
    assert "still signing with" in caplog.text
    stray.unlink()
    clock.advance(RELOAD_INTERVAL)
    ring.refresh()
    assert ring.error is None
    a.path.unlink()  # every key removed
    clock.advance(RELOAD_INTERVAL)
    assert ring.refresh() is False
    assert ring.signing.kid == a.kid
    assert ring.error is not None
    assert "holds no keys" in ring.error


def test_a_key_of_another_algorithm_added_at_runtime_is_not_used(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    a = generate_key(tmp_path, "EdDSA", T0)
    ring = KeyRing.load(tmp_path, algorithm="EdDSA", clock=clock)
    generate_key(tmp_path, "ES256", T0 + timedelta(seconds=1))
    clock.advance(RELOAD_INTERVAL)
    ring.refresh()
    assert ring.signing.kid == a.kid
    assert ring.error is not None
    assert "algorithm" in ring.error


def test_a_generated_ring_lives_in_memory_and_never_reloads(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    ring = KeyRing.generate("ES256", clock=clock)
    assert ring.directory is None
    assert ring.signing.algorithm == "ES256"
    assert ring.signing.created_at == T0
    clock.advance(10)
    assert ring.refresh() is False
    assert len(ring.keys) == 1
    with pytest.raises(ConfigError):
        KeyRing.generate("HS256", clock=clock)
