"""Errors: one exception class per gRPC status code, carrying the google.rpc details."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

if TYPE_CHECKING:
    from ._types import Ingestion

#: The trailer that carries a serialized google.rpc.Status with the details.
DETAILS_TRAILER = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (google.rpc.BadRequest), e.g. ``documents[3].document_id``."""

    field: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """One quota that was hit (google.rpc.QuotaFailure), e.g. ``documents_per_second``."""

    subject: str
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    """One failed precondition (google.rpc.PreconditionFailure), e.g. type ``COMPATIBILITY``."""

    type: str
    subject: str
    description: str


class SluiceError(Exception):
    """A call the gateway (or the transport) refused; subclasses name the status code.

    ``retry_delay`` is the google.rpc.RetryInfo delay in seconds, when the gateway said that
    waiting helps; ``ingestion_id`` is the accepted ingestion a ``wait=True`` call names when
    its deadline passed first; ``accepted``, for ``ingest_many``, the ingestions of the batches
    accepted before the one that failed.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field_violations: Iterable[FieldViolation] = (),
        quota_violations: Iterable[QuotaViolation] = (),
        precondition_violations: Iterable[PreconditionViolation] = (),
        retry_delay: float | None = None,
        ingestion_id: str | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field_violations = tuple(field_violations)
        self.quota_violations = tuple(quota_violations)
        self.precondition_violations = tuple(precondition_violations)
        self.retry_delay = retry_delay
        self.ingestion_id = ingestion_id
        self.accepted: tuple[Ingestion, ...] = ()


class InvalidArgument(SluiceError):
    """Bad input; ``field_violations`` names each bad field by its path in the request."""


class NotFound(SluiceError):
    """No such ingestion, document or schema in the caller's tenant."""


class AlreadyExists(SluiceError):
    """The thing to create exists."""


class PermissionDenied(SluiceError):
    """The certificate is bound to no tenant, or the tenant is not registered or suspended."""


class Unauthenticated(SluiceError):
    """No usable client certificate (missing, unreadable or revoked)."""


class ResourceExhausted(SluiceError):
    """Over a quota (``quota_violations``) or a size limit; ``retry_delay`` when waiting helps."""


class FailedPrecondition(SluiceError):
    """E.g. an incompatible schema version (``precondition_violations`` has the reasons)."""


class Aborted(SluiceError):
    """A Kafka transaction was aborted; nothing was written (retried automatically)."""


class Unavailable(SluiceError):
    """The gateway or what it depends on cannot answer now (retried automatically)."""


class DeadlineExceeded(SluiceError):
    """The deadline passed; for ``wait=True``, ``ingestion_id`` says what to keep watching."""


class OutOfRange(SluiceError):
    """A watch cursor older than the gateway keeps: watch without one and use get_ingestion."""


class Cancelled(SluiceError):
    """The call was cancelled."""


class Internal(SluiceError):
    """The gateway failed in a way it did not expect."""


_BY_CODE: dict[grpc.StatusCode, type[SluiceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INTERNAL: Internal,
}

# How a `wait = true` call that ran out of time names its ingestion (IngestRequest.wait).
_ACCEPTED_INGESTION = re.compile(r"\bingestion (\S+) is accepted\b")


def error_from_status(
    code: grpc.StatusCode,
    message: str,
    trailing_metadata: Iterable[Any] | None = None,
) -> SluiceError:
    """The exception for a status, with the google.rpc details found in its trailers.

    ``trailing_metadata``: (key, value) pairs, as grpc's errors hand them out. Tolerant:
    unreadable details are ignored (the code and message still tell the story).
    """
    fields: list[FieldViolation] = []
    quotas: list[QuotaViolation] = []
    preconditions: list[PreconditionViolation] = []
    retry_delay: float | None = None
    for key, value in trailing_metadata or ():
        if key != DETAILS_TRAILER or not isinstance(value, bytes):
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except DecodeError:
            continue
        for detail in status.details:
            bad_request = error_details_pb2.BadRequest()
            quota = error_details_pb2.QuotaFailure()
            precondition = error_details_pb2.PreconditionFailure()
            retry = error_details_pb2.RetryInfo()
            if detail.Unpack(bad_request):
                fields += (FieldViolation(v.field, v.description) for v in bad_request.field_violations)
            elif detail.Unpack(quota):
                quotas += (QuotaViolation(v.subject, v.description) for v in quota.violations)
            elif detail.Unpack(precondition):
                preconditions += (
                    PreconditionViolation(v.type, v.subject, v.description) for v in precondition.violations
                )
            elif detail.Unpack(retry):
                retry_delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    ingestion = _ACCEPTED_INGESTION.search(message) if code == grpc.StatusCode.DEADLINE_EXCEEDED else None
    return _BY_CODE.get(code, SluiceError)(
        code,
        message,
        field_violations=fields,
        quota_violations=quotas,
        precondition_violations=preconditions,
        retry_delay=retry_delay,
        ingestion_id=ingestion.group(1) if ingestion else None,
    )


def error_from_rpc(error: grpc.RpcError) -> SluiceError:
    """The exception for a failed call (grpc's sync or asyncio error)."""
    try:
        code = error.code()
        message = error.details() or ""
        trailers = error.trailing_metadata()
    except (AttributeError, TypeError):  # an RpcError that is not a call: no status to read
        return SluiceError(grpc.StatusCode.UNKNOWN, str(error))
    return error_from_status(code, message, trailers)
