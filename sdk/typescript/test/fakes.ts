// An in-process stand-in for the gateway, scripted per test: refusals with google.rpc details,
// an idempotency store, and watch streams that break on cue. Plaintext HTTP/2 (gRPC) on
// loopback, served by connect-node.

import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { randomUUID } from "node:crypto";
import {
  createSecureServer,
  createServer,
  type Http2SecureServer,
  type Http2Server,
  type SecureServerOptions,
  type ServerHttp2Session,
} from "node:http2";
import type { AddressInfo } from "node:net";
import type { TLSSocket } from "node:tls";
import {
  BadRequestSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
} from "sluice-client/gen/google/rpc/error_details_pb.js";
import * as pb from "sluice-client/gen/sluice/v1/ingest_pb.js";
import { SearchHitSchema, SearchService } from "sluice-client/gen/sluice/v1/search_pb.js";

export const { ACCEPTED, INDEXED } = pb.IngestionState;

export interface Refusal {
  code: Code;
  message: string;
  retryDelayMs?: number;
  quota?: string;
  fields?: [string, string][];
}

/** The ConnectError the fake throws: connect-node sends its details in grpc-status-details-bin. */
export function refusalError(refusal: Refusal): ConnectError {
  const details: NonNullable<ConstructorParameters<typeof ConnectError>[3]> = [];
  if (refusal.fields) {
    const fieldViolations = refusal.fields.map(([field, description]) => ({ field, description }));
    details.push({ desc: BadRequestSchema, value: { fieldViolations } });
  }
  if (refusal.quota) {
    details.push({
      desc: QuotaFailureSchema,
      value: { violations: [{ subject: refusal.quota, description: "over" }] },
    });
  }
  if (refusal.retryDelayMs !== undefined) {
    details.push({ desc: RetryInfoSchema, value: { retryDelay: durationFromMs(refusal.retryDelayMs) } });
  }
  return new ConnectError(refusal.message, refusal.code, undefined, details);
}

export function ingestion(i: number, state: pb.IngestionState): pb.Ingestion {
  return create(pb.IngestionSchema, { ingestionId: `ing-${i}`, documentId: `doc-${i}`, state });
}

/**
 * Answers like the gateway, for what the tests script:
 * - `refusals`: taken one per write call (Ingest, IngestBatch), refusing it (null lets it through);
 * - writes with a key seen before return the first ingestions and write nothing;
 * - `log`: the tenant's event log (event n, cursor String(n + 1), is log[n]); a watch stream
 *   sends the events after its cursor (with ids and no cursor, their current states first) and
 *   breaks with UNAVAILABLE after `breakEvery` events, as often as `breaks` says.
 */
export class FakeGateway {
  refusals: (Refusal | null)[] = [];
  writeKeys: string[] = [];
  writes = 0;
  byKey = new Map<string, pb.Ingestion[]>();
  batchSizes: number[] = [];
  documents: pb.Document[] = [];
  log: pb.Ingestion[] = [];
  breakEvery = 0;
  breaks = 0;
  watchRequests: pb.WatchIngestionsRequest[] = [];
  watchRefusal: Refusal | undefined;
  tenants: (string | null)[] = [];
  /** Watch streams stay open after their events, as the gateway's do, until the client goes. */
  holdStreams = false;
  /** The next write call gets no answer: it waits until the client goes. */
  holdNextWrite = false;
  held = 0;

