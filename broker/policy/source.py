"""Policy YAML → plain Python values, with the 1-based line of every value.

Owns the reading of one policy file's text. It composes the YAML node tree (``yaml.compose``,
so every node keeps its position) and converts it itself, strictly:

- one document per file; an empty file is an error;
- scalars follow the YAML 1.2 core schema, not YAML 1.1: only ``true``/``false`` are booleans
  (``yes``, ``no``, ``on``, ``off`` stay strings), only decimal, ``0o`` octal and ``0x`` hex
  digits are integers (``1_000`` and ``1:30`` stay strings), dates stay strings;
- a key repeated in one mapping is an error (PyYAML would silently keep the last one);
- mapping keys must be scalars; unknown tags (``!foo``, ``!!set``, ``!!binary``) are errors;
- aliases are expanded, a recursive alias is an error, and a file may hold at most
  :data:`MAX_VALUES` values after expansion.

:class:`ParsedYaml` maps every value's path (``("grants", 0, "actions", 1)``) to its line; a
mapping entry's path maps to the line of its key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from broker.errors import PolicyError

__all__ = ["MAX_VALUES", "ParsedYaml", "YamlPath", "parse_yaml", "show_path"]

#: A value's position in a document: mapping keys and sequence indexes from the root.
YamlPath = tuple[str | int, ...]

#: The most values one policy file may hold (after aliases are expanded).
MAX_VALUES = 10_000

_TAG = "tag:yaml.org,2002:"
_INT_DEC = re.compile(r"^[-+]?[0-9]+$")
_INT_OCT = re.compile(r"^0o[0-7]+$")
_INT_HEX = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_FLOAT_SPECIAL = {
    ".inf": float("inf"),
    "+.inf": float("inf"),
    "-.inf": float("-inf"),
    ".nan": float("nan"),
}


@dataclass(frozen=True, slots=True)
class ParsedYaml:
    """A converted document and the line of each of its values."""

    value: Any
    lines: Mapping[YamlPath, int]

    def line_of(self, path: YamlPath) -> int:
        """The line of ``path``, or of its nearest enclosing value that has one."""
        for n in range(len(path), -1, -1):
            line = self.lines.get(path[:n])
            if line is not None:
                return line
        return 1


def show_path(path: YamlPath) -> str:
    """``("grants", 0, "actions")`` → ``grants[0].actions``; the root is ``(document)``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(document)"


def parse_yaml(text: str, *, file: str) -> ParsedYaml:
    """Parse one policy file. Raises :class:`PolicyError` with the line of the problem."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "unreadable"
        if "another document" in problem:
            problem = "a policy file holds one document (found another after ---)"
        raise PolicyError(
            f"invalid YAML: {problem}", file=file, line=mark.line + 1 if mark else None
        ) from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"invalid YAML: {exc}", file=file) from None
    if root is None:
        raise PolicyError("the file holds no policy document", file=file, line=1)
    converter = _Converter(file)
    value = converter.convert(root, ())
    return ParsedYaml(value=value, lines=converter.lines)


class _Converter:
    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[YamlPath, int] = {}
        self.count = 0
        self.open: set[int] = set()  # ids of the collection nodes being converted (for cycles)

    def fail(self, node: yaml.Node, reason: str) -> PolicyError:
        return PolicyError(reason, file=self.file, line=node.start_mark.line + 1)

    def convert(self, node: yaml.Node, path: YamlPath) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise self.fail(node, f"document too large (more than {MAX_VALUES} values)")
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node)
        if id(node) in self.open:
            raise self.fail(node, "recursive YAML alias")
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _TAG + "seq":
                    raise self.fail(node, f"unsupported YAML tag {node.tag}")
                return [self.convert(item, (*path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode):
                if node.tag != _TAG + "map":
                    raise self.fail(node, f"unsupported YAML tag {node.tag}")
                return self.mapping(node, path)
            raise self.fail(node, "unsupported YAML node")
        finally:
            self.open.discard(id(node))

    def mapping(self, node: yaml.MappingNode, path: YamlPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.fail(key_node, "mapping keys must be plain strings")
            key = str(key_node.value)
            if key in out:
                raise self.fail(key_node, f"duplicate key {key!r}")
            self.lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = self.convert(value_node, (*path, key))
        return out

    def scalar(self, node: yaml.ScalarNode) -> Any:
        tag, text = node.tag, str(node.value)
        if not tag.startswith(_TAG):
            raise self.fail(node, f"unsupported YAML tag {tag}")
        kind = tag.removeprefix(_TAG)
        if kind == "null":
            return None if text in ("", "~", "null", "Null", "NULL") else text
        if kind == "bool":
            if text in ("true", "True", "TRUE"):
                return True
            if text in ("false", "False", "FALSE"):
                return False
            return text
        if kind == "int":
            if _INT_DEC.match(text):
                return int(text)
            if _INT_OCT.match(text):
                return int(text[2:], 8)
            if _INT_HEX.match(text):
                return int(text[2:], 16)
            return text
        if kind == "float":
            if text.lower() in _FLOAT_SPECIAL:
                return _FLOAT_SPECIAL[text.lower()]
            return float(text) if _FLOAT.match(text) else text
        if kind in ("str", "timestamp", "merge", "value"):
            return text
        raise self.fail(node, f"unsupported YAML tag {tag}")
