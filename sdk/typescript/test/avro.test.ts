// Avro JSON from JavaScript values, without and with the document's schema.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { toAvroJson } from "sluice-client";

const DEFAULT_SCHEMA = readFileSync(new URL("../../../../schemas/document.avsc", import.meta.url), "utf8");
const avro = (fields: object, schema?: string | object): unknown => JSON.parse(toAvroJson(fields, schema));

class Point {
  constructor(
    readonly x: number,
    readonly y: number,
  ) {}
}

test("plain values map to JSON", () => {
  assert.deepEqual(
    avro({
      text: "Tides follow the moon.",
      title: null,
      count: 3,
      ratio: 0.5,
      ok: true,
      tags: ["a", "b"],
      raw: new Uint8Array([0x00, 0x7f, 0xff]),
      at: new Date(Date.UTC(2024, 0, 1, 0, 0, 0, 1)),
      big: 2n ** 60n,
      left: undefined,
      point: new Point(1, 2),
      map: new Map([["k", 1]]),
      nested: { k: [1, { z: null }] },
    }),
    {
      text: "Tides follow the moon.",
      title: null,
      count: 3,
      ratio: 0.5,
      ok: true,
      tags: ["a", "b"],
      raw: "\u0000\u007f\u00ff",
      at: 1704067200001,
      big: 2 ** 60,
      point: { x: 1, y: 2 },
      map: { k: 1 },
      nested: { k: [1, { z: null }] },
    },
  );
  // bigint is written exactly, past what a double holds.
  assert.equal(toAvroJson({ n: 2n ** 63n - 1n }), '{"n":9223372036854775807}');
  // A Buffer is bytes too; a key like __proto__ is just a key.
  assert.equal(
    toAvroJson({ b: Buffer.from([1, 2]), m: new Map([["__proto__", "x"]]) }),
    '{"b":"\\u0001\\u0002","m":{"__proto__":"x"}}',
  );
});

test("non-ASCII text stays text", () => {
  assert.equal(toAvroJson({ text: "Gezeiten — 潮" }), '{"text":"Gezeiten — 潮"}');
});

test("what has no encoding is named by its path", () => {
  const cases: [object, RegExp][] = [
    [{ x: NaN }, /^x: NaN has no JSON encoding$/],
    [{ at: new Date(NaN) }, /^at: an invalid Date/],
    [{ m: new Map([[1, "a"]]) }, /^m: keys must be strings/],
    [{ s: new Set([1, 2]) }, /^s: Set has no Avro JSON encoding$/],
    [{ a: [() => 1] }, /^a\[0\]: function has no Avro JSON encoding$/],
    [{ a: [1, undefined] }, /^a\[1\]: undefined has no Avro JSON encoding$/],
  ];
  for (const [fields, problem] of cases) assert.throws(() => toAvroJson(fields), { message: problem });
});

test("a document must be an object of fields", () => {
  assert.throws(() => toAvroJson(["text"]), TypeError);
  assert.throws(() => toAvroJson(new Date()), TypeError);
});

test("with the default schema, unions are tagged", () => {
  const moment = new Date(Date.UTC(2024, 0, 1));
  assert.deepEqual(
    avro(
      { title: "Tides", text: "The moon pulls the sea.", language: null, tags: ["sea"], created_at: moment },
      DEFAULT_SCHEMA,
    ),
    {
      title: { string: "Tides" },
      text: "The moon pulls the sea.",
      language: null,
      tags: ["sea"],
      created_at: { long: 1704067200000 },
    },
  );
});

test("fields left out stay out, for their defaults", () => {
  assert.deepEqual(avro({ text: "only text", title: undefined }, DEFAULT_SCHEMA), { text: "only text" });
});

const SCHEMA = {
  type: "record",
  name: "Article",
  namespace: "com.example",
  fields: [
    { name: "body", type: "string" },
    { name: "n", type: ["null", "int", "string"] },
    { name: "when", type: ["null", { type: "long", logicalType: "timestamp-micros" }] },
    { name: "day", type: ["null", { type: "int", logicalType: "date" }] },
    { name: "kind", type: ["null", { type: "enum", name: "Kind", symbols: ["NEWS", "NOTE"] }] },
    {
      name: "author",
      type: [
        "null",
        {
          type: "record",
          name: "Person",
          namespace: "org.people",
          fields: [
            { name: "name", type: "string" },
            { name: "nick", type: ["null", "string"] },
          ],
        },
      ],
    },
    { name: "editor", type: ["null", "org.people.Person"] },
    { name: "related", type: { type: "array", items: ["null", "Kind"] } },
    { name: "scores", type: { type: "map", values: ["null", "double"] } },
    { name: "blob", type: ["null", "bytes"] },
  ],
};

test("named types, nested unions and logical types", () => {
  assert.deepEqual(
    avro(
      {
        body: "b",
        n: 5,
        when: new Date(1000),
        day: new Date(Date.UTC(1970, 0, 11, 15)),
        kind: "NEWS",
        author: { name: "Ada", nick: "ada" },
        editor: { name: "Bo" },
        related: ["NOTE", null],
        scores: { a: 1.5, b: null, c: 2 },
        blob: new Uint8Array([1]),
      },
      SCHEMA,
    ),
    {
      body: "b",
      n: { int: 5 },
      when: { long: 1_000_000 },
      day: { int: 10 },
      kind: { "com.example.Kind": "NEWS" },
      author: { "org.people.Person": { name: "Ada", nick: { string: "ada" } } },
      editor: { "org.people.Person": { name: "Bo" } },
      related: [{ "com.example.Kind": "NOTE" }, null],
      scores: { a: { double: 1.5 }, b: null, c: { double: 2 } },
      blob: { bytes: "\u0001" },
    },
  );
});

test("the first branch that fits wins, and booleans are not ints", () => {
  assert.deepEqual(avro({ n: "five" }, SCHEMA), { n: { string: "five" } });
  assert.deepEqual(avro({ n: 2.5 }, SCHEMA), { n: 2.5 }); // no branch fits: passed through
  // No branch fits a boolean: passed through for the gateway to name the field.
  assert.deepEqual(avro({ n: true }, SCHEMA), { n: true });
});

test("what does not fit the schema is passed through for the gateway to report", () => {
  assert.deepEqual(avro({ body: 3, unknown: "x", kind: "OTHER" }, SCHEMA), { body: 3, unknown: "x", kind: "OTHER" });
});

test("the schema as JSON text or parsed", () => {
  assert.equal(toAvroJson({ n: 1 }, JSON.stringify(SCHEMA)), '{"n":{"int":1}}');
  assert.equal(toAvroJson({ n: 1 }, SCHEMA), '{"n":{"int":1}}');
});
