// What the client hands back: plain, typed, read-only values made from the API's messages.

import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import * as pb from "./gen/sluice/v1/ingest_pb.js";
import type { Schema as SchemaMessage } from "./gen/sluice/v1/schema_pb.js";
import type { SearchHit } from "./gen/sluice/v1/search_pb.js";

/** Where an ingestion is: ACCEPTED until it ends INDEXED, FAILED or DELETED. */
export type IngestionState = "UNSPECIFIED" | "ACCEPTED" | "INDEXED" | "FAILED" | "DELETED";
/** What an ingestion does to its document. */
export type Operation = "UNSPECIFIED" | "UPSERT" | "DELETE";

/** Whether `state` is a final one (INDEXED, FAILED or DELETED). */
export function isFinished(state: IngestionState): boolean {
  return state === "INDEXED" || state === "FAILED" || state === "DELETED";
}

// A value newer than this client reads as UNSPECIFIED.
function enumName<T extends string>(names: Record<number, string>, value: number): T {
  return (names[value] ?? "UNSPECIFIED") as T;
}

function date(stamp: Timestamp | undefined): Date | undefined {
  return stamp ? timestampDate(stamp) : undefined;
}

/** One document (or deletion) on its way through Sluice. */
export interface Ingestion {
  readonly ingestionId: string;
  readonly documentId: string;
  readonly state: IngestionState;
  readonly operation: Operation;
  readonly chunkCount: number;
  readonly failureReason: string;
  readonly acceptedAt: Date | undefined;
  readonly completedAt: Date | undefined;
  /** Whether it has ended (INDEXED, FAILED or DELETED). */
  readonly finished: boolean;
}

export function ingestionFrom(message: pb.Ingestion | undefined): Ingestion {
  const m = message ?? ({} as Partial<pb.Ingestion>);
  const state = enumName<IngestionState>(pb.IngestionState, m.state ?? 0);
  return Object.freeze({
    ingestionId: m.ingestionId ?? "",
    documentId: m.documentId ?? "",
    state,
    operation: enumName<Operation>(pb.Operation, m.operation ?? 0),
    chunkCount: m.chunkCount ?? 0,
    failureReason: m.failureReason ?? "",
    acceptedAt: date(m.acceptedAt),
    completedAt: date(m.completedAt),
    finished: isFinished(state),
  });
}

/** What happened to an ingestion; `cursor` resumes a watch after it. */
export interface IngestionEvent {
  readonly ingestion: Ingestion;
  readonly cursor: string;
  readonly eventTime: Date | undefined;
}

export function eventFrom(message: pb.IngestionEvent): IngestionEvent {
  return Object.freeze({
    ingestion: ingestionFrom(message.ingestion),
    cursor: message.cursor,
    eventTime: date(message.eventTime),
  });
}

/** One chunk that matched a search: its document, place, text, score and attributes. */
export interface Hit {
  readonly documentId: string;
  readonly chunkIndex: number;
  readonly text: string;
  readonly score: number;
  readonly attributes: Readonly<Record<string, string>>;
}

export function hitFrom(message: SearchHit): Hit {
  const { documentId, chunkIndex, text, score } = message;
  return Object.freeze({ documentId, chunkIndex, text, score, attributes: Object.freeze({ ...message.attributes }) });
}

/** One registered version of a tenant's document schema. */
export interface Schema {
  readonly name: string;
  readonly subject: string;
  readonly version: number;
  readonly id: number;
  readonly definition: string;
  readonly textField: string;
  readonly attributeFields: readonly string[];
}

export function schemaFrom(message: SchemaMessage | undefined): Schema {
  const m = message ?? ({} as Partial<SchemaMessage>);
  return Object.freeze({
    name: m.name ?? "",
    subject: m.subject ?? "",
    version: m.version ?? 0,
    id: m.id ?? 0,
    definition: m.definition ?? "",
    textField: m.textField ?? "",
    attributeFields: Object.freeze([...(m.attributeFields ?? [])]),
  });
}

/**
 * A document to ingest: its id, its fields (the Avro record, as an object) and options.
 * `schema` names one of the tenant's schemas (empty: the gateway's default, `document`) and
 * `schemaVersion` its version (0: the latest). `avroSchema`, the schema's Avro definition,
 * makes unions explicit in the Avro JSON (see `toAvroJson`).
 */
export interface Document {
  documentId: string;
  /** The Avro record: an object of field names to values (see `toAvroJson`). */
  fields: object;
  attributes?: Readonly<Record<string, string>>;
  schema?: string;
  schemaVersion?: number;
  avroSchema?: string | object;
}
