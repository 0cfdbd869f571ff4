"""What the sync and the asyncio client share: settings, requests, batching, watch resumption."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import grpc

from ._avro import to_avro_json
from ._errors import DeadlineExceeded, SluiceError
from ._generated.sluice.v1 import ingest_pb2
from ._retry import RetryPolicy
from ._tls import TlsCredentials
from ._types import Document, Ingestion, IngestionEvent

log = logging.getLogger("sluice_client")

__version__ = "0.1.0"

#: Patient by default: a watch outlives gateway restarts (about a minute of trying).
WATCH_RETRY = RetryPolicy(max_attempts=20, initial_backoff=0.2, max_backoff=5.0)


class ClientOptions(TypedDict, total=False):
    """Keyword options of ``Client`` and ``AsyncClient`` (and their ``from_*`` constructors)."""

    #: The name the gateway's certificate must carry, when it differs from the target's host.
    server_name: str
    #: Deadline of each call in seconds, retries included (None: no deadline). Default 30.
    timeout: float | None
    #: Deadline of a call that waits for indexing (``wait=True``, ``wait_for``). Default 120.
    wait_timeout: float | None
    #: Retries of unary calls. Default ``RetryPolicy()``.
    retry: RetryPolicy
    #: Reconnects of watch streams (attempts count failures in a row). Default ``WATCH_RETRY``.
    watch_retry: RetryPolicy
    #: Documents per IngestBatch call in ``ingest_many``. Default 500.
    batch_size: int
    #: Encoded bytes per IngestBatch call, at most (under the gateway's 16 MiB). Default 8 MiB.
    max_batch_bytes: int
    #: For a plaintext gateway started with ``--dev-tenant-header`` only: the tenant to act as.
    dev_tenant: str
    #: Extra gRPC channel options.
    channel_options: Sequence[tuple[str, Any]]


@dataclass(frozen=True)
class Settings:
    target: str
    credentials: TlsCredentials | None
    server_name: str | None = None
    timeout: float | None = 30.0
    wait_timeout: float | None = 120.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    watch_retry: RetryPolicy = WATCH_RETRY
    batch_size: int = 500
    max_batch_bytes: int = 8 << 20
    dev_tenant: str | None = None
    channel_options: Sequence[tuple[str, Any]] = ()

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_batch_bytes < 1:
            raise ValueError("batch_size and max_batch_bytes must be positive")

    @property
    def options(self) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [
            ("grpc.primary_user_agent", f"sluice-client-python/{__version__}"),
            # A watch stream on a connection that died silently notices within 40 s.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
            # The channel's own reconnect backoff grows to 120 s by default, and calls fail fast
            # meanwhile: keep it within the retry policies', so that a retry after the gateway
            # is back finds a connection.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", int(1000 * max(self.retry.max_backoff, self.watch_retry.max_backoff, 0.2))),
        ]
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return options + list(self.channel_options)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-sluice-tenant", self.dev_tenant),) if self.dev_tenant else ()


def settings(target: str, credentials: TlsCredentials | None, options: ClientOptions) -> Settings:
    if credentials is None and not options.get("dev_tenant"):
        raise ValueError("give TLS credentials (the gateway's port is mTLS), or dev_tenant for a plaintext dev gateway")
    return Settings(target, credentials, **options)


def new_key() -> str:
    """An idempotency key: one per write, the same on each of its attempts."""
    return f"py-{uuid.uuid4().hex}"


DocumentLike = Document | tuple[str, Mapping[str, Any]]


def as_document(item: DocumentLike) -> Document:
    if isinstance(item, Document):
        return item
    document_id, fields = item
    return Document(document_id, fields)


def document_message(document: Document) -> ingest_pb2.Document:
    return ingest_pb2.Document(
        document_id=document.document_id,
        avro_json=to_avro_json(document.fields, document.avro_schema),
        attributes=dict(document.attributes),
        schema=document.schema,
        schema_version=document.schema_version,
    )


def batches(documents: Iterable[DocumentLike], size: int, max_bytes: int) -> Iterator[list[ingest_pb2.Document]]:
    """The documents as messages, in order, in groups of at most ``size`` and ``max_bytes``.

    A single document larger than ``max_bytes`` goes alone (the gateway says whether it fits).
    """
    batch: list[ingest_pb2.Document] = []
    used = 0
    for item in documents:
        message = document_message(as_document(item))
        # Each repeated element costs its length prefix and tag too: a few bytes.
        cost = message.ByteSize() + 8
        if batch and (len(batch) == size or used + cost > max_bytes):
            yield batch
            batch, used = [], 0
        batch.append(message)
        used += cost
    if batch:
        yield batch


def chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class WatchState:
    """Where a watch is, so that a new stream continues it: no event missed or repeated.

    Every event carries a cursor; a new stream asks for the events after the last one. With
    ``ingestion_ids`` and no cursor, a stream starts with each ingestion's current state, all
    carrying the same cursor: a stream that broke before all of them arrived starts over
    without a cursor, and states already handed out (an ingestion is ACCEPTED, then ends
    once) are not handed out again.

    An unfiltered watch started without a cursor begins "from now on": events before its first
    one are not replayed if the very first stream breaks before any event arrives.
    """

    def __init__(self, ingestion_ids: Iterable[str] | None, after_cursor: str | None) -> None:
        self.ids = list(dict.fromkeys(ingestion_ids or ()))
        self.cursor = after_cursor or ""
        self.in_snapshot = bool(self.ids) and not self.cursor
        self.delivered: set[tuple[str, int]] = set()
        self.finished: dict[str, Ingestion] = {}
        self._received = 0

    def request(self) -> ingest_pb2.WatchIngestionsRequest:
        """The request for the next stream."""
        self._received = 0
        cursor = "" if self.in_snapshot else self.cursor
        return ingest_pb2.WatchIngestionsRequest(ingestion_ids=self.ids, after_cursor=cursor)

    def accept(self, message: ingest_pb2.IngestionEvent) -> IngestionEvent | None:
        """The event to hand out, or None for one already handed out."""
        event = IngestionEvent.from_proto(message)
        self._received += 1
        if self.in_snapshot and self._received >= len(self.ids):
            self.in_snapshot = False
        self.cursor = event.cursor
        if not self.ids:
            return event
        ingestion = event.ingestion
        if ingestion.finished:
            self.finished[ingestion.ingestion_id] = ingestion
        key = (ingestion.ingestion_id, ingestion.state.value)
        if key in self.delivered:
            return None
        self.delivered.add(key)
        return event

    @property
    def done(self) -> bool:
        """All the watched ingestions have ended (never, for an unfiltered watch)."""
        return bool(self.ids) and len(self.finished) == len(self.ids)


def watch_error(policy: RetryPolicy, error: SluiceError, failures: int) -> SluiceError:
    """What a watch that cannot go on raises: ``error``, or DeadlineExceeded when only its
    deadline kept it from trying again (the watch's timeout is what ended it)."""
    if not policy.retries(error, failures) or isinstance(error, DeadlineExceeded):
        return error
    return DeadlineExceeded(
        grpc.StatusCode.DEADLINE_EXCEEDED, f"the watch's deadline passed while it was reconnecting ({error})"
    )


class WaitTimeout(DeadlineExceeded):
    """``wait_for`` ran out of time: ``finished`` has the ingestions that ended, ``pending`` the rest."""

    def __init__(self, finished: Mapping[str, Ingestion], pending: Sequence[str]) -> None:
        super().__init__(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"{len(pending)} of {len(pending) + len(finished)} ingestions had not finished in time",
        )
        self.finished = dict(finished)
        self.pending = list(pending)
