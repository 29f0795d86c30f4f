"""The protocol in machine-readable form: a JSON Schema per message and an AsyncAPI document.

Both are generated from the msgspec Structs of :mod:`writebus.client.protocol` and the subject
table below, and checked in under ``docs/`` for peers in other languages::

    python -m writebus.client.schema --write docs/    # regenerate
    python -m writebus.client.schema --check docs/    # exit 1 if a checked-in file is stale

A test runs the check, so the files cannot drift from the code. Everything the output depends
on is data in this module: :data:`STRUCTS` (every message type) and :data:`CHANNELS` (every
subject). A new field needs no change here; a new message is a line in each.

The schemas are JSON Schema draft-07 (the dialect every AsyncAPI tool must read), one file per
Struct, referring to each other by file name. They describe what a reader must accept: a field
is ``required`` when it has no default. Replies and broadcasts nevertheless always carry every
field (see docs/protocol.md).
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from writebus.client.protocol import (
    JSON,
    MSGPACK,
    PROTOCOL_VERSION,
    ErrorInfo,
    LsnUpdate,
    Reply,
    Request,
    RequestId,
    Statement,
    StatementResult,
    Status,
)
from writebus.client.subjects import WORKER_QUEUE, Subjects

#: Every Struct of the protocol. Types nested in these (and in :data:`CHANNELS`) are found
#: automatically; listing them here as well keeps the set explicit.
STRUCTS: Final[tuple[type[msgspec.Struct], ...]] = (
    Request,
    Statement,
    Reply,
    StatementResult,
    ErrorInfo,
    LsnUpdate,
    Status,
    RequestId,
)


@dataclass(frozen=True)
class Channel:
    """One subject family: what a bus node receives or publishes there."""

    #: Channel and operation name in the AsyncAPI document.
    name: str
    #: The subject, with ``{prefix}`` and ``{region}`` standing for their values.
    address: str
    #: The message sent to the subject.
    message: type[msgspec.Struct]
    #: The reply message (request/reply), or None for a broadcast the bus publishes.
    reply: type[msgspec.Struct] | None
    summary: str
    #: Encodings the message comes in: requests choose, broadcasts are msgpack.
    encodings: tuple[str, ...] = (MSGPACK, JSON)


_SUBJECTS = Subjects(prefix="{prefix}")

#: Every subject a bus node serves or publishes on.
CHANNELS: Final[tuple[Channel, ...]] = (
    Channel(
        "write",
        _SUBJECTS.write,
        Request,
        Reply,
        "Writes: statements or a procedure, run on the primary exactly once per request id.",
    ),
    Channel(
        "rpc",
        _SUBJECTS.rpc("{region}"),
        Request,
        Reply,
        "Procedure calls run on the database of one region (no statements); "
        "also the built-in `writebus.ping`.",
    ),
    Channel(
        "lsn",
        _SUBJECTS.lsn("{region}"),
        LsnUpdate,
        None,
        "Replay progress of a region's database, published by its bus nodes.",
        encodings=(MSGPACK,),
    ),
    Channel(
        "status",
        _SUBJECTS.status("{region}"),
        Status,
        None,
        "Health and traffic of each bus node of a region, once a second.",
        encodings=(JSON,),
    ),
)

#: The ``$schema`` of every generated schema file.
JSON_SCHEMA_DIALECT: Final = "http://json-schema.org/draft-07/schema#"
#: The AsyncAPI name of that dialect.
SCHEMA_FORMAT: Final = "application/schema+json;version=draft-07"
SCHEMA_DIR: Final = "schema"
ASYNCAPI_FILE: Final = "asyncapi.yaml"
REGENERATE: Final = "python -m writebus.client.schema --write docs/"

_PARAMETERS: Final = {
    "prefix": {
        "description": "Subject prefix of the deployment (`WRITEBUS_PREFIX`).",
        "default": "writebus",
    },
    "region": {
        "description": "A region name (`WRITEBUS_REGION` of the bus nodes there).",
        "examples": ["syd", "lax"],
    },
}


def _description(cls: type[Any]) -> str:
    """A class docstring as plain Markdown: dedented, Sphinx roles reduced to code spans."""
    text = inspect.getdoc(cls) or ""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    text = text.replace("``", "`")
    # Join the lines of each paragraph: descriptions are read in generated code and viewers.
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    return "\n\n".join(paragraphs)


def all_structs() -> list[type[msgspec.Struct]]:
    """Every Struct with a schema: :data:`STRUCTS`, the channels' messages, and every Struct
    they contain, in that order."""
    roots: list[type[msgspec.Struct]] = list(STRUCTS)
    for ch in CHANNELS:
        roots += [ch.message] + ([ch.reply] if ch.reply is not None else [])
    found: list[type[msgspec.Struct]] = []

    def visit(node: Any) -> None:
        if isinstance(node, msgspec.inspect.Field):
            visit(node.type)
            return
        if isinstance(node, msgspec.inspect.StructType):
            if node.cls in found:
                return
            found.append(node.cls)
        # Type descriptions are Structs: walk every nested type (list items, union members,
        # dict values, struct fields) generically.
        for name in node.__struct_fields__:
            value = getattr(node, name)
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, (msgspec.inspect.Type, msgspec.inspect.Field)):
                    visit(item)

    for info in msgspec.inspect.multi_type_info(roots):
        visit(info)
    return found


def json_schemas() -> dict[str, dict[str, Any]]:
    """One JSON Schema document per Struct, by Struct name."""
    structs = all_structs()
    _, components = msgspec.json.schema_components(structs, ref_template="{name}.json")
    out: dict[str, dict[str, Any]] = {}
    for cls in structs:
        schema = dict(components[cls.__name__])
        schema["description"] = _description(cls)
        out[cls.__name__] = {"$schema": JSON_SCHEMA_DIALECT, **schema}
    return out


def _message_key(cls: type[msgspec.Struct], encoding: str, ch: Channel) -> str:
    # A message that comes in both encodings has a key per encoding.
    return cls.__name__ + ("Json" if encoding == JSON and len(ch.encodings) > 1 else "")


def _message(cls: type[msgspec.Struct], encoding: str, ch: Channel) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "name": cls.__name__,
        "title": f"{cls.__name__} ({'JSON' if encoding == JSON else 'msgpack'})",
        "contentType": encoding,
        "payload": {
            "schemaFormat": SCHEMA_FORMAT,
            "schema": {"$ref": f"./{SCHEMA_DIR}/{cls.__name__}.json"},
        },
    }
    if encoding == JSON:
        msg["headers"] = {
            "type": "object",
            "properties": {"Content-Type": {"type": "string", "const": JSON}},
        }
    if len(ch.encodings) == 1:
        msg["description"] = f"Always {'JSON' if encoding == JSON else 'msgpack'}."
    elif encoding == JSON:
        msg["description"] = (
            "The JSON form: a request with the header `Content-Type: application/json` (or, "
            "without the header, a body starting with `{` or whitespace) is answered in JSON "
            "with the same header."
        )
    else:
        msg["description"] = "A msgpack map keyed by field name (the default)."
    return msg


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the bus node: what it receives, replies and publishes."""
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    reply_messages: dict[str, Any] = {}

    def ref(path: str) -> dict[str, str]:
        return {"$ref": path}

    for ch in CHANNELS:
        keys = [_message_key(ch.message, enc, ch) for enc in ch.encodings]
        for enc, key in zip(ch.encodings, keys, strict=True):
            messages[key] = _message(ch.message, enc, ch)
        params = re.findall(r"{(\w+)}", ch.address)
        channels[ch.name] = {
            "address": ch.address,
            "summary": ch.summary,
            "parameters": {p: _PARAMETERS[p] for p in params},
            "messages": {key: ref(f"#/components/messages/{key}") for key in keys},
        }
        op: dict[str, Any] = {
            "action": "receive" if ch.reply is not None else "send",
            "channel": ref(f"#/channels/{ch.name}"),
            "summary": ch.summary,
            "messages": [ref(f"#/channels/{ch.name}/messages/{key}") for key in keys],
        }
        if ch.reply is not None:
            reply_keys = [_message_key(ch.reply, enc, ch) for enc in ch.encodings]
            for enc, key in zip(ch.encodings, reply_keys, strict=True):
                messages[key] = _message(ch.reply, enc, ch)
                reply_messages[key] = ref(f"#/components/messages/{key}")
            op["bindings"] = {"nats": {"queue": WORKER_QUEUE, "bindingVersion": "0.1.0"}}
            op["reply"] = {
                "channel": ref("#/channels/reply"),
                "messages": [ref(f"#/channels/reply/messages/{key}") for key in reply_keys],
            }
        operations[ch.name] = op
    channels["reply"] = {
        "address": None,
        "summary": "The requester's reply subject (a NATS inbox, `_INBOX.…`), set by NATS "
        "request/reply; replies use the request's encoding.",
        "messages": reply_messages,
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "writebus",
            "version": str(PROTOCOL_VERSION),
            "description": (
                "The NATS subjects of a writebus bus node, wire protocol version "
                f"{PROTOCOL_VERSION}. The specification, with the meaning of every field, the "
                "value of every Postgres type and worked examples, is docs/protocol.md. "
                f"Generated by `{REGENERATE}`; do not edit."
            ),
        },
        "defaultContentType": MSGPACK,
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