  async #hold(signal: AbortSignal): Promise<never> {
    this.held += 1;
    await new Promise((resolve) => signal.addEventListener("abort", resolve));
    throw new ConnectError("the client went away", Code.Canceled);
  }

  write(key: string, documents: pb.Document[]): pb.Ingestion[] {
    this.writeKeys.push(key);
    const refusal = this.refusals.shift();
    if (refusal) throw refusalError(refusal);
    const known = this.byKey.get(key);
    if (known) return known;
    this.writes += 1;
    this.documents.push(...documents);
    const made = documents.map((d) =>
      create(pb.IngestionSchema, { ingestionId: randomUUID(), documentId: d.documentId, state: ACCEPTED }),
    );
    this.byKey.set(key, made);
    return made;
  }

  addEvents(...ingestions: pb.Ingestion[]): void {
    this.log.push(...ingestions);
  }

  async *watch(request: pb.WatchIngestionsRequest, signal: AbortSignal): AsyncGenerator<pb.IngestionEvent> {
    this.watchRequests.push(request);
    const log = [...this.log];
    const breaking = this.breaks > 0;
    if (breaking) this.breaks -= 1;
    if (this.watchRefusal) throw refusalError(this.watchRefusal);
    const ids = request.ingestionIds;
    const events: [number, pb.Ingestion][] = [];
    const start = request.afterCursor || ids.length === 0 ? Number(request.afterCursor || 0) : log.length;
    if (ids.length > 0 && !request.afterCursor) {
      const latest = new Map(log.map((i) => [i.ingestionId, i]));
      for (const id of ids) events.push([log.length, latest.get(id)!]);
    }
    for (let n = start; n < log.length; n++) {
      if (ids.length === 0 || ids.includes(log[n]!.ingestionId)) events.push([n + 1, log[n]!]);
    }
    for (const [sent, [seq, ingestion]] of events.entries()) {
      if (breaking && sent === this.breakEvery) {
        throw new ConnectError("gateway is shutting down; watch again with your last cursor", Code.Unavailable);
      }
      yield create(pb.IngestionEventSchema, { ingestion, cursor: String(seq) });
    }
    if (this.holdStreams) await this.#hold(signal);
    // With ids the stream ends (all of the test's ingestions have ended by the end of the log);
    // without, it would wait for more: end it as a shutdown would.
    if (ids.length === 0) throw new ConnectError("no more events in this fake", Code.Unavailable);
  }

  routes = (router: ConnectRouter): void => {
    router.service(pb.IngestService, {
      ingest: async (request, context) => {
        this.tenants.push(context.requestHeader.get("x-sluice-tenant"));
        if (this.holdNextWrite) {
          this.holdNextWrite = false;
          this.writeKeys.push(request.idempotencyKey);
          await this.#hold(context.signal);
        }
        return { ingestion: this.write(request.idempotencyKey, [request.document!])[0] };
      },
      ingestBatch: (request) => {
        this.batchSizes.push(request.documents.length);
        return { ingestions: this.write(request.idempotencyKey, request.documents) };
      },
      deleteDocument: () => {
        throw new ConnectError("not in this fake", Code.Unimplemented);
      },
      getIngestion: (request) => {
        const found = this.log.filter((i) => i.ingestionId === request.ingestionId).at(-1);
        if (!found) throw new ConnectError(`no ingestion ${request.ingestionId}`, Code.NotFound);
        return found;
      },
      watchIngestions: (request, context) => this.watch(request, context.signal),
    });
    router.service(SearchService, {
      search: (request) => ({
        hits: Array.from({ length: request.topK }, (_, i) =>
          create(SearchHitSchema, {
            documentId: `d${i}`,
            chunkIndex: i,
            text: request.query,
            score: 1 - i / 10,
            attributes: request.attributeFilter,
          }),
        ),
      }),
    });
  };
}

export class Running {
  readonly fake = new FakeGateway();
  readonly server: Http2Server | Http2SecureServer;
  /** The subjectAltName of each client certificate presented (TLS only). */
  readonly peers: string[] = [];
  readonly #sessions = new Set<ServerHttp2Session>();

  private constructor(tls?: SecureServerOptions) {
    const adapter = connectNodeAdapter({ routes: this.fake.routes, grpc: true, connect: false, grpcWeb: false });
    this.server = tls ? createSecureServer(tls, adapter) : createServer(adapter);
    this.server.on("session", (session: ServerHttp2Session) => {
      this.#sessions.add(session);
      session.on("close", () => this.#sessions.delete(session));
      if (tls) this.peers.push((session.socket as TLSSocket).getPeerCertificate().subjectaltname ?? "");
    });
  }

  /** Plaintext HTTP/2, or HTTP/2 over TLS with `tls`' certificates. */
  static async start(tls?: SecureServerOptions): Promise<Running> {
    const running = new Running(tls);
    await new Promise<void>((resolve) => running.server.listen(0, "127.0.0.1", resolve));
    return running;
  }

  get target(): string {
    return `127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Drops every connection, as a gateway that is killed does. */
  dropConnections(): void {
    for (const session of this.#sessions) session.destroy();
  }

  async stop(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const session of this.#sessions) session.destroy();
    await closed;
  }
}
