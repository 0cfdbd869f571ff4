"""google.rpc details → exceptions."""

from __future__ import annotations

import grpc
import pytest

from fakes import Refusal
from sluice_client import (
    DeadlineExceeded,
    FieldViolation,
    InvalidArgument,
    OutOfRange,
    PreconditionViolation,
    QuotaViolation,
    ResourceExhausted,
    SluiceError,
    Unavailable,
    error_from_status,
)
from google.protobuf import any_pb2
from google.rpc import error_details_pb2


def trailers(refusal: Refusal) -> list[tuple[str, bytes]]:
    return [("grpc-status-details-bin", refusal.status().SerializeToString())]


def test_bad_request_field_paths() -> None:
    refusal = Refusal(
        grpc.StatusCode.INVALID_ARGUMENT,
        "documents[3].avro_json.tags[1]: expected string, found number",
        fields=[("documents[3].avro_json.tags[1]", "expected string, found number"), ("documents[4].document_id", "required")],
    )
    error = error_from_status(refusal.code, refusal.message, trailers(refusal))
    assert isinstance(error, InvalidArgument)
    assert error.field_violations == (
        FieldViolation("documents[3].avro_json.tags[1]", "expected string, found number"),
        FieldViolation("documents[4].document_id", "required"),
    )
    assert error.retry_delay is None
    assert str(error) == "INVALID_ARGUMENT: documents[3].avro_json.tags[1]: expected string, found number"


def test_quota_failure_with_retry_info() -> None:
    refusal = Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "over documents_per_second", retry_delay=0.25, quota="documents_per_second")
    error = error_from_status(refusal.code, refusal.message, trailers(refusal))
    assert isinstance(error, ResourceExhausted)
    assert error.quota_violations == (QuotaViolation("documents_per_second", "over"),)
    assert error.retry_delay == pytest.approx(0.25)


def test_precondition_failure() -> None:
    failure = error_details_pb2.PreconditionFailure(
        violations=[error_details_pb2.PreconditionFailure.Violation(type="COMPATIBILITY", subject="article", description="field removed")]
    )
    packed = any_pb2.Any()
    packed.Pack(failure)
    from google.rpc import status_pb2

    status = status_pb2.Status(code=9, message="incompatible", details=[packed])
    error = error_from_status(grpc.StatusCode.FAILED_PRECONDITION, "incompatible", [("grpc-status-details-bin", status.SerializeToString())])
    assert error.precondition_violations == (PreconditionViolation("COMPATIBILITY", "article", "field removed"),)


def test_each_code_has_its_class_and_unknown_codes_the_base() -> None:
    assert isinstance(error_from_status(grpc.StatusCode.UNAVAILABLE, "down"), Unavailable)
    assert isinstance(error_from_status(grpc.StatusCode.OUT_OF_RANGE, "old cursor"), OutOfRange)
    error = error_from_status(grpc.StatusCode.DATA_LOSS, "?")
    assert type(error) is SluiceError and error.code == grpc.StatusCode.DATA_LOSS


def test_unreadable_details_are_ignored() -> None:
    error = error_from_status(grpc.StatusCode.UNAVAILABLE, "down", [("grpc-status-details-bin", b"\xff\xff\xff"), ("other", "x")])
    assert isinstance(error, Unavailable) and error.retry_delay is None and error.message == "down"


def test_deadline_of_a_waiting_ingest_names_the_ingestion() -> None:
    message = "ingestion 01a2-ff is accepted (durably in Kafka) but not finished yet; follow it with WatchIngestions or GetIngestion"
    error = error_from_status(grpc.StatusCode.DEADLINE_EXCEEDED, message)
    assert isinstance(error, DeadlineExceeded) and error.ingestion_id == "01a2-ff"
    assert error_from_status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded").ingestion_id is None
