"""What the client hands back: plain, typed values made from the API's messages."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import timestamp_pb2

from ._generated.sluice.v1 import ingest_pb2, schema_pb2, search_pb2


class IngestionState(enum.Enum):
    """Where an ingestion is: ACCEPTED until it ends INDEXED, FAILED or DELETED."""

    UNSPECIFIED = 0
    ACCEPTED = 1
    INDEXED = 2
    FAILED = 3
    DELETED = 4

    @classmethod
    def _missing_(cls, value: object) -> IngestionState:
        return cls.UNSPECIFIED  # a state newer than this client

    @property
    def finished(self) -> bool:
        """Whether this is a final state."""
        return self in (IngestionState.INDEXED, IngestionState.FAILED, IngestionState.DELETED)


class Operation(enum.Enum):
    """What an ingestion does to its document."""

    UNSPECIFIED = 0
    UPSERT = 1
    DELETE = 2

    @classmethod
    def _missing_(cls, value: object) -> Operation:
        return cls.UNSPECIFIED


def _time(message: Any, name: str) -> dt.datetime | None:
    if not message.HasField(name):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class Ingestion:
    """One document (or deletion) on its way through Sluice."""

    ingestion_id: str
    document_id: str
    state: IngestionState
    operation: Operation = Operation.UPSERT
    chunk_count: int = 0
    failure_reason: str = ""
    accepted_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None

    @property
    def finished(self) -> bool:
        """Whether it has ended (INDEXED, FAILED or DELETED)."""
        return self.state.finished

    @classmethod
    def from_proto(cls, message: ingest_pb2.Ingestion) -> Ingestion:
        return cls(
            ingestion_id=message.ingestion_id,
            document_id=message.document_id,
            state=IngestionState(message.state),
            operation=Operation(message.operation),
            chunk_count=message.chunk_count,
            failure_reason=message.failure_reason,
            accepted_at=_time(message, "accepted_at"),
            completed_at=_time(message, "completed_at"),
        )


@dataclass(frozen=True)
class IngestionEvent:
    """What happened to an ingestion; ``cursor`` resumes a watch after it."""

    ingestion: Ingestion
    cursor: str
    event_time: dt.datetime | None = None

    @classmethod
    def from_proto(cls, message: ingest_pb2.IngestionEvent) -> IngestionEvent:
        return cls(
            ingestion=Ingestion.from_proto(message.ingestion),
            cursor=message.cursor,
            event_time=_time(message, "event_time"),
        )


@dataclass(frozen=True)
class Hit:
    """One chunk that matched a search: its document, place, text, score and attributes."""

    document_id: str
    chunk_index: int
    text: str
    score: float
    attributes: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, message: search_pb2.SearchHit) -> Hit:
        return cls(
            document_id=message.document_id,
            chunk_index=message.chunk_index,
            text=message.text,
            score=message.score,
            attributes=dict(message.attributes),
        )


@dataclass(frozen=True)
class Schema:
    """One registered version of a tenant's document schema."""

    name: str
    subject: str
    version: int
    id: int
    definition: str
    text_field: str
    attribute_fields: tuple[str, ...]

    @classmethod
    def from_proto(cls, message: schema_pb2.Schema) -> Schema:
        return cls(
            name=message.name,
            subject=message.subject,
            version=message.version,
            id=message.id,
            definition=message.definition,
            text_field=message.text_field,
            attribute_fields=tuple(message.attribute_fields),
        )


@dataclass(frozen=True)
class Document:
    """A document to ingest: its id, its fields (the Avro record, as a mapping) and options.

    ``schema`` names one of the tenant's schemas (empty: the gateway's default, ``document``)
    and ``schema_version`` its version (0: the latest). ``avro_schema``, the schema's Avro
    definition, makes unions explicit in the Avro JSON (see ``to_avro_json``).
    """

    document_id: str
    fields: Mapping[str, Any]
    attributes: Mapping[str, str] = field(default_factory=dict)
    schema: str = ""
    schema_version: int = 0
    avro_schema: str | Mapping[str, Any] | None = None
