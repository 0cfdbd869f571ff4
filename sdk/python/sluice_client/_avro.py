"""Avro JSON payloads from Python values.

Without a schema, values map to JSON as they are (the gateway takes a bare value for a union
when exactly one of its branches fits, as for ``["null", "string"]``). With the Avro schema
the document is written in, unions are written as Avro's JSON encoding has them,
``{"<branch type>": value}``, so that no union is ambiguous. Either way the gateway validates
the document and names each bad field by its path; values the encoder cannot place are
passed through for it to report.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import uuid
from collections.abc import Mapping
from typing import Any

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_EPOCH_DAY = dt.date(1970, 1, 1)
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})


def to_avro_json(fields: Mapping[str, Any], schema: str | Mapping[str, Any] | None = None) -> str:
    """The Avro JSON encoding of a document given as a mapping of field names to values.

    Conversions: ``bytes`` become the Avro JSON byte string (one code point per byte);
    timezone-aware ``datetime`` becomes milliseconds since the epoch (``timestamp-millis``;
    microseconds for a ``timestamp-micros`` field), ``date`` days since the epoch; ``UUID``
    its string; an ``Enum`` its value; tuples lists; dataclass instances records.
    ``schema`` is the Avro schema (JSON text or parsed) to write unions by.
    """
    if not isinstance(fields, Mapping):
        raise TypeError(f"a document is a mapping of field names to values, not {type(fields).__name__}")
    if schema is None:
        value = _plain(fields, "")
    else:
        parsed = json.loads(schema) if isinstance(schema, str) else schema
        value = _Encoder(parsed).encode(parsed, fields, "", "")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _plain(value: Any, path: str, micros: bool = False) -> Any:
    """``value`` as JSON, by its Python type alone."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path or 'document'}: {value} has no JSON encoding")
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("latin-1")
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError(f"{path}: a naive datetime is ambiguous; give it a timezone")
        unit = dt.timedelta(microseconds=1) if micros else dt.timedelta(milliseconds=1)
        return (value - _EPOCH) // unit
    if isinstance(value, dt.date):
        return (value - _EPOCH_DAY).days
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return _plain(value.value, path)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path or 'document'}: keys must be strings, found {key!r}")
            out[key] = _plain(item, _join(path, key))
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, path)
    raise TypeError(f"{path or 'document'}: {type(value).__name__} has no Avro JSON encoding")


def _as_mapping(value: Any) -> Mapping[str, Any] | None:
    if isinstance(value, Mapping):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return None


class _Encoder:
    """Walks a value along its schema, writing unions as ``{"<branch>": value}``."""

    def __init__(self, schema: Any) -> None:
        self.names: dict[str, Mapping[str, Any]] = {}
        self.fullnames: dict[int, str] = {}  # id(named schema) -> its full name
        self._collect(schema, "")

    @staticmethod
    def _fullname(name: str, namespace: str) -> str:
        return name if "." in name or not namespace else f"{namespace}.{name}"

    def _collect(self, schema: Any, namespace: str) -> None:
        if isinstance(schema, list):
            for branch in schema:
                self._collect(branch, namespace)
        elif isinstance(schema, Mapping):
            kind = schema.get("type")
            if kind in _NAMED and isinstance(schema.get("name"), str):
                fullname = self._fullname(schema["name"], schema.get("namespace", namespace))
                self.names[fullname] = schema
                self.fullnames[id(schema)] = fullname
                namespace = fullname.rpartition(".")[0]
            for f in schema.get("fields", ()):
                self._collect(f.get("type"), namespace)
            for key in ("items", "values"):
                if key in schema:
                    self._collect(schema[key], namespace)
            if isinstance(kind, (list, Mapping)):
                self._collect(kind, namespace)

    def _resolve(self, schema: Any, namespace: str) -> tuple[Any, str]:
        """What a (possibly named, possibly wrapped) schema is, and the namespace inside it."""
        for _ in range(64):  # bounded: a name cannot refer to itself through wrappers forever
            if isinstance(schema, str) and schema not in _PRIMITIVES:
                found = self.names.get(self._fullname(schema, namespace), self.names.get(schema))
                if found is None:
                    return schema, namespace
                schema = found
            elif isinstance(schema, Mapping) and (
                isinstance(schema.get("type"), (list, Mapping))
                or schema.get("type") not in _PRIMITIVES | _NAMED | {"array", "map"}
            ):
                schema = schema.get("type")
            else:
                break
        if isinstance(schema, Mapping) and id(schema) in self.fullnames:
            namespace = self.fullnames[id(schema)].rpartition(".")[0]
        return schema, namespace

    def _type_name(self, schema: Any) -> str:
        """The name Avro's JSON encoding tags a resolved union branch with."""
        if isinstance(schema, str):
            return schema
        return self.fullnames.get(id(schema), str(schema.get("type")))

    def _fits(self, schema: Any, value: Any, namespace: str) -> bool:
        schema, namespace = self._resolve(schema, namespace)
        if isinstance(schema, list):  # a union directly inside a union is not Avro
            return False
        kind = schema if isinstance(schema, str) else schema.get("type")
        logical = None if isinstance(schema, str) else schema.get("logicalType")
        if kind == "null":
            return value is None
        if kind == "boolean":
            return isinstance(value, bool)
        if isinstance(value, bool):
            return False
        if kind in ("int", "long"):
            temporal = (kind == "long" and isinstance(value, dt.datetime)) or (
                logical == "date" and isinstance(value, dt.date) and not isinstance(value, dt.datetime)
            )
            return isinstance(value, int) or temporal
        if kind in ("float", "double"):
            return isinstance(value, (int, float))
        if kind in ("bytes", "fixed"):
            return isinstance(value, (bytes, bytearray, memoryview))
        if kind == "string":
            return isinstance(value, (str, uuid.UUID))
        if kind == "enum":
            symbol = value.value if isinstance(value, enum.Enum) else value
            return symbol in schema.get("symbols", ())
        if kind == "array":
            return isinstance(value, (list, tuple))
        if kind == "map":
            return isinstance(value, Mapping)
        if kind in ("record", "error"):
            record = _as_mapping(value)
            names = {f.get("name") for f in schema.get("fields", ())}
            return record is not None and set(record) <= names
        return False

    def encode(self, schema: Any, value: Any, path: str, namespace: str) -> Any:
        if isinstance(schema, list):
            return self._union(schema, value, path, namespace)
        schema, namespace = self._resolve(schema, namespace)
        if isinstance(schema, list):
            return self._union(schema, value, path, namespace)
        if isinstance(schema, str) or not self._fits(schema, value, namespace):
            return _plain(value, path)
        kind = schema.get("type")
        if kind in ("record", "error"):
            record = _as_mapping(value) or {}
            fields = {f["name"]: f for f in schema.get("fields", ())}
            return {
                key: self.encode(fields[key]["type"], item, _join(path, key), namespace)
                if key in fields
                else _plain(item, _join(path, key))
                for key, item in record.items()
            }
        if kind == "array":
            return [self.encode(schema["items"], item, f"{path}[{i}]", namespace) for i, item in enumerate(value)]
        if kind == "map":
            return {key: self.encode(schema["values"], item, _join(path, key), namespace) for key, item in value.items()}
        return _plain(value, path, micros=schema.get("logicalType") == "timestamp-micros")

    def _union(self, branches: list[Any], value: Any, path: str, namespace: str) -> Any:
        if value is None:
            return None
        for branch in branches:
            if self._fits(branch, value, namespace):
                resolved, _ = self._resolve(branch, namespace)
                return {self._type_name(resolved): self.encode(branch, value, path, namespace)}
        return _plain(value, path)
