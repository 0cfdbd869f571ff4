// Settings, requests, batching and watch resumption: the client's logic apart from the calls.

import { create, toBinary } from "@bufbuild/protobuf";
import { randomUUID } from "node:crypto";
import { debuglog } from "node:util";
import { toAvroJson } from "./avro.js";
import { Code, DeadlineExceeded, type SluiceError } from "./errors.js";
import * as pb from "./gen/sluice/v1/ingest_pb.js";
import { RetryPolicy, WATCH_RETRY } from "./retry.js";
import { eventFrom, type Document, type Ingestion, type IngestionEvent } from "./types.js";

export const VERSION = "0.1.0";

/** Options of `Client` and its `from*` constructors. Times are in milliseconds. */
export interface ClientOptions {
  /** The name the gateway's certificate must carry, when it differs from the target's host. */
  serverName?: string;
  /** Deadline of each call, retries included (null: none). Default 30 s. */
  timeoutMs?: number | null;
  /** Deadline of a call that waits for indexing (`wait: true`, `waitFor`). Default 120 s. */
  waitTimeoutMs?: number | null;
  /** Retries of unary calls. Default `new RetryPolicy()`. */
  retry?: RetryPolicy;
  /** Reconnects of watch streams (attempts count failures in a row). Default `WATCH_RETRY`. */
  watchRetry?: RetryPolicy;
  /** Documents per IngestBatch call in `ingestMany`. Default 500. */
  batchSize?: number;
  /** Encoded bytes per IngestBatch call, at most (under the gateway's 16 MiB). Default 8 MiB. */
  maxBatchBytes?: number;
  /** For a plaintext gateway started with `--dev-tenant-header` only: the tenant to act as. */
  devTenant?: string;
  /** Where retries and reconnects are reported. Default `util.debuglog("sluice")` (NODE_DEBUG=sluice). */
  log?: (message: string) => void;
}

export type Settings = Required<Omit<ClientOptions, "serverName" | "devTenant">> &
  Pick<ClientOptions, "serverName" | "devTenant">;

export function settings(options: ClientOptions): Settings {
  const or = <T>(value: T | undefined, fallback: T): T => (value === undefined ? fallback : value);
  const s: Settings = {
    serverName: options.serverName,
    timeoutMs: or(options.timeoutMs, 30_000),
    waitTimeoutMs: or(options.waitTimeoutMs, 120_000),
    retry: options.retry ?? new RetryPolicy(),
    watchRetry: options.watchRetry ?? WATCH_RETRY,
    batchSize: options.batchSize ?? 500,
    maxBatchBytes: options.maxBatchBytes ?? 8 << 20,
    devTenant: options.devTenant,
    log: options.log ?? debuglog("sluice"),
  };
  if (!(s.batchSize >= 1 && s.maxBatchBytes >= 1)) throw new RangeError("batchSize and maxBatchBytes must be positive");
  return s;
}

/** An idempotency key: one per write, the same on each of its attempts. */
export function newKey(): string {
  return `ts-${randomUUID().replaceAll("-", "")}`;
}

/** A document to ingest: a `Document`, or a `[documentId, fields]` pair. */
export type DocumentLike = Document | readonly [string, object];

export function asDocument(item: DocumentLike): Document {
  return Array.isArray(item) ? { documentId: item[0], fields: item[1] } : (item as Document);
}

export function documentMessage(document: Document): pb.Document {
  return create(pb.DocumentSchema, {
    documentId: document.documentId,
    payload: { case: "avroJson", value: toAvroJson(document.fields, document.avroSchema) },
    attributes: { ...document.attributes },
    schema: document.schema ?? "",
    schemaVersion: document.schemaVersion ?? 0,
  });
}

/**
 * The documents as messages, in order, in groups of at most `size` documents and `maxBytes`
 * encoded bytes. A single document larger than `maxBytes` goes alone (the gateway says
 * whether it fits).
 */
