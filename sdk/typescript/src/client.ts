// The client: connect-node's gRPC transport over HTTP/2, mTLS, retries, the resuming watch.

import { create } from "@bufbuild/protobuf";
import { createClient, type CallOptions, type Client as Stub } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { setTimeout as sleep } from "node:timers/promises";
import {
  batches,
  documentMessage,
  newKey,
  settings,
  VERSION,
  WaitTimeout,
  WatchState,
  watchError,
  type ClientOptions,
  type DocumentLike,
  type Settings,
} from "./common.js";
import { Code, DeadlineExceeded, errorFromRpc, Unavailable, type SluiceError } from "./errors.js";
import * as ingestPb from "./gen/sluice/v1/ingest_pb.js";
import { SchemaService } from "./gen/sluice/v1/schema_pb.js";
import { SearchService } from "./gen/sluice/v1/search_pb.js";
import { deadlineAfter, remainingMs } from "./retry.js";
import { TlsCredentials } from "./tls.js";
import {
  hitFrom,
  ingestionFrom,
  schemaFrom,
  type Hit,
  type Ingestion,
  type IngestionEvent,
  type Schema,
} from "./types.js";

/** `timeoutMs` of one call: undefined for the client's default, null for no deadline. */
export interface CallTimeout {
  timeoutMs?: number | null;
}

export interface IngestOptions extends CallTimeout {
  attributes?: Readonly<Record<string, string>>;
  schema?: string;
  schemaVersion?: number;
  avroSchema?: string | object;
  wait?: boolean;
  idempotencyKey?: string;
}

export interface WatchOptions {
  ingestionIds?: Iterable<string>;
  afterCursor?: string;
  /** Bounds the whole watch (default: none). */
  timeoutMs?: number | null;
}

/**
 * A Sluice client acting for the tenant its certificate names.
 *
 *     const sluice = Client.fromDirectory("127.0.0.1:50051", ".sluice/dev/tls", { tenant: "demo" });
 *     await sluice.ingest("note-1", { title: "Note", text: "Tides follow the moon." }, { wait: true });
 *     const hits = await sluice.search("what moves the tides", { topK: 3 });
 *     sluice.close();
 *
 * Calls fail with a `SluiceError` subclass after retrying what may succeed later (see
 * `RetryPolicy`); writes carry idempotency keys, so a retry never writes twice.
 */
export class Client {
  readonly #settings: Settings;
  readonly #session: Http2SessionManager;
  readonly #headers: Record<string, string>;
  readonly #ingest: Stub<typeof ingestPb.IngestService>;
  readonly #search: Stub<typeof SearchService>;
  readonly #schemas: Stub<typeof SchemaService>;