# --- output ------------------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z_$][A-Za-z0-9_$./+-]*\Z")
_YAML_WORDS = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _YAML_WORDS:
        return text
    # A JSON string is a valid YAML double-quoted scalar.
    return json.dumps(text, ensure_ascii=False)


def to_yaml(value: Any, indent: int = 0) -> str:
    """``value`` (dicts, lists, scalars) as block-style YAML. Small and deterministic, so the
    generated file is stable without a YAML library at run time; a test reads it back."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        if not value:
            return pad + "{}\n"
        for key, item in value.items():
            head = f"{pad}{_scalar(key)}:"
            if isinstance(item, (dict, list)) and item:
                lines.append(head + "\n" + to_yaml(item, indent + 2))
            else:
                lines.append(f"{head} {_inline(item)}\n")
        return "".join(lines)
    if isinstance(value, list):
        if not value:
            return pad + "[]\n"
        for item in value:
            if isinstance(item, (dict, list)) and item:
                body = to_yaml(item, indent + 2)
                lines.append(f"{pad}- {body[indent + 2 :]}")
            else:
                lines.append(f"{pad}- {_inline(item)}\n")
        return "".join(lines)
    return pad + _scalar(value) + "\n"


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def render() -> dict[str, str]:
    """Every generated file, by path relative to ``docs/``, with its exact content."""
    files = {
        f"{SCHEMA_DIR}/{name}.json": json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
        for name, schema in json_schemas().items()
    }
    header = f"# Generated from writebus.client.protocol by `{REGENERATE}`; do not edit.\n"
    files[ASYNCAPI_FILE] = header + to_yaml(asyncapi())
    return files


def stale(docs: Path) -> list[str]:
    """Paths under ``docs`` that differ from what :func:`render` makes, are missing, or are
    schema files no Struct makes any more. Empty when everything is up to date."""
    files = render()
    out = [
        path
        for path, text in files.items()
        if not (docs / path).is_file() or (docs / path).read_text(encoding="utf-8") != text
    ]
    for extra in sorted((docs / SCHEMA_DIR).glob("*.json")):
        rel = f"{SCHEMA_DIR}/{extra.name}"
        if rel not in files:
            out.append(rel)
    return out


def write(docs: Path) -> list[str]:
    """Write every generated file under ``docs`` (and remove schema files no longer made);
    returns the paths that changed."""
    changed = stale(docs)
    files = render()
    (docs / SCHEMA_DIR).mkdir(parents=True, exist_ok=True)
    for path in changed:
        target = docs / path
        if path in files:
            target.write_text(files[path], encoding="utf-8")
        else:
            target.unlink()
    return changed


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--write DIR`` regenerates, ``--check DIR`` exits 1 when stale."""
    parser = argparse.ArgumentParser(
        prog="python -m writebus.client.schema", description=__doc__.split("\n\n")[0]
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="DIR", type=Path, help="regenerate the files in DIR")
    group.add_argument("--check", metavar="DIR", type=Path, help="exit 1 if DIR is stale")
    args = parser.parse_args(argv)
    if args.write is not None:
        changed = write(args.write)
        print("\n".join(f"wrote {args.write / p}" for p in changed) or "up to date")
        return 0
    changed = stale(args.check)
    if changed:
        print(f"stale: {', '.join(changed)}; regenerate with: {REGENERATE}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
