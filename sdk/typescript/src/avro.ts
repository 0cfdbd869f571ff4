// Avro JSON payloads from JavaScript values.
//
// Without a schema, values map to JSON as they are (the gateway takes a bare value for a union
// when exactly one of its branches fits, as for ["null", "string"]). With the Avro schema the
// document is written in, unions are written as Avro's JSON encoding has them,
// {"<branch type>": value}, so that no union is ambiguous. Either way the gateway validates the
// document and names each bad field by its path; values the encoder cannot place are passed
// through for it to report.

// The JSON written: objects as Maps (any key, in order), bigints as exact numbers.
type Json = null | boolean | number | bigint | string | Json[] | Map<string, Json>;
type AvroSchema = unknown; // parsed Avro schema JSON: a name, a union (array) or an object

const PRIMITIVES = new Set(["null", "boolean", "int", "long", "float", "double", "bytes", "string"]);
const NAMED = new Set(["record", "error", "enum", "fixed"]);
const NOT_RECORDS = [Date, Map, Set, WeakMap, WeakSet, RegExp, Promise, ArrayBuffer, Error];
const DAY_MS = 86_400_000;

/**
 * The Avro JSON encoding of a document given as an object of field names to values.
 *
 * Conversions: `Uint8Array` (and `Buffer`) becomes the Avro JSON byte string (one code point
 * per byte); a `Date` milliseconds since the epoch (`timestamp-millis`; microseconds for a
 * `timestamp-micros` field, days for a `date` field); `bigint` an exact number; a `Map` an
 * object; other objects records, by their own enumerable properties (those set to
 * `undefined` are left out, for their defaults). `schema` is the Avro schema (JSON text or
 * parsed) to write unions by.
 */
export function toAvroJson(fields: object, schema?: string | object): string {
  if (!isRecord(fields)) throw new TypeError(`a document is an object of field names to values, not ${kindOf(fields)}`);
  if (schema === undefined) return stringify(plain(fields, ""));
  const parsed: unknown = typeof schema === "string" ? JSON.parse(schema) : schema;
  return stringify(new Encoder(parsed).encode(parsed, fields, "", ""));
}

function stringify(value: Json): string {
  if (typeof value === "bigint") return value.toString();
  if (Array.isArray(value)) return `[${value.map(stringify).join(",")}]`;
  if (value instanceof Map) {
    return `{${[...value].map(([k, v]) => `${JSON.stringify(k)}:${stringify(v)}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

function join(path: string, name: string): string {
  return path ? `${path}.${name}` : name;
}

function kindOf(value: unknown): string {
  if (value === null || value === undefined) return String(value);
  if (typeof value !== "object") return typeof value;
  return (value as object).constructor?.name ?? "object";
}

/** Plain objects and class instances, not arrays, bytes or built-ins like Date, Set or Map. */
function isRecord(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value) || ArrayBuffer.isView(value)) return false;
  return !NOT_RECORDS.some((builtin) => value instanceof builtin);
}

/** The entries of a record or a Map (undefined for anything else). */
function entriesOf(value: unknown, path: string): [string, unknown][] | undefined {
  if (value instanceof Map) {
    return [...value].map(([key, item]) => {
      if (typeof key !== "string")
        throw new TypeError(`${path || "document"}: keys must be strings, found ${String(key)}`);
      return [key, item];
    });
  }
  return isRecord(value) ? Object.entries(value).filter(([, item]) => item !== undefined) : undefined;
}

/** `value` as JSON, by its JavaScript type alone (`logical`: the field's Avro logical type). */
function plain(value: unknown, path: string, logical?: string): Json {
  const where = path || "document";
  switch (typeof value) {
    case "boolean":
    case "string":
    case "bigint":
      return value;
    case "number":
      if (!Number.isFinite(value)) throw new RangeError(`${where}: ${value} has no JSON encoding`);
      return value;
  }
  if (value === null) return null;
  if (value instanceof Uint8Array)
    return Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("latin1");
  if (value instanceof Date) {
    const ms = value.getTime();
    if (Number.isNaN(ms)) throw new RangeError(`${where}: an invalid Date has no encoding`);
    return logical === "date" ? Math.floor(ms / DAY_MS) : logical === "timestamp-micros" ? ms * 1000 : ms;
  }
  if (Array.isArray(value)) return value.map((item, i) => plain(item, `${path}[${i}]`));
  const entries = entriesOf(value, path);
  if (entries) return new Map(entries.map(([key, item]) => [key, plain(item, join(path, key))]));
  throw new TypeError(`${where}: ${kindOf(value)} has no Avro JSON encoding`);
}

function field(schema: AvroSchema, key: string): unknown {
  return isRecord(schema) ? schema[key] : undefined;
}

/** Walks a value along its schema, writing unions as {"<branch>": value}. */
class Encoder {
  readonly names = new Map<string, AvroSchema>();
  readonly fullnames = new Map<AvroSchema, string>(); // named schema -> its full name

  constructor(schema: AvroSchema) {
    this.collect(schema, "");
  }

  static fullname(name: string, namespace: string): string {
    return name.includes(".") || !namespace ? name : `${namespace}.${name}`;
  }

