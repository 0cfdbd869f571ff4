"""Avro JSON from Python values, without and with the document's schema."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import uuid
from pathlib import Path

import pytest

from sluice_client import to_avro_json

DEFAULT_SCHEMA = (Path(__file__).resolve().parents[3] / "schemas/document.avsc").read_text()


def avro(fields: dict[str, object], schema: object = None) -> object:
    return json.loads(to_avro_json(fields, schema))  # type: ignore[arg-type]


class Colour(enum.Enum):
    RED = "RED"


@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_plain_values_map_to_json() -> None:
    moment = dt.datetime(2024, 1, 1, 0, 0, 0, 1000, tzinfo=dt.timezone.utc)
    assert avro(
        {
            "text": "Tides follow the moon.",
            "title": None,
            "count": 3,
            "ratio": 0.5,
            "ok": True,
            "tags": ("a", "b"),
            "raw": b"\x00\x7f\xff",
            "at": moment,
            "day": dt.date(1970, 1, 11),
            "id": uuid.UUID(int=1),
            "colour": Colour.RED,
            "point": Point(1, 2),
            "nested": {"k": [1, {"z": None}]},
        }
    ) == {
        "text": "Tides follow the moon.",
        "title": None,
        "count": 3,
        "ratio": 0.5,
        "ok": True,
        "tags": ["a", "b"],
        "raw": "\u0000\u007f\u00ff",
        "at": 1704067200001,
        "day": 10,
        "id": "00000000-0000-0000-0000-000000000001",
        "colour": "RED",
        "point": {"x": 1, "y": 2},
        "nested": {"k": [1, {"z": None}]},
    }


def test_non_ascii_text_stays_text() -> None:
    assert to_avro_json({"text": "Gezeiten — 潮"}) == '{"text":"Gezeiten — 潮"}'


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"x": float("nan")}, "x: nan has no JSON encoding"),
        ({"at": dt.datetime(2024, 1, 1)}, "at: a naive datetime"),
        ({"m": {1: "a"}}, "m: keys must be strings"),
        ({"s": {1, 2}}, "s: set has no Avro JSON encoding"),
        ({"a": [object()]}, "a[0]: object has no Avro JSON encoding"),
    ],
)
def test_what_has_no_encoding_is_named_by_its_path(fields: dict[str, object], problem: str) -> None:
    with pytest.raises((TypeError, ValueError), match=problem.replace("[", r"\[").replace("]", r"\]")):
        to_avro_json(fields)


def test_a_document_must_be_a_mapping() -> None:
    with pytest.raises(TypeError):
        to_avro_json(["text"])  # type: ignore[arg-type]


def test_with_the_default_schema_unions_are_tagged() -> None:
    moment = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    assert avro(
        {"title": "Tides", "text": "The moon pulls the sea.", "language": None, "tags": ["sea"], "created_at": moment},
        DEFAULT_SCHEMA,
    ) == {
        "title": {"string": "Tides"},
        "text": "The moon pulls the sea.",
        "language": None,
        "tags": ["sea"],
        "created_at": {"long": 1704067200000},
    }


def test_fields_left_out_stay_out_for_their_defaults() -> None:
    assert avro({"text": "only text"}, DEFAULT_SCHEMA) == {"text": "only text"}


SCHEMA = {
    "type": "record",
    "name": "Article",
    "namespace": "com.example",
    "fields": [
        {"name": "body", "type": "string"},
        {"name": "n", "type": ["null", "int", "string"]},
        {"name": "when", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}]},
        {"name": "kind", "type": ["null", {"type": "enum", "name": "Kind", "symbols": ["NEWS", "NOTE"]}]},
        {"name": "author", "type": ["null", {"type": "record", "name": "Person", "namespace": "org.people",
                                             "fields": [{"name": "name", "type": "string"},
                                                        {"name": "nick", "type": ["null", "string"]}]}]},
        {"name": "editor", "type": ["null", "org.people.Person"]},
        {"name": "related", "type": {"type": "array", "items": ["null", "Kind"]}},
        {"name": "scores", "type": {"type": "map", "values": ["null", "double"]}},
        {"name": "blob", "type": ["null", "bytes"]},
    ],
}  # fmt: skip


def test_named_types_nested_unions_and_logical_types() -> None:
    assert avro(
        {
            "body": "b",
            "n": 5,
            "when": dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=dt.timezone.utc),
            "kind": "NEWS",
            "author": {"name": "Ada", "nick": "ada"},
            "editor": {"name": "Bo"},
            "related": ["NOTE", None],
            "scores": {"a": 1.5, "b": None, "c": 2},
            "blob": b"\x01",
        },
        SCHEMA,
    ) == {
        "body": "b",
        "n": {"int": 5},
        "when": {"long": 1_000_000},
        "kind": {"com.example.Kind": "NEWS"},
        "author": {"org.people.Person": {"name": "Ada", "nick": {"string": "ada"}}},
        "editor": {"org.people.Person": {"name": "Bo"}},
        "related": [{"com.example.Kind": "NOTE"}, None],
        "scores": {"a": {"double": 1.5}, "b": None, "c": {"double": 2}},
        "blob": {"bytes": "\u0001"},
    }


def test_the_first_branch_that_fits_wins_and_bools_are_not_ints() -> None:
    assert avro({"n": "five"}, SCHEMA) == {"n": {"string": "five"}}
    # No branch fits a bool: passed through for the gateway to name the field.
    assert avro({"n": True}, SCHEMA) == {"n": True}


def test_what_does_not_fit_the_schema_is_passed_through_for_the_gateway_to_report() -> None:
    assert avro({"body": 3, "unknown": "x", "kind": "OTHER"}, SCHEMA) == {"body": 3, "unknown": "x", "kind": "OTHER"}


def test_schema_as_json_text_or_parsed() -> None:
    assert to_avro_json({"n": 1}, json.dumps(SCHEMA)) == to_avro_json({"n": 1}, SCHEMA) == '{"n":{"int":1}}'
