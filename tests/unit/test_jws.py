"""The one JWS registry (broker.jws): exactly the allow-listed algorithms, EdDSA without joserfc's
deprecation warning (ADR 0002), header strictness and size limits as parameters."""

from __future__ import annotations

import warnings

import pytest
from joserfc import jws
from joserfc.errors import ExceededSizeError, UnsupportedAlgorithmError, UnsupportedHeaderError
from joserfc.jwk import ECKey, OKPKey
from joserfc.jws import JWSRegistry

from broker.jws import JWSAllowList

ED = OKPKey.generate_key("Ed25519")
EC = ECKey.generate_key("P-256")


def sign(alg: str, key: OKPKey | ECKey, payload: bytes = b"{}", **header: object) -> str:
    return jws.serialize_compact(
        {"alg": alg, **header}, payload, key, registry=JWSAllowList([alg], strict_header=False)
    )


def test_joserfc_itself_warns_about_eddsa_which_is_why_the_registry_exists() -> None:
    # When this fails, joserfc no longer warns: ADR 0002's workaround can go.
    with pytest.warns(Warning, match="EdDSA"):
        JWSRegistry(algorithms=["EdDSA"]).get_alg("EdDSA")


def test_eddsa_signs_and_verifies_without_a_warning() -> None:
    registry = JWSAllowList(["EdDSA"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        token = jws.serialize_compact({"alg": "EdDSA"}, b'{"a":1}', ED, registry=registry)
        obj = jws.deserialize_compact(token, ED, registry=registry)
    assert obj.payload == b'{"a":1}'
    assert [str(w.message) for w in caught] == []


def test_an_algorithm_outside_the_allow_list_is_refused() -> None:
    token = sign("ES256", EC)
    with pytest.raises(UnsupportedAlgorithmError, match="not allowed"):
        jws.deserialize_compact(token, EC, registry=JWSAllowList(["EdDSA"]))
    assert jws.deserialize_compact(token, EC, registry=JWSAllowList(["ES256"])).payload == b"{}"


def test_an_empty_allow_list_parses_but_never_selects_an_algorithm() -> None:
    # joserfc's own registry would fall back to its "recommended" algorithms here.
    registry = JWSAllowList([], strict_header=False)
    token = sign("ES256", EC)
    assert jws.extract_compact(token.encode(), registry=registry).headers()["alg"] == "ES256"
    for alg in ("ES256", "RS256", "EdDSA"):
        with pytest.raises(UnsupportedAlgorithmError):
            registry.get_alg(alg)


@pytest.mark.parametrize(
    ("algorithms", "message"),
    [
        pytest.param(["none"], "never allowed", id="none is refused at construction"),
        pytest.param(["EdDSA", "XS512"], "XS512", id="an unknown name is refused"),
    ],
)
def test_a_bad_allow_list_is_refused(algorithms: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JWSAllowList(algorithms)


def test_a_payload_over_the_limit_is_refused_before_verification() -> None:
    token = sign("EdDSA", ED, b"x" * 600)
    small = JWSAllowList(["EdDSA"], max_payload=512)
    with pytest.raises(ExceededSizeError, match="Payload"):
        jws.deserialize_compact(token, ED, registry=small)
    big = JWSAllowList(["EdDSA"], max_payload=1024)
    assert jws.deserialize_compact(token, ED, registry=big).payload == b"x" * 600


def test_a_header_over_the_limit_is_refused() -> None:
    token = sign("EdDSA", ED, kid="k" * 300)
    with pytest.raises(ExceededSizeError, match="Header"):
        jws.deserialize_compact(token, ED, registry=JWSAllowList(["EdDSA"], max_header=128))


def test_unknown_header_parameters_are_refused_only_when_strict() -> None:
    token = sign("EdDSA", ED, x_custom="1")
    with pytest.raises(UnsupportedHeaderError):
        jws.deserialize_compact(token, ED, registry=JWSAllowList(["EdDSA"]))
    lenient = JWSAllowList(["EdDSA"], strict_header=False)
    assert jws.deserialize_compact(token, ED, registry=lenient).headers()["x_custom"] == "1"