export function* batches(documents: Iterable<DocumentLike>, size: number, maxBytes: number): Generator<pb.Document[]> {
  let batch: pb.Document[] = [];
  let used = 0;
  for (const item of documents) {
    const message = documentMessage(asDocument(item));
    // Each repeated element costs its length prefix and tag too: a few bytes.
    const cost = toBinary(pb.DocumentSchema, message).length + 8;
    if (batch.length > 0 && (batch.length === size || used + cost > maxBytes)) {
      yield batch;
      batch = [];
      used = 0;
    }
    batch.push(message);
    used += cost;
  }
  if (batch.length > 0) yield batch;
}

/**
 * Where a watch is, so that a new stream continues it: no event missed or repeated.
 *
 * Every event carries a cursor; a new stream asks for the events after the last one. With
 * `ingestionIds` and no cursor, a stream starts with each ingestion's current state, all
 * carrying the same cursor: a stream that broke before all of them arrived starts over
 * without a cursor, and states already handed out (an ingestion is ACCEPTED, then ends once)
 * are not handed out again.
 *
 * An unfiltered watch started without a cursor begins "from now on": events before its first
 * one are not replayed if the very first stream breaks before any event arrives.
 */
export class WatchState {
  readonly ids: string[];
  cursor: string;
  inSnapshot: boolean;
  readonly delivered = new Set<string>();
  readonly finished = new Map<string, Ingestion>();
  #received = 0;

  constructor(ingestionIds: Iterable<string> | undefined, afterCursor: string | undefined) {
    this.ids = [...new Set(ingestionIds ?? [])];
    this.cursor = afterCursor ?? "";
    this.inSnapshot = this.ids.length > 0 && !this.cursor;
  }

  /** The request for the next stream. */
  request(): pb.WatchIngestionsRequest {
    this.#received = 0;
    const afterCursor = this.inSnapshot ? "" : this.cursor;
    return create(pb.WatchIngestionsRequestSchema, { ingestionIds: this.ids, afterCursor });
  }

  /** The event to hand out, or undefined for one already handed out. */
  accept(message: pb.IngestionEvent): IngestionEvent | undefined {
    const event = eventFrom(message);
    this.#received += 1;
    if (this.inSnapshot && this.#received >= this.ids.length) this.inSnapshot = false;
    this.cursor = event.cursor;
    if (this.ids.length === 0) return event;
    const { ingestion } = event;
    if (ingestion.finished) this.finished.set(ingestion.ingestionId, ingestion);
    const key = `${ingestion.state} ${ingestion.ingestionId}`;
    if (this.delivered.has(key)) return undefined;
    this.delivered.add(key);
    return event;
  }

  /** All the watched ingestions have ended (never, for an unfiltered watch). */
  get done(): boolean {
    return this.ids.length > 0 && this.finished.size === this.ids.length;
  }
}

/**
 * What a watch that cannot go on throws: `error`, or DeadlineExceeded when only its deadline
 * kept it from trying again (the watch's timeout is what ended it).
 */
export function watchError(policy: RetryPolicy, error: SluiceError, failures: number): SluiceError {
  if (!policy.retries(error, failures) || error instanceof DeadlineExceeded) return error;
  return new DeadlineExceeded(
    Code.DeadlineExceeded,
    `the watch's deadline passed while it was reconnecting (${error.message})`,
    { cause: error },
  );
}

/** `waitFor` ran out of time: `finished` has the ingestions that ended, `pending` the rest. */
export class WaitTimeout extends DeadlineExceeded {
  readonly finished: ReadonlyMap<string, Ingestion>;
  readonly pending: readonly string[];

  constructor(finished: ReadonlyMap<string, Ingestion>, pending: readonly string[]) {
    super(
      Code.DeadlineExceeded,
      `${pending.length} of ${pending.length + finished.size} ingestions had not finished in time`,
    );
    this.finished = new Map(finished);
    this.pending = [...pending];
  }
}