  /** `target` is `host:port` (or an http(s) URL); `credentials` are required unless `devTenant`. */
  constructor(target: string, options: ClientOptions & { credentials?: TlsCredentials } = {}) {
    const { credentials } = options;
    this.#settings = settings(options);
    if (!credentials && !this.#settings.devTenant) {
      throw new TypeError(
        "give TLS credentials (the gateway's port is mTLS), or devTenant for a plaintext dev gateway",
      );
    }
    const baseUrl = /^https?:\/\//.test(target) ? target : `${credentials ? "https" : "http"}://${target}`;
    const tls = credentials && {
      cert: credentials.cert,
      key: credentials.key,
      ca: credentials.ca,
      servername: this.#settings.serverName,
    };
    // A watch stream on a connection that died silently notices within 40 s.
    this.#session = new Http2SessionManager(baseUrl, { pingIntervalMs: 30_000, pingTimeoutMs: 10_000 }, tls);
    const transport = createGrpcTransport({ baseUrl, sessionManager: this.#session });
    this.#headers = { "user-agent": `sluice-client-typescript/${VERSION}` };
    if (this.#settings.devTenant) this.#headers["x-sluice-tenant"] = this.#settings.devTenant;
    this.#ingest = createClient(ingestPb.IngestService, transport);
    this.#search = createClient(SearchService, transport);
    this.#schemas = createClient(SchemaService, transport);
  }

  /** Connects with a client certificate and key, and the gateway's CA, from PEM files. */
  static fromFiles(
    target: string,
    files: { cert: string; key: string; ca?: string },
    options: ClientOptions = {},
  ): Client {
    return new Client(target, { ...options, credentials: TlsCredentials.fromFiles(files.cert, files.key, files.ca) });
  }

  /** Connects with the certificate `sluice-admin cert client TENANT --out DIRECTORY` wrote. */
  static fromDirectory(
    target: string,
    directory: string,
    options: ClientOptions & { tenant?: string; ca?: string } = {},
  ): Client {
    const credentials = TlsCredentials.fromDirectory(directory, options.tenant, options.ca);
    return new Client(target, { ...options, credentials });
  }

  /** Closes the connection; calls in flight fail. */
  close(): void {
    this.#session.abort();
  }

  #timeout(timeoutMs: number | null | undefined, wait = false): number | null {
    if (timeoutMs !== undefined) return timeoutMs;
    return wait ? this.#settings.waitTimeoutMs : this.#settings.timeoutMs;
  }

  #options(deadline: number | undefined): CallOptions {
    const left = remainingMs(deadline);
    // connect reads a timeout of 0 as none: a passed deadline is 1 ms.
    return { headers: this.#headers, timeoutMs: left === undefined ? undefined : Math.max(1, Math.ceil(left)) };
  }

  // connect keeps a call's deadline timer until the call ends, and a stream left early (a
  // `break` out of a watch) never ends for it: the timer would hold the process open until the
  // deadline. So a stream's deadline goes to the gateway as grpc-timeout, and the client's own
  // is an AbortSignal.timeout, which holds nothing.
  #streamOptions(deadline: number | undefined, stop: AbortSignal): CallOptions {
    const left = remainingMs(deadline);
    if (left === undefined) return { headers: this.#headers, signal: stop };
    const ms = Math.max(1, Math.ceil(left));
    const timeout = ms < 1e8 ? `${ms}m` : `${Math.ceil(ms / 1000)}S`; // at most 8 digits
    return {
      headers: { ...this.#headers, "grpc-timeout": timeout },
      signal: AbortSignal.any([stop, AbortSignal.timeout(ms)]),
    };
  }

  async #call<I, O>(
    method: (request: I, options: CallOptions) => Promise<O>,
    request: I,
    timeoutMs: number | null,
  ): Promise<O> {
    const deadline = deadlineAfter(timeoutMs);
    for (let attempt = 1; ; attempt++) {
      let error: SluiceError;
      try {
        return await method(request, this.#options(deadline));
      } catch (thrown) {
        error = errorFromRpc(thrown);
      }
      const delay = this.#settings.retry.nextDelayMs(error, attempt, deadline);
      if (delay === undefined) throw error;
      this.#settings.log(`${error.message} (attempt ${attempt}); retrying in ${(delay / 1000).toFixed(2)} s`);
      await sleep(delay);
    }
  }

  // Writing.

  /**
   * Ingests one document, its `fields` written as Avro JSON (see `toAvroJson`).
   *
   * Resolves once the document is durably in Kafka (ACCEPTED), or with `wait` once it is
   * INDEXED or FAILED (`DeadlineExceeded`, naming the ingestion, if that takes longer than the
   * timeout). The same id replaces the document. `idempotencyKey` defaults to a fresh one,
   * kept across retries; pass your own to make your own retries safe too.
   */
  async ingest(documentId: string, fields: object, options: IngestOptions = {}): Promise<Ingestion> {
    const document = documentMessage({ ...options, documentId, fields });
    const request = create(ingestPb.IngestRequestSchema, {
      document,
      idempotencyKey: options.idempotencyKey || newKey(),
      wait: options.wait ?? false,
    });
    const response = await this.#call(this.#ingest.ingest, request, this.#timeout(options.timeoutMs, options.wait));
    return ingestionFrom(response.ingestion);
  }

  /**
   * Ingests documents (`Document`s or `[documentId, fields]` pairs) in IngestBatch calls.
   *
   * Each call holds at most `batchSize` documents (default the client's) and `maxBatchBytes`,
   * and is one Kafka transaction: all of its documents are accepted, or none. Resolves to the
   * ingestions in order; with `wait`, as they ended. When a call fails, the error's `accepted`
   * holds the ingestions of the calls before it.
   */
  async ingestMany(
    documents: Iterable<DocumentLike>,
    options: CallTimeout & { batchSize?: number; wait?: boolean } = {},
  ): Promise<Ingestion[]> {
    const accepted: Ingestion[] = [];
    for (const batch of batches(
      documents,
      options.batchSize ?? this.#settings.batchSize,
      this.#settings.maxBatchBytes,
    )) {
      const request = create(ingestPb.IngestBatchRequestSchema, { documents: batch, idempotencyKey: newKey() });
      try {
        const response = await this.#call(this.#ingest.ingestBatch, request, this.#timeout(options.timeoutMs));
        accepted.push(...response.ingestions.map(ingestionFrom));
      } catch (error) {
        (error as SluiceError).accepted = [...accepted];
        throw error;
      }
    }
    if (!options.wait) return accepted;
    const ended = await this.waitFor(
      accepted.map((i) => i.ingestionId),
      options,
    );
    return accepted.map((i) => ended.get(i.ingestionId)!);
  }

  /** Removes a document and its chunks (ordered after every earlier ingest of it). */
  async delete(documentId: string, options: CallTimeout & { wait?: boolean } = {}): Promise<Ingestion> {
    const request = create(ingestPb.DeleteDocumentRequestSchema, {
      documentId,
      idempotencyKey: newKey(),
      wait: options.wait ?? false,
    });
    const response = await this.#call(
      this.#ingest.deleteDocument,
      request,
      this.#timeout(options.timeoutMs, options.wait),
    );
    return ingestionFrom(response.ingestion);
  }

  // Following.

  async getIngestion(ingestionId: string, options: CallTimeout = {}): Promise<Ingestion> {
    const request = create(ingestPb.GetIngestionRequestSchema, { ingestionId });
    return ingestionFrom(await this.#call(this.#ingest.getIngestion, request, this.#timeout(options.timeoutMs)));
  }

  /**
   * The tenant's ingestion events, across disconnects: none missed, none repeated.
   *
   * With `ingestionIds`: their current states first, then their events, ending once all have
   * finished. Without: every ingestion's events, from now on (or after `afterCursor`, an
   * event's `cursor`), until you stop iterating. A broken stream is resumed from the last
   * event's cursor (`watchRetry` bounds the attempts in a row). `OutOfRange`: the cursor is
   * older than the gateway keeps events.
   */
  watch(options: WatchOptions = {}): AsyncGenerator<IngestionEvent, void, undefined> {
    return this.#watch(new WatchState(options.ingestionIds, options.afterCursor), deadlineAfter(options.timeoutMs));
  }

  async *#watch(state: WatchState, deadline: number | undefined): AsyncGenerator<IngestionEvent, void, undefined> {
    const policy = this.#settings.watchRetry;
    let failures = 0;
    for (;;) {
      const stop = new AbortController();
      let error: SluiceError;
      try {
        for await (const message of this.#ingest.watchIngestions(
          state.request(),
          this.#streamOptions(deadline, stop.signal),
        )) {
          failures = 0;
          const event = state.accept(message);
          if (event) yield event;
        }
        if (state.done) return;
        error = new Unavailable(Code.Unavailable, "the watch stream ended early");
      } catch (thrown) {
        const late = deadline !== undefined && performance.now() >= deadline;
        error = late
          ? new DeadlineExceeded(Code.DeadlineExceeded, "the watch's deadline passed")
          : errorFromRpc(thrown);
      } finally {
        stop.abort();
      }
      failures += 1;
      const delay = policy.nextDelayMs(error, failures, deadline);
      if (delay === undefined) throw watchError(policy, error, failures);
      this.#settings.log(
        `watch stream broke (${error.message}); resuming after cursor '${state.cursor}' in ${(delay / 1000).toFixed(2)} s`,
      );
      await sleep(delay);
    }
  }

