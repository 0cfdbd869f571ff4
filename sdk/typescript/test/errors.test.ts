// google.rpc details → errors, decoded from grpc-status-details-bin.

import { create, toBinary } from "@bufbuild/protobuf";
import { anyPack, durationFromMs, type Any } from "@bufbuild/protobuf/wkt";
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  Code,
  DeadlineExceeded,
  errorFromStatus,
  InvalidArgument,
  OutOfRange,
  ResourceExhausted,
  SluiceError,
  Unavailable,
} from "sluice-client";
import {
  BadRequestSchema,
  PreconditionFailureSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
} from "sluice-client/gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "sluice-client/gen/google/rpc/status_pb.js";

/** Trailers as the gateway sends them: the Status, base64 without padding (as tonic writes it). */
function trailers(code: Code, message: string, ...details: Any[]): Headers {
  const status = toBinary(StatusSchema, create(StatusSchema, { code, message, details }));
  return new Headers({ "grpc-status-details-bin": Buffer.from(status).toString("base64").replace(/=+$/, "") });
}

test("BadRequest field paths", () => {
  const message = "documents[3].avro_json.tags[1]: expected string, found number";
  const bad = create(BadRequestSchema, {
    fieldViolations: [
      { field: "documents[3].avro_json.tags[1]", description: "expected string, found number" },
      { field: "documents[4].document_id", description: "required" },
    ],
  });
  const error = errorFromStatus(
    Code.InvalidArgument,
    message,
    trailers(Code.InvalidArgument, message, anyPack(BadRequestSchema, bad)),
  );
  assert.ok(error instanceof InvalidArgument && error instanceof SluiceError && error instanceof Error);
  assert.deepEqual(error.fieldViolations, [
    { field: "documents[3].avro_json.tags[1]", description: "expected string, found number" },
    { field: "documents[4].document_id", description: "required" },
  ]);
  assert.equal(error.retryDelayMs, undefined);
  assert.equal(error.message, `INVALID_ARGUMENT: ${message}`);
  assert.equal(error.rawMessage, message);
  assert.equal(error.name, "InvalidArgument");
});

test("QuotaFailure with RetryInfo", () => {
  const quota = create(QuotaFailureSchema, { violations: [{ subject: "documents_per_second", description: "over" }] });
  const retry = create(RetryInfoSchema, { retryDelay: durationFromMs(250) });
  const error = errorFromStatus(
    Code.ResourceExhausted,
    "over documents_per_second",
    trailers(Code.ResourceExhausted, "over", anyPack(QuotaFailureSchema, quota), anyPack(RetryInfoSchema, retry)),
  );
  assert.ok(error instanceof ResourceExhausted);
  assert.deepEqual(error.quotaViolations, [{ subject: "documents_per_second", description: "over" }]);
  assert.equal(error.retryDelayMs, 250);
});

test("PreconditionFailure", () => {
  const failure = create(PreconditionFailureSchema, {
    violations: [{ type: "COMPATIBILITY", subject: "article", description: "field removed" }],
  });
  const error = errorFromStatus(
    Code.FailedPrecondition,
    "incompatible",
    trailers(Code.FailedPrecondition, "incompatible", anyPack(PreconditionFailureSchema, failure)),
  );
  assert.deepEqual(error.preconditionViolations, [
    { type: "COMPATIBILITY", subject: "article", description: "field removed" },
  ]);
});

test("each code has its class, and unknown codes the base", () => {
  assert.ok(errorFromStatus(Code.Unavailable, "down") instanceof Unavailable);
  assert.ok(errorFromStatus(Code.OutOfRange, "old cursor") instanceof OutOfRange);
  const error = errorFromStatus(Code.DataLoss, "?");
  assert.equal(error.constructor, SluiceError);
  assert.equal(error.code, Code.DataLoss);
  assert.equal(errorFromStatus(Code.Canceled, "x").message, "CANCELLED: x");
  assert.equal(errorFromStatus(Code.ResourceExhausted, "x").message, "RESOURCE_EXHAUSTED: x");
});

test("unreadable details are ignored", () => {
  const error = errorFromStatus(
    Code.Unavailable,
    "down",
    new Headers({ "grpc-status-details-bin": "////", other: "x" }),
  );
  assert.ok(error instanceof Unavailable);
  assert.equal(error.retryDelayMs, undefined);
  assert.equal(error.rawMessage, "down");
});

test("the deadline of a waiting ingest names the ingestion", () => {
  const message =
    "ingestion 01a2-ff is accepted (durably in Kafka) but not finished yet; follow it with WatchIngestions or GetIngestion";
  const error = errorFromStatus(Code.DeadlineExceeded, message);
  assert.ok(error instanceof DeadlineExceeded);
  assert.equal(error.ingestionId, "01a2-ff");
  assert.equal(errorFromStatus(Code.DeadlineExceeded, "Deadline Exceeded").ingestionId, undefined);
});
