// Against a real local stack (test/stack.ts): the example, the client's calls and errors as the
// gateway sends them, quotas with RetryInfo, and watches that outlive gateway restarts.
//
// Skipped when the broker, the binaries or the model are missing, unless
// SLUICE_SDK_REQUIRE_STACK=1 (sdk/typescript/check sets it): then that is a failure.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import {
  Client,
  FailedPrecondition,
  InvalidArgument,
  NotFound,
  PermissionDenied,
  ResourceExhausted,
  RetryPolicy,
  type ClientOptions,
  type Ingestion,
  type IngestionEvent,
} from "sluice-client";
import { findTools, LocalStack, within } from "./stack.js";

const SAMPLES: { id: string; title: string; text: string }[] = JSON.parse(
  readFileSync(new URL("../../../../deploy/dev/samples.json", import.meta.url), "utf8"),
);
const EXAMPLE = fileURLToPath(new URL("../examples/ingest-folder.js", import.meta.url));

const tools = findTools();
const required = process.env.SLUICE_SDK_REQUIRE_STACK === "1";
const skip = typeof tools === "string" && !required ? tools : false;

describe("against a local stack", () => {
  let stack: LocalStack;
  let root: string;

  before(
    async () => {
      if (skip) return;
      if (typeof tools === "string") throw new Error(`the local stack cannot start: ${tools}`);
      root = mkdtempSync(join(tmpdir(), "sluice-sdk-ts-"));
      stack = new LocalStack(tools, join(root, "stack"));
      mkdirSync(stack.root);
      await stack.start();
    },
    { timeout: 300_000 },
  );

  after(async () => {
    if (!stack) return;
    await stack.close();
    console.log(`sluice.log (${stack.gatewayStarts} start(s)):\n${stack.logTail(15)}`);
    rmSync(root, { recursive: true, force: true });
  });

  const connect = (options: ClientOptions = {}) =>
    Client.fromDirectory(stack.target, stack.tls, { tenant: stack.tenant, ...options });

  async function using<T>(sluice: Client, body: (sluice: Client) => Promise<T>): Promise<T> {
    try {
      return await body(sluice);
    } finally {
      sluice.close();
    }
  }

  test("the example ingests a folder, watches and searches", { skip, timeout: 300_000 }, async () => {
    const folder = join(root, "notes");
    mkdirSync(folder);
    for (const s of SAMPLES) writeFileSync(join(folder, `${s.id}.txt`), `${s.title}\n\n${s.text}\n`);
    const args = [
      EXAMPLE,
      folder,
      "--target",
      stack.target,
      "--certs",
      stack.tls,
      "--tenant",
      stack.tenant,
      "--query",
      "how do glaciers shape the land",
    ];
    const { code, stdout, stderr } = await new Promise<{ code: number | null; stdout: string; stderr: string }>(
      (resolve) => {
        const child = execFile(process.execPath, args, { timeout: 280_000 }, (_, stdout, stderr) =>
          resolve({ code: child.exitCode, stdout, stderr }),
        );
      },
    );
    console.log(stdout);
    assert.equal(code, 0, stdout + stderr + stack.logTail());
    assert.ok(stdout.includes(`indexed ${SAMPLES.length} of ${SAMPLES.length}`), stdout);
    const hits = stdout
      .split("\n")
      .filter((line) => line.startsWith("  0."))
      .map((line) => line.trim().split(/\s+/));
    const glacier = SAMPLES.find((s) => s.title.includes("lacier"))!.id;
    assert.equal(hits[0]?.[1], `${glacier}.txt`, stdout);
  });

  test("ingest, search, delete and schemas", { skip, timeout: 300_000 }, () =>
    using(connect(), async (sluice) => {
      const fields = { title: "Tides", text: "The moon pulls the sea twice a day." };
      const ingestion = await sluice.ingest("tides", fields, { attributes: { kind: "note" }, wait: true });
      assert.equal(ingestion.state, "INDEXED");
      assert.ok(
        ingestion.chunkCount >= 1 && ingestion.acceptedAt instanceof Date && ingestion.completedAt instanceof Date,
      );
      assert.deepEqual(await sluice.getIngestion(ingestion.ingestionId), ingestion);
      const hits = await sluice.search("what moves the tides", { topK: 3, filters: { kind: "note" } });
      assert.equal(hits[0]?.documentId, "tides");
      assert.equal(hits[0]?.attributes.kind, "note");
      assert.equal(hits[0]?.attributes.title, "Tides");

      // A schema of the tenant's own; strict Avro JSON (tagged unions) from its definition.
      const definition = {
        type: "record",
        name: "Article",
        namespace: "com.example",
        fields: [
          { name: "headline", type: "string", "sluice.role": "attribute" },
          { name: "body", type: "string", "sluice.role": "text" },
          { name: "pages", type: ["null", "int", "string"], default: null },
        ],
      };
      const schema = await sluice.registerSchema("article", definition);
      assert.equal(schema.version, 1);
      assert.equal(schema.textField, "body");
      assert.ok((await sluice.listSchemas()).includes("article"));
      const avroSchema = (await sluice.getSchema("article")).definition;
      const article = await sluice.ingest(
        "a-1",
        { headline: "Ebb", body: "The sea withdraws.", pages: 3 },
        { schema: "article", avroSchema, wait: true },
      );
      assert.equal(article.state, "INDEXED");
      const incompatible = { ...definition, fields: [...definition.fields, { name: "isbn", type: "string" }] };
      await assert.rejects(sluice.registerSchema("article", incompatible), (e: unknown) => {
        assert.ok(e instanceof FailedPrecondition, String(e));
        assert.equal(e.preconditionViolations[0]?.type, "COMPATIBILITY");
        return true;
      });

      const deleted = await sluice.delete("tides", { wait: true });
      assert.equal(deleted.state, "DELETED");
      assert.ok(!(await sluice.search("what moves the tides", { topK: 5 })).some((h) => h.documentId === "tides"));
    }),
  );

  test("errors carry the gateway's details", { skip, timeout: 60_000 }, () =>
    using(connect(), async (sluice) => {
      await assert.rejects(
        sluice.ingestMany([
          ["ok", { text: "fine" }],
          ["bad", { text: 5, tags: ["a", 1] }],
        ]),
        (e: unknown) => {
          assert.ok(e instanceof InvalidArgument, String(e));
          const fields = new Set(e.fieldViolations.map((v) => v.field));
          assert.deepEqual(
            fields,
            new Set(["documents[1].avro_json.text", "documents[1].avro_json.tags[1]"]),
            String(e),
          );
          return true;
        },
      );
      await assert.rejects(sluice.getIngestion("no-such-ingestion"), NotFound);
    }),
  );

  test("quotas are waited out when RetryInfo says so", { skip, timeout: 120_000 }, async () => {
    await stack.admin("tenant", "create", "tight", "--name", "Tight quotas");
    await stack.admin("tenant", "quotas", "tight", "--documents-per-second", "5", "--max-top-k", "2");
    const certs = join(stack.root, "tight-certs");
    await stack.admin("cert", "client", "tight", "--ca-dir", stack.tls, "--out", certs);
    const logged: string[] = [];
    // This directory has no ca.pem (cert client --out writes only the pair): name the CA.
    const sluice = Client.fromDirectory(stack.target, certs, {
      ca: join(stack.tls, "ca.pem"),
      log: (m) => logged.push(m),
    });
    await using(sluice, async () => {
      const deadline = performance.now() + 10_000; // the gateway picks registry changes up within a second or so
      for (;;) {
        try {
          await sluice.search("anything", { topK: 3 });
        } catch (e) {
          if (e instanceof ResourceExhausted) {
            assert.equal(e.quotaViolations[0]?.subject, "max_top_k");
            assert.equal(e.retryDelayMs, undefined);
            break;
          }
          if (!(e instanceof PermissionDenied)) throw e; // the new tenant is not known yet
        }
        assert.ok(performance.now() < deadline, "the max_top_k quota did not take effect");
        await sleep(500);
      }
      const started = performance.now();
      for (let n = 0; n < 3; n++) {
        // 15 documents at 5 a second: RESOURCE_EXHAUSTED with RetryInfo, waited out.
        const accepted = await sluice.ingestMany(
          Array.from({ length: 5 }, (_, i) => [`q-${n}-${i}`, { text: `quota ${n} ${i}` }] as const),
        );
        assert.equal(accepted.length, 5);
      }
      assert.ok(performance.now() - started >= 1000);
      assert.ok(
        logged.some((m) => m.includes("RESOURCE_EXHAUSTED") && m.includes("retrying")),
        `no retry? ${logged}`,
      );
      // Over a second's worth: no RetryInfo, no retry.
      await assert.rejects(
        sluice.ingestMany(Array.from({ length: 6 }, (_, i) => [`big-${i}`, { text: "x" }] as const)),
        (e: unknown) => {
          assert.ok(e instanceof ResourceExhausted, String(e));
          assert.equal(e.retryDelayMs, undefined);
          assert.equal(e.quotaViolations[0]?.subject, "documents_per_second");
          return true;
        },
      );
    });
  });

  // 120 documents in batches: six before the first restart, four during it, then twenty at once
  // right before the second.
  const DOCS = 120;

  test(
    "a watch resumes across gateway restarts with no event missed or repeated",
    { skip, timeout: 600_000 },
    async () => {
      // Two watchers follow the tenant's events from a cursor while 120 documents are ingested
      // and the gateway is stopped twice: gracefully (SIGTERM) while documents are being written,
      // then killed (SIGKILL) while the last batch is being indexed. Each watcher must see exactly
      // the 240 events (ACCEPTED, then INDEXED, per document), in cursor order, once each, and must
      // have resumed at both stops.
      const patient = new RetryPolicy({ maxAttempts: 60, initialBackoffMs: 100, maxBackoffMs: 1000 });
      const start = await using(connect(), async (sluice) => {
        const seed = await sluice.ingest("seed", { text: "Where the watch starts." }, { wait: true });
        let cursor = "";
        for await (const event of sluice.watch({ ingestionIds: [seed.ingestionId] })) cursor = event.cursor;
        return cursor;
      });

      const expected = 2 * DOCS;
      const failures: unknown[] = [];
      const watchers = ["a", "b"].map((name) => {
        const events: IngestionEvent[] = [];
        const logged: string[] = [];
        const done = using(connect({ watchRetry: patient, log: (m) => logged.push(m) }), async (watcher) => {
          for await (const event of watcher.watch({ afterCursor: start, timeoutMs: 300_000 })) {
            events.push(event);
            if (events.length === expected) return;
          }
        }).catch((e: unknown) => void failures.push(e));
        return { name, events, logged, done };
      });
      const counts = () => watchers.map((w) => w.events.length);
      await sleep(1000); // both streams open

      const writes: string[] = [];
      const writer = connect({ retry: patient, timeoutMs: 120_000, log: (m) => writes.push(m) });
      const ids: string[] = [];
      const ingest = async (batch: number, size = 10) => {
        const docs = Array.from(
          { length: size },
          (_, i) => [`resume-${batch}-${i}`, { text: `Resume test document ${batch}.${i}: the tide turns.` }] as const,
        );
        ids.push(...(await writer.ingestMany(docs)).map((i) => i.ingestionId));
      };
      const waitUntil = async (condition: string, check: () => boolean) => {
        const deadline = performance.now() + 120_000;
        while (!check()) {
          assert.deepEqual(failures, []);
          assert.ok(performance.now() < deadline, `timed out waiting until ${condition}; events ${counts()}`);
          await sleep(50);
        }
      };
      const t0 = performance.now();
      const phases: string[] = [];
      const phase = (name: string) => phases.push(`${name} +${((performance.now() - t0) / 1000).toFixed(1)} s`);

      try {
        for (let batch = 0; batch < 6; batch++) await ingest(batch);
        await waitUntil("the watchers are mid-way", () => Math.min(...counts()) >= 40);
        phase("60 documents in, watchers mid-way");
        // Graceful: streams end UNAVAILABLE; the batches written meanwhile are retried (same key).
        const writing = (async () => {
          for (let batch = 6; batch < 10; batch++) await ingest(batch);
        })();
        await stack.stopGateway();
        await sleep(500);
        await stack.startGateway();
        phase("SIGTERM, restarted");
        await within(writing, 120_000, "the writes during the restart");
        // Both watchers resumed on the new instance before it is killed.
        await waitUntil("the watchers resumed", () => Math.min(...counts()) >= 2 * 100);
        phase("100 documents in, watchers resumed");
        // Killed right after a batch is accepted, while it is being indexed: connections reset,
        // the worker redoes its open transaction.
        await ingest(10, 20);
        await stack.killGateway();
        const atKill = counts();
        await sleep(500);
        await stack.startGateway();
        phase("SIGKILL, restarted");
        assert.ok(Math.max(...atKill) < expected, `indexing finished before the kill: ${atKill}`);
      } finally {
        writer.close();
      }

      await within(Promise.all(watchers.map((w) => w.done)), 240_000, "the watchers' last events").catch((e: unknown) =>
        failures.push(e),
      );
      phase("watchers done");
      console.log(phases.join(", "));
      for (const { name, logged } of [...watchers, { name: "writer", logged: writes }]) {
        console.log(`${name}:\n  ${logged.join("\n  ") || "(no retries)"}`);
      }
      assert.deepEqual(failures, []);
      assert.equal(ids.length, DOCS);
      assert.equal(new Set(ids).size, DOCS);
      for (const { name, events, logged } of watchers) {
        assert.equal(events.length, expected, `${name}: ${events.length} events`);
        const cursors = events.map((e) => Number(e.cursor));
        assert.deepEqual(
          cursors,
          [...cursors].sort((x, y) => x - y),
          `${name}: cursors out of order`,
        );
        assert.equal(new Set(cursors).size, expected, `${name}: a cursor was repeated`);
        const seen = events.map((e) => `${e.ingestion.ingestionId} ${e.ingestion.state}`);
        assert.equal(new Set(seen).size, expected, `${name}: an event was repeated`);
        assert.deepEqual(new Set(seen), new Set(ids.flatMap((i) => [`${i} ACCEPTED`, `${i} INDEXED`])), name);
        for (const i of ids)
          assert.ok(seen.indexOf(`${i} ACCEPTED`) < seen.indexOf(`${i} INDEXED`), `${name}: ${i} out of order`);
        // Each watcher's stream really broke, at both restarts: it resumed from two cursors at least.
        const resumed = new Set(logged.flatMap((m) => /resuming after cursor '(\d+)'/.exec(m)?.[1] ?? []));
        assert.ok(resumed.size >= 2, `${name} resumed after ${[...resumed]}`);
      }
      assert.equal(stack.gatewayStarts, 3);
      const ended: Map<string, Ingestion> = await using(connect(), (sluice) =>
        sluice.waitFor(ids, { timeoutMs: 60_000 }),
      );
      assert.ok([...ended.values()].every((i) => i.state === "INDEXED"));
    },
  );
});