  collect(schema: AvroSchema, namespace: string): void {
    if (Array.isArray(schema)) {
      for (const branch of schema) this.collect(branch, namespace);
      return;
    }
    if (!isRecord(schema)) return;
    const kind = schema.type;
    if (NAMED.has(kind as string) && typeof schema.name === "string") {
      const ns = typeof schema.namespace === "string" ? schema.namespace : namespace;
      const fullname = Encoder.fullname(schema.name, ns);
      this.names.set(fullname, schema);
      this.fullnames.set(schema, fullname);
      namespace = fullname.slice(0, Math.max(0, fullname.lastIndexOf(".")));
    }
    for (const f of Array.isArray(schema.fields) ? schema.fields : []) this.collect(field(f, "type"), namespace);
    for (const key of ["items", "values"]) if (key in schema) this.collect(schema[key], namespace);
    if (Array.isArray(kind) || isRecord(kind)) this.collect(kind, namespace);
  }

  /** What a (possibly named, possibly wrapped) schema is, and the namespace inside it. */
  resolve(schema: AvroSchema, namespace: string): [AvroSchema, string] {
    for (let i = 0; i < 64; i++) {
      // bounded: a name cannot refer to itself through wrappers forever
      if (typeof schema === "string" && !PRIMITIVES.has(schema)) {
        const found = this.names.get(Encoder.fullname(schema, namespace)) ?? this.names.get(schema);
        if (found === undefined) return [schema, namespace];
        schema = found;
      } else if (isRecord(schema)) {
        const kind = schema.type;
        const wrapper =
          Array.isArray(kind) ||
          isRecord(kind) ||
          !(PRIMITIVES.has(kind as string) || NAMED.has(kind as string) || kind === "array" || kind === "map");
        if (!wrapper) break;
        schema = kind;
      } else {
        break;
      }
    }
    const fullname = this.fullnames.get(schema);
    if (fullname !== undefined) namespace = fullname.slice(0, Math.max(0, fullname.lastIndexOf(".")));
    return [schema, namespace];
  }

  /** The name Avro's JSON encoding tags a resolved union branch with. */
  typeName(schema: AvroSchema): string {
    return typeof schema === "string" ? schema : (this.fullnames.get(schema) ?? String(field(schema, "type")));
  }

  fits(schema: AvroSchema, value: unknown, namespace: string): boolean {
    [schema, namespace] = this.resolve(schema, namespace);
    if (Array.isArray(schema)) return false; // a union directly inside a union is not Avro
    const kind = typeof schema === "string" ? schema : field(schema, "type");
    const logical = field(schema, "logicalType");
    switch (kind) {
      case "null":
        return value === null;
      case "boolean":
        return typeof value === "boolean";
      case "int":
      case "long":
        return (
          Number.isInteger(value) ||
          typeof value === "bigint" ||
          (value instanceof Date && (kind === "long" || logical === "date"))
        );
      case "float":
      case "double":
        return typeof value === "number" || typeof value === "bigint";
      case "bytes":
      case "fixed":
        return value instanceof Uint8Array;
      case "string":
        return typeof value === "string";
      case "enum": {
        const symbols = field(schema, "symbols");
        return Array.isArray(symbols) && symbols.includes(value);
      }
      case "array":
        return Array.isArray(value);
      case "map":
        return value instanceof Map || isRecord(value);
      case "record":
      case "error": {
        const fields = field(schema, "fields");
        const names = new Set((Array.isArray(fields) ? fields : []).map((f) => field(f, "name")));
        return isRecord(value) && Object.keys(value).every((key) => names.has(key) || value[key] === undefined);
      }
    }
    return false;
  }

  encode(schema: AvroSchema, value: unknown, path: string, namespace: string): Json {
    if (Array.isArray(schema)) return this.union(schema, value, path, namespace);
    [schema, namespace] = this.resolve(schema, namespace);
    if (Array.isArray(schema)) return this.union(schema, value, path, namespace);
    if (!isRecord(schema) || !this.fits(schema, value, namespace)) return plain(value, path);
    const kind = schema.type;
    if (kind === "record" || kind === "error") {
      const fields = new Map<unknown, unknown>(
        (schema.fields as unknown[]).map((f) => [field(f, "name"), field(f, "type")]),
      );
      const entries = entriesOf(value, path) ?? [];
      return new Map(
        entries.map(([key, item]) => [
          key,
          fields.has(key)
            ? this.encode(fields.get(key), item, join(path, key), namespace)
            : plain(item, join(path, key)),
        ]),
      );
    }
    if (kind === "array") {
      return (value as unknown[]).map((item, i) => this.encode(schema.items, item, `${path}[${i}]`, namespace));
    }
    if (kind === "map") {
      const entries = entriesOf(value, path) ?? [];
      return new Map(entries.map(([key, item]) => [key, this.encode(schema.values, item, join(path, key), namespace)]));
    }
    return plain(value, path, typeof schema.logicalType === "string" ? schema.logicalType : undefined);
  }

  union(branches: AvroSchema[], value: unknown, path: string, namespace: string): Json {
    if (value === null) return null;
    for (const branch of branches) {
      if (this.fits(branch, value, namespace)) {
        const [resolved] = this.resolve(branch, namespace);
        return new Map([[this.typeName(resolved), this.encode(branch, value, path, namespace)]]);
      }
    }
    return plain(value, path);
  }
}
