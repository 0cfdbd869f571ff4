// Errors: one Error subclass per gRPC status code, carrying the google.rpc details.

import { fromBinary } from "@bufbuild/protobuf";
import { anyUnpack, durationMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  PreconditionFailureSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "./gen/google/rpc/status_pb.js";
import type { Ingestion } from "./types.js";

export { Code };

/** The trailer that carries a serialized google.rpc.Status with the details. */
export const DETAILS_TRAILER = "grpc-status-details-bin";

/** One bad field of a request (google.rpc.BadRequest), e.g. `documents[3].document_id`. */
export interface FieldViolation {
  readonly field: string;
  readonly description: string;
}

/** One quota that was hit (google.rpc.QuotaFailure), e.g. `documents_per_second`. */
export interface QuotaViolation {
  readonly subject: string;
  readonly description: string;
}

/** One failed precondition (google.rpc.PreconditionFailure), e.g. type `COMPATIBILITY`. */
export interface PreconditionViolation {
  readonly type: string;
  readonly subject: string;
  readonly description: string;
}

export interface ErrorDetails {
  fieldViolations?: readonly FieldViolation[];
  quotaViolations?: readonly QuotaViolation[];
  preconditionViolations?: readonly PreconditionViolation[];
  retryDelayMs?: number;
  ingestionId?: string;
  cause?: unknown;
}

/** `Code.InvalidArgument` → `"INVALID_ARGUMENT"`, as gRPC names it. */
export function codeName(code: Code): string {
  if (code === Code.Canceled) return "CANCELLED";
  const name = Code[code] as string | undefined;
  return name ? name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase() : `CODE_${code}`;
}

/**
 * A call the gateway (or the transport) refused; subclasses name the status code.
 *
 * `retryDelayMs` is the google.rpc.RetryInfo delay, when the gateway said that waiting helps;
 * `ingestionId` the accepted ingestion a `wait: true` call names when its deadline passed
 * first; `accepted`, for `ingestMany`, the ingestions of the batches accepted before the one
 * that failed.
 */
export class SluiceError extends Error {
  readonly code: Code;
  /** The gateway's message, without the code. */
  readonly rawMessage: string;
  readonly fieldViolations: readonly FieldViolation[];
  readonly quotaViolations: readonly QuotaViolation[];
  readonly preconditionViolations: readonly PreconditionViolation[];
  readonly retryDelayMs: number | undefined;
  readonly ingestionId: string | undefined;
  accepted: readonly Ingestion[] = [];

  constructor(code: Code, message: string, details: ErrorDetails = {}) {
    super(`${codeName(code)}: ${message}`, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = new.target.name;
    this.code = code;
    this.rawMessage = message;
    this.fieldViolations = details.fieldViolations ?? [];
    this.quotaViolations = details.quotaViolations ?? [];
    this.preconditionViolations = details.preconditionViolations ?? [];
    this.retryDelayMs = details.retryDelayMs;
    this.ingestionId = details.ingestionId;
  }
}

/** Bad input; `fieldViolations` names each bad field by its path in the request. */
export class InvalidArgument extends SluiceError {}
/** No such ingestion, document or schema in the caller's tenant. */
export class NotFound extends SluiceError {}
/** The thing to create exists. */
export class AlreadyExists extends SluiceError {}
/** The certificate is bound to no tenant, or the tenant is not registered or suspended. */
export class PermissionDenied extends SluiceError {}
/** No usable client certificate (missing, unreadable or revoked). */
export class Unauthenticated extends SluiceError {}
/** Over a quota (`quotaViolations`) or a size limit; `retryDelayMs` when waiting helps. */
export class ResourceExhausted extends SluiceError {}
/** E.g. an incompatible schema version (`preconditionViolations` has the reasons). */
export class FailedPrecondition extends SluiceError {}
/** A Kafka transaction was aborted; nothing was written (retried automatically). */
export class Aborted extends SluiceError {}
/** The gateway or what it depends on cannot answer now (retried automatically). */
export class Unavailable extends SluiceError {}
/** The deadline passed; for `wait: true`, `ingestionId` says what to keep watching. */
export class DeadlineExceeded extends SluiceError {}
/** A watch cursor older than the gateway keeps: watch without one and use getIngestion. */
export class OutOfRange extends SluiceError {}
/** The call was cancelled. */
export class Cancelled extends SluiceError {}
/** The gateway failed in a way it did not expect. */
export class Internal extends SluiceError {}

const BY_CODE: Partial<Record<Code, typeof SluiceError>> = {
  [Code.InvalidArgument]: InvalidArgument,
  [Code.NotFound]: NotFound,
  [Code.AlreadyExists]: AlreadyExists,
  [Code.PermissionDenied]: PermissionDenied,
  [Code.Unauthenticated]: Unauthenticated,
  [Code.ResourceExhausted]: ResourceExhausted,
  [Code.FailedPrecondition]: FailedPrecondition,
  [Code.Aborted]: Aborted,
  [Code.Unavailable]: Unavailable,
  [Code.DeadlineExceeded]: DeadlineExceeded,
  [Code.OutOfRange]: OutOfRange,
  [Code.Canceled]: Cancelled,
  [Code.Internal]: Internal,
};

// How a `wait = true` call that ran out of time names its ingestion (IngestRequest.wait).
const ACCEPTED_INGESTION = /\bingestion (\S+) is accepted\b/;

/** The google.rpc details in a serialized google.rpc.Status; unreadable ones are skipped. */
export function parseDetails(status: Uint8Array): ErrorDetails {
  const fieldViolations: FieldViolation[] = [];
  const quotaViolations: QuotaViolation[] = [];
  const preconditionViolations: PreconditionViolation[] = [];
  let retryDelayMs: number | undefined;
  let details;
  try {
    details = fromBinary(StatusSchema, status).details;
  } catch {
    return {};
  }
  for (const detail of details) {
    try {
      const bad = anyUnpack(detail, BadRequestSchema);
      const quota = anyUnpack(detail, QuotaFailureSchema);
      const precondition = anyUnpack(detail, PreconditionFailureSchema);
      const retry = anyUnpack(detail, RetryInfoSchema);
      if (bad) fieldViolations.push(...bad.fieldViolations.map(({ field, description }) => ({ field, description })));
      if (quota)
        quotaViolations.push(...quota.violations.map(({ subject, description }) => ({ subject, description })));
      if (precondition) {
        preconditionViolations.push(
          ...precondition.violations.map(({ type, subject, description }) => ({ type, subject, description })),
        );
      }
      if (retry) retryDelayMs = retry.retryDelay ? durationMs(retry.retryDelay) : 0;
    } catch {
      // A detail that does not decode: the code and message still tell the story.
    }
  }
  return { fieldViolations, quotaViolations, preconditionViolations, retryDelayMs };
}

/**
 * The error for a status, with the google.rpc details found in its trailers
 * (`grpc-status-details-bin`, base64 as gRPC sends binary metadata). Tolerant: unreadable
 * details are ignored.
 */
export function errorFromStatus(code: Code, message: string, trailers?: Headers, cause?: unknown): SluiceError {
  const bin = trailers?.get(DETAILS_TRAILER);
  const details = bin ? parseDetails(Buffer.from(bin.split(",")[0] ?? "", "base64")) : {};
  const ingestion = code === Code.DeadlineExceeded ? ACCEPTED_INGESTION.exec(message) : null;
  const Class = BY_CODE[code] ?? SluiceError;
  return new Class(code, message, { ...details, ingestionId: ingestion?.[1], cause });
}

/** The error for anything a call threw: a ConnectError's status and trailers, else UNKNOWN. */
export function errorFromRpc(error: unknown): SluiceError {
  if (error instanceof SluiceError) return error;
  if (error instanceof ConnectError) {
    // connect-node reports a call whose connection broke (the gateway was restarted or killed)
    // as CANCELLED, with no status from the gateway. gRPC calls that UNAVAILABLE, and so does
    // this client, which never cancels a call it is still waiting for.
    if (error.code === Code.Canceled && !error.metadata.has("grpc-status")) {
      return new Unavailable(Code.Unavailable, `the connection to the gateway broke (${error.rawMessage})`, {
        cause: error,
      });
    }
    return errorFromStatus(error.code, error.rawMessage, error.metadata, error);
  }
  return new SluiceError(Code.Unknown, error instanceof Error ? error.message : String(error), { cause: error });
}
