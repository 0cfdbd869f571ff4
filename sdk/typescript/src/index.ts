// Sluice's TypeScript client for Node: ingest documents, follow their indexing, search them.
//
// The generated stubs are in ./gen (from proto/, exported as "sluice-client/gen/..."); this
// package is the small hand-written layer over them: mTLS from PEM files, retries with
// idempotency keys, Avro JSON from objects, batching, a watch that resumes across
// disconnects, typed results and errors.

export { toAvroJson } from "./avro.js";
export { Client, type CallTimeout, type IngestOptions, type WatchOptions } from "./client.js";
export { batches, VERSION, WaitTimeout, type ClientOptions, type DocumentLike } from "./common.js";
export {
  Aborted,
  AlreadyExists,
  Cancelled,
  Code,
  codeName,
  DeadlineExceeded,
  errorFromStatus,
  FailedPrecondition,
  Internal,
  InvalidArgument,
  NotFound,
  OutOfRange,
  PermissionDenied,
  ResourceExhausted,
  SluiceError,
  Unauthenticated,
  Unavailable,
  type FieldViolation,
  type PreconditionViolation,
  type QuotaViolation,
} from "./errors.js";
export { NO_RETRY, RetryPolicy, WATCH_RETRY, type RetryPolicyOptions } from "./retry.js";
export { TlsCredentials } from "./tls.js";
export {
  isFinished,
  type Document,
  type Hit,
  type Ingestion,
  type IngestionEvent,
  type IngestionState,
  type Operation,
  type Schema,
} from "./types.js";
