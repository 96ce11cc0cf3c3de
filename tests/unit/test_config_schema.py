"""`jit config schema` describes what the broker accepts: ``issuers.<name>`` is a oneOf over the
installed issuer types, each with its own config schema. Checked with a JSON Schema validator
against good and bad configs, and against the examples in docs/issuers/*.md."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
import yaml

from broker.clock import parse_duration
from broker.config import json_schema
from broker.decoding import decode
from broker.registry import issuer_config_types

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "issuers"
JIT = str(Path(sys.executable).parent / "jit")


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json_schema(issuer_config_types())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def doc_examples(name: str) -> list[dict[str, Any]]:
    """The ``issuers:`` entries of every YAML block in docs/issuers/<name>.md."""
    text = (DOCS / f"{name}.md").read_text()
    found = []
    for block in re.findall(r"^```yaml\n(.*?)^```", text, re.M | re.S):
        data = yaml.safe_load(block)
        if isinstance(data, dict) and "issuers" in data:
            found.extend(data["issuers"].values())
    return found


BUILT_IN = ["aws", "github", "jwt", "postgres", "redis", "ssh", "x509"]
GOOD: dict[str, Any] = {
    "port": 8300,
    "reaper": {"poll_interval": "250ms", "retention": 3600},
    "issuers": {
        "jwt": {"type": "jwt", "config": {"keys_dir": "/k", "max_ttl": "1h30m"}},
        "plain-jwt": {"type": "jwt"},
        "pg": {
            "type": "postgres",
            "config": {
                "dsn": "host=db user=admin",
                "resources": {"postgresql://db/orders": {"database": "o", "actions": {"r": ["g"]}}},
            },
        },
    },
}


def with_issuer(entry: dict[str, Any]) -> dict[str, Any]:
    return {"issuers": {"x": entry}}


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(with_issuer({"type": "doesnotexist"}), id="an unknown issuer type"),
        pytest.param(
            with_issuer({"type": "jwt", "config": {"max_tll": "1h"}}), id="an unknown issuer key"
        ),
        pytest.param(
            with_issuer({"type": "jwt", "config": {"max_ttl": "soon"}}),
            id="a bad duration in an issuer config",
        ),
        pytest.param(
            with_issuer({"type": "postgres", "config": {"resources": {}}}),
            id="an issuer config without a required key",
        ),
        pytest.param(with_issuer({"type": "jwt", "confg": {}}), id="a typo beside type"),
        pytest.param({"reaper": {"poll_interval": "1 minute"}}, id="a bad broker duration"),
        pytest.param({"redis_ur1": "redis://x"}, id="an unknown top-level key"),
    ],
)
def test_the_schema_refuses_a_bad_config(
    validator: jsonschema.Draft202012Validator, config: dict[str, Any]
) -> None:
    assert list(validator.iter_errors(config)), config


def test_the_schema_accepts_a_good_config(validator: jsonschema.Draft202012Validator) -> None:
    validator.validate(GOOD)


def test_each_issuer_entry_is_a_one_of_over_the_installed_types() -> None:
    schema = json_schema(issuer_config_types())
    variants = schema["$defs"]["Settings"]["properties"]["issuers"]["additionalProperties"]["oneOf"]
    consts = [v["properties"]["type"]["const"] for v in variants]
    assert set(BUILT_IN) <= set(consts)
    assert len(consts) == len(set(consts))


@pytest.mark.parametrize("name", BUILT_IN)
def test_the_documented_example_decodes_and_round_trips(
    name: str, validator: jsonschema.Draft202012Validator
) -> None:
    config_type = issuer_config_types()[name]
    assert config_type is not None
    examples = doc_examples(name)
    assert examples, f"docs/issuers/{name}.md shows no issuers: example"
    for entry in examples:
        assert entry["type"] == name
        validator.validate({"issuers": {"example": entry}})
        decoded = decode(entry["config"], config_type)
        again = decode(msgspec.to_builtins(decoded, builtin_types=(timedelta,)), config_type)
        assert again == decoded
        for key, value in entry["config"].items():  # each documented value is the one read
            field = getattr(decoded, key)
            if isinstance(field, timedelta):
                assert field == parse_duration(value), key
            elif isinstance(value, str | int | bool):
                assert field == value, key


def test_jit_config_schema_prints_the_same_schema() -> None:
    out = subprocess.run(
        [JIT, "config", "schema"], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == json.loads(json.dumps(json_schema(issuer_config_types())))
