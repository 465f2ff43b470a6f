"""playbooks/schema.json, generated: the playbook format's JSON Schema (draft 2020-12).

The format's own parts (playbook, trigger, durations, names) are written here;
each action's part comes from its `Params` dataclass through the registry, so
a new action appears in the schema without an edit here.  Regenerate with

    python -m controller.response.schema > playbooks/schema.json

(a unit test fails while the shipped file is not current).
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from controller.response import playbook as pb
from controller.response.actions import REGISTRY
from controller.response.validation import MAX_TTL, fmt_duration, record_schema

_NUMBER = r"[-+]?([0-9][0-9_]*(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?"
_OPS = "|".join(sorted(pb.OPS, key=lambda op: (-len(op), op)))


def _list(item: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    out = {"type": "array", "items": item, "minItems": 1, "uniqueItems": True}
    if description:
        out["description"] = description
    return out


def _action(action: Any) -> dict[str, Any]:
    extra = {}
    if action.expires:
        extra = {"ttl": {"$ref": "#/$defs/duration", "default": fmt_duration(pb.DEFAULT_TTL),
                         "description": f"how long the action stays; 1s..{fmt_duration(MAX_TTL)}"},
                 "escalate": {"$ref": "#/$defs/escalate"}}
    body = record_schema(action.Params, extra, nullable=action.nullable)
    body.update(action.schema_extra)
    return {"type": "object", "description": action.summary, "additionalProperties": False,
            "required": [action.name], "properties": {action.name: body}}


def schema() -> dict[str, Any]:
    features = "|".join(re.escape(f) for f in pb.CONDITION_FEATURES)
    defs: dict[str, Any] = {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
        "tag": {"type": "string", "pattern": "^[a-z0-9_-]{1,32}$"},
        "duration": {"type": "string", "pattern": "^[0-9]{1,9}[smhd]$",
                     "description": "a number and a unit: s, m, h or d (30s, 10m, 2h, 1d)"},
        "host": {"type": "string", "minLength": 1,
                 "description": "an inventory device name or an IPv4/IPv6 address"},
        "mac": {"type": "string", "pattern": "^[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\\1[0-9A-Fa-f]{2}){4}$"},
        "condition": {"type": "string", "pattern": f"^\\s*({features})\\s*({_OPS})\\s*{_NUMBER}\\s*$",
                      "description": "FEATURE OP NUMBER, like 'distinct_dst_ports > 50'"},
        "escalate": {
            "type": ["object", "null"], "additionalProperties": False,
            "description": "each repeat within `within` multiplies the ttl by `factor`, up to `max_ttl`",
            "properties": {"factor": {"type": "number", "minimum": 1, "maximum": 100, "default": 2},
                           "within": {"$ref": "#/$defs/duration", "default": "1d"},
                           "max_ttl": {"$ref": "#/$defs/duration", "default": fmt_duration(MAX_TTL)}}},
        "playbook": {
            "type": "object", "additionalProperties": False, "required": ["name", "when", "do"],
            "properties": {
                "name": {"$ref": "#/$defs/name", "description": "unique across all loaded files"},
                "description": {"type": "string", "maxLength": 1000, "default": ""},
                "mode": {"enum": list(pb.MODES), "default": "enforce"},
                "priority": {"type": "integer", "minimum": 1, "maximum": 1000, "default": pb.DEFAULT_PRIORITY,
                             "description": "higher runs first and wins a conflict"},
                "when": {"$ref": "#/$defs/when"},
                "do": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/action"}}}},
        "when": {
            "type": "object", "additionalProperties": False, "required": ["kinds"],
            "properties": {
                "kinds": {"type": "array", "items": {"enum": list(pb.ALERT_KINDS)}, "minItems": 1,
                          "uniqueItems": True},
                "min_score": {"type": "number", "minimum": 0, "maximum": 1e9},
                "devices": _list({"$ref": "#/$defs/name"}, "device names"),
                "tags": _list({"$ref": "#/$defs/tag"}, "the device has any of these tags"),
                "classes": _list({"$ref": "#/$defs/tag"}, "the device's first tag is one of these"),
                "macs": _list({"$ref": "#/$defs/mac"}),
                "ips": _list({"type": "string"}),
                "subnets": _list({"type": "string", "pattern": "/"}),
                "dst_ports": _list({"type": "integer", "minimum": 1, "maximum": 65535},
                                   "the alert's top destination port is one of these"),
                "conditions": _list({"$ref": "#/$defs/condition"}, "all must hold")}},
        "action": {"oneOf": [{"$ref": f"#/$defs/{a.name}"} for a in REGISTRY]},
    }
    for action in REGISTRY:
        defs[action.name] = _action(action)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/iotguard/iotguard/playbooks/schema.json",
        "title": "iotguard response playbooks",
        "description": "One playbook file: docs/playbooks.md. The validator (python -m controller.response.playbook "
                       "validate) also checks what a schema cannot: known hosts and tags, unique names across "
                       "files, duration ranges, host bits in prefixes, YAML tags and aliases.",
        "type": "object", "additionalProperties": False, "required": ["playbooks"],
        "properties": {"playbooks": {"type": "array", "items": {"$ref": "#/$defs/playbook"}}},
        "$defs": defs,
    }


def text() -> str:
    return json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"


def action_table() -> str:
    """docs/playbooks.md's action table, from the registry."""
    rows = ["| action | parameters | effect (installed by the response engine) |", "|---|---|---|"]
    rows += [f"| `{a.name}` | {a.params_doc} | {a.effect_doc} |" for a in REGISTRY]
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(text())
