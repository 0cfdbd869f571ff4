"""Sluice's Python client: ingest documents, follow their indexing, search them.

The generated stubs are in ``sluice_client._generated`` (from ``proto/``); this package is the
small hand-written layer over them: mTLS from PEM files, retries with idempotency keys,
Avro JSON from dicts, batching, a watch that resumes across disconnects, typed results and
errors.
"""

from ._aio import AsyncClient
from ._avro import to_avro_json
from ._client import Client
from ._common import WATCH_RETRY, ClientOptions, WaitTimeout, __version__
from ._errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    PreconditionViolation,
    QuotaViolation,
    ResourceExhausted,
    SluiceError,
    Unauthenticated,
    Unavailable,
    error_from_status,
)
from ._retry import NO_RETRY, RetryPolicy
from ._tls import TlsCredentials
from ._types import Document, Hit, Ingestion, IngestionEvent, IngestionState, Operation, Schema

__all__ = [
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "Cancelled",
    "Client",
    "ClientOptions",
    "DeadlineExceeded",
    "Document",
    "FailedPrecondition",
    "FieldViolation",
    "Hit",
    "Ingestion",
    "IngestionEvent",
    "IngestionState",
    "Internal",
    "InvalidArgument",
    "NO_RETRY",
    "NotFound",
    "Operation",
    "OutOfRange",
    "PermissionDenied",
    "PreconditionViolation",
    "QuotaViolation",
    "ResourceExhausted",
    "RetryPolicy",
    "Schema",
    "SluiceError",
    "TlsCredentials",
    "Unauthenticated",
    "Unavailable",
    "WATCH_RETRY",
    "WaitTimeout",
    "__version__",
    "error_from_status",
    "to_avro_json",
]
