"""Write charts/jit-broker/values.schema.json: the chart-level schema (chart.schema.yaml beside
this file) plus the broker's own config schema (``broker.config.json_schema()``) under
``.config``, less the keys the chart sets itself.

    .venv/bin/python charts/schema/build.py           # write the file
    .venv/bin/python charts/schema/build.py --check   # exit 1 if the file is not current

So a key added to broker/config.py reaches the chart's schema by running this script, and a
key the chart owns (a *_file path, host, port, redis_url, policy_dir) cannot be set in values.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from broker.config import json_schema

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "jit-broker" / "values.schema.json"

#: Keys of the broker's config structs that the chart renders itself (mount paths, listener,
#: Redis URL); a struct whose every key is here is left out entirely.
CHART_OWNED: dict[str, set[str]] = {
    "Settings": {"host", "port", "redis_url", "redis", "shutdown", "policy_dir", "metrics"},
    "ClientSettings": {"secret_file"},
    "SlackSettings": {"bot_token_file", "signing_secret_file"},
    "AuditSettings": {"signing_key_file", "hmac_key_file", "file"},
    "WebhookSinkSettings": {"token_file"},
    "SsfSettings": {"signing_key_file"},
    "SsfReceiverSettings": {"token_file"},
    "MetricsSettings": {"token_file"},
}

DURATION = {
    "type": ["string", "number"],
    "description": "a duration: 200ms, 90s, 15m, 1h30m, 7d, or a number of seconds",
}


def _fix(node: Any) -> Any:
    """Durations as the broker reads them (msgspec describes them as ISO 8601 strings), and
    references into this document's definitions."""
    if isinstance(node, dict):
        if node.get("format") == "duration":
            return dict(DURATION)
        out = {k: _fix(v) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            out["$ref"] = "#/definitions/broker." + ref.removeprefix("#/$defs/")
        return out
    if isinstance(node, list):
        return [_fix(v) for v in node]
    return node


def broker_definitions() -> dict[str, Any]:
    defs: dict[str, Any] = json_schema()["$defs"]
    unknown = set(CHART_OWNED) - set(defs)
    if unknown:
        raise SystemExit(f"broker/config.py has no struct {sorted(unknown)}: update CHART_OWNED")
    out: dict[str, Any] = {}
    for name, schema in defs.items():
        schema = dict(schema)
        owned = CHART_OWNED.get(name, set())
        props = schema.get("properties", {})
        missing = owned - set(props)
        if missing:
            raise SystemExit(f"{name} has no key {sorted(missing)}: update CHART_OWNED")
        schema["properties"] = {k: v for k, v in props.items() if k not in owned}
        schema["required"] = [k for k in schema.get("required", []) if k not in owned]
        schema["additionalProperties"] = False
        out[f"broker.{name}"] = _fix(schema)
    # Only the structs reachable from Settings through keys the values may set (those under a
    # chart-owned key, e.g. MetricsSettings, RedisSettings, ShutdownSettings, are left out).
    reachable: set[str] = set()
    todo = ["broker.Settings"]
    while todo:
        name = todo.pop()
        if name in reachable:
            continue
        reachable.add(name)
        todo += [r.removeprefix("#/definitions/") for r in _refs(out[name])]
    return {k: v for k, v in out.items() if k in reachable}


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def build() -> str:
    schema: dict[str, Any] = yaml.safe_load((HERE / "chart.schema.yaml").read_text())
    schema["definitions"].update(broker_definitions())
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    text = build()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is not current: run python charts/schema/build.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