  /**
   * Waits until every ingestion has finished; resolves to them by id, in the order given.
   * `WaitTimeout` (a `DeadlineExceeded`) when `timeoutMs` (default the client's
   * `waitTimeoutMs`) passes first, with what finished and what is pending.
   */
  async waitFor(ingestionIds: Iterable<string>, options: CallTimeout = {}): Promise<Map<string, Ingestion>> {
    const ids = [...new Set(ingestionIds)];
    const deadline = deadlineAfter(this.#timeout(options.timeoutMs, true));
    const finished = new Map<string, Ingestion>();
    for (let start = 0; start < ids.length; start += this.#settings.batchSize) {
      const state = new WatchState(ids.slice(start, start + this.#settings.batchSize), undefined);
      try {
        for await (const _ of this.#watch(state, deadline)) void _;
      } catch (error) {
        if (!(error instanceof DeadlineExceeded)) throw error;
        state.finished.forEach((ingestion, id) => finished.set(id, ingestion));
        throw new WaitTimeout(
          finished,
          ids.filter((id) => !finished.has(id)),
        );
      }
      state.finished.forEach((ingestion, id) => finished.set(id, ingestion));
    }
    return new Map(ids.map((id) => [id, finished.get(id)!]));
  }

  // Searching.

  /** The `topK` chunks closest in meaning to `query`, best first; `filters`: attribute values every hit must have. */
  async search(
    query: string,
    options: CallTimeout & { topK?: number; filters?: Readonly<Record<string, string>> } = {},
  ): Promise<Hit[]> {
    const request = create(SearchService.method.search.input, {
      query,
      topK: options.topK ?? 10,
      attributeFilter: { ...options.filters },
    });
    const response = await this.#call(this.#search.search, request, this.#timeout(options.timeoutMs));
    return response.hits.map(hitFrom);
  }

  // Schemas.

  /** Registers a version of a document schema (or resolves to the equal one registered). */
  async registerSchema(name: string, definition: string | object, options: CallTimeout = {}): Promise<Schema> {
    const text = typeof definition === "string" ? definition : JSON.stringify(definition);
    const request = create(SchemaService.method.registerSchema.input, { name, definition: text });
    return schemaFrom(
      (await this.#call(this.#schemas.registerSchema, request, this.#timeout(options.timeoutMs))).schema,
    );
  }

  /** One version of a schema (0: the latest). */
  async getSchema(name: string, options: CallTimeout & { version?: number } = {}): Promise<Schema> {
    const request = create(SchemaService.method.getSchema.input, { name, version: options.version ?? 0 });
    return schemaFrom(await this.#call(this.#schemas.getSchema, request, this.#timeout(options.timeoutMs)));
  }

  async listSchemas(options: CallTimeout = {}): Promise<string[]> {
    const request = create(SchemaService.method.listSchemas.input, {});
    return (await this.#call(this.#schemas.listSchemas, request, this.#timeout(options.timeoutMs))).names;
  }
}
