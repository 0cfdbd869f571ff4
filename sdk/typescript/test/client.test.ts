// The client's own logic against the fake gateway: batching, watch resumption (no event missed
// or repeated across broken streams), waitFor, search results.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterEach, beforeEach, test } from "node:test";
import {
  batches,
  Client,
  Code,
  DeadlineExceeded,
  InvalidArgument,
  NotFound,
  OutOfRange,
  RetryPolicy,
  Unavailable,
  WaitTimeout,
  type ClientOptions,
  type DocumentLike,
  type IngestionEvent,
} from "sluice-client";
import { IngestionSchema } from "sluice-client/gen/sluice/v1/ingest_pb.js";
import { create } from "@bufbuild/protobuf";
import { ACCEPTED, INDEXED, ingestion, Running } from "./fakes.js";

const FAST = new RetryPolicy({ maxAttempts: 5, initialBackoffMs: 10, maxBackoffMs: 20 });

let running: Running;
beforeEach(async () => {
  running = await Running.start();
});
afterEach(() => running.stop());

async function using<T>(options: ClientOptions, body: (sluice: Client) => Promise<T>): Promise<T> {
  const sluice = new Client(running.target, { devTenant: "t", timeoutMs: 10_000, watchRetry: FAST, ...options });
  try {
    return await body(sluice);
  } finally {
    sluice.close();
  }
}

const states = (events: IngestionEvent[]) => events.map((e) => [e.ingestion.ingestionId, e.ingestion.state]);

test("batches split by count and by bytes, in order", () => {
  const docs: DocumentLike[] = Array.from({ length: 25 }, (_, i) => [`d${i}`, { text: "x".repeat(100) }]);
  const byCount = [...batches(docs, 10, 1 << 20)];
  assert.deepEqual(
    byCount.map((b) => b.length),
    [10, 10, 5],
  );
  assert.deepEqual(
    byCount.flat().map((d) => d.documentId),
    docs.map((_, i) => `d${i}`),
  );
  const byBytes = [...batches(docs, 100, 3 * 130)];
  assert.ok(byBytes.every((b) => b.length <= 3));
  assert.equal(byBytes.flat().length, 25);
  // One document larger than the limit goes alone.
  const big = [
    ...batches(
      [
        ["big", { text: "y".repeat(1000) }],
        ["s", { text: "" }],
      ],
      10,
      100,
    ),
  ];
  assert.deepEqual(
    big.map((b) => b.length),
    [1, 1],
  );
});

test("ingestMany calls IngestBatch per batch, with a key each", async () => {
  const docs: DocumentLike[] = Array.from({ length: 7 }, (_, i) => ({
    documentId: `d${i}`,
    fields: { text: String(i) },
    attributes: { k: "v" },
  }));
  docs.push(["pair", { text: "a pair" }]);
  const ingestions = await using({ batchSize: 3 }, (sluice) => sluice.ingestMany(docs));
  assert.deepEqual(running.fake.batchSizes, [3, 3, 2]);
  assert.deepEqual(
    ingestions.map((i) => i.documentId),
    [...Array.from({ length: 7 }, (_, i) => `d${i}`), "pair"],
  );
  assert.equal(new Set(running.fake.writeKeys).size, 3);
  const first = running.fake.documents[0]!;
  assert.deepEqual(
    [first.payload.case, first.payload.value, first.attributes],
    ["avroJson", '{"text":"0"}', { k: "v" }],
  );
});

test("a batch over maxBatchBytes is split", async () => {
  const docs: DocumentLike[] = Array.from({ length: 10 }, (_, i) => [`d${i}`, { text: "z".repeat(1000) }]);
  await using({ maxBatchBytes: 2500 }, (sluice) => sluice.ingestMany(docs));
  assert.deepEqual(running.fake.batchSizes, [2, 2, 2, 2, 2]);
});

test("a failed batch reports what was accepted before it", async () => {
  running.fake.refusals = [
    null,
    { code: Code.InvalidArgument, message: "bad", fields: [["documents[1].document_id", "bad"]] },
  ];
  await using({ batchSize: 2 }, async (sluice) => {
    await assert.rejects(sluice.ingestMany([..."abcde"].map((name) => [name, { text: "" }] as const)), (e: unknown) => {
      assert.ok(e instanceof InvalidArgument);
      assert.deepEqual(
        e.accepted.map((i) => i.documentId),
        ["a", "b"],
      );
      assert.equal(e.fieldViolations[0]?.field, "documents[1].document_id");
      return true;
    });
  });
  assert.deepEqual(running.fake.batchSizes, [2, 2]);
});

test("getIngestion", async () => {
  running.fake.addEvents(ingestion(1, ACCEPTED), ingestion(1, INDEXED));
  await using({}, async (sluice) => {
    const found = await sluice.getIngestion("ing-1");
    assert.equal(found.state, "INDEXED");
    assert.ok(found.finished);
    await assert.rejects(sluice.getIngestion("ing-2"), NotFound);
  });
});

test("watch resumes after each broken stream, with no event missed or repeated", async () => {
  for (let i = 0; i < 30; i++) running.fake.addEvents(ingestion(i, ACCEPTED));
  for (let i = 0; i < 30; i++) running.fake.addEvents(ingestion(i, INDEXED));
  running.fake.breakEvery = 7;
  running.fake.breaks = 100;
  const logged: string[] = [];
  const events: IngestionEvent[] = [];
  await using({ log: (m) => logged.push(m) }, async (sluice) => {
    for await (const event of sluice.watch({ afterCursor: "0" })) {
      events.push(event);
      if (events.length === 60) break;
    }
  });
  assert.deepEqual(
    events.map((e) => e.cursor),
    Array.from({ length: 60 }, (_, n) => String(n + 1)),
  );
  assert.deepEqual(states(events), [
    ...Array.from({ length: 30 }, (_, i) => [`ing-${i}`, "ACCEPTED"]),
    ...Array.from({ length: 30 }, (_, i) => [`ing-${i}`, "INDEXED"]),
  ]);
  // Each new stream asked for the events after the last one received.
  assert.deepEqual(
    running.fake.watchRequests.slice(0, 4).map((r) => r.afterCursor),
    ["0", "7", "14", "21"],
  );
  assert.match(
    logged[0]!,
    /^watch stream broke \(UNAVAILABLE: gateway is shutting down.*\); resuming after cursor '7' in 0\.0\d s$/,
  );
});

test("a watch whose connection drops resumes after its last cursor", async () => {
  for (let i = 0; i < 3; i++) running.fake.addEvents(ingestion(i, ACCEPTED));
  running.fake.holdStreams = true;
  const logged: string[] = [];
  const cursors: string[] = [];
  await using({ log: (m) => logged.push(m) }, async (sluice) => {
    for await (const event of sluice.watch({ afterCursor: "0" })) {
      cursors.push(event.cursor);
      if (cursors.length === 3) {
        // As a gateway that is killed: the connection is gone, no status sent.
        running.fake.addEvents(ingestion(3, ACCEPTED), ingestion(4, ACCEPTED));
        running.dropConnections();
      }
      if (cursors.length === 5) break;
    }
  });
  assert.deepEqual(cursors, ["1", "2", "3", "4", "5"]);
  assert.deepEqual(
    running.fake.watchRequests.map((r) => r.afterCursor),
    ["0", "3"],
  );
  assert.match(
    logged[0]!,
    /^watch stream broke \(UNAVAILABLE: the connection to the gateway broke .*\); resuming after cursor '3'/,
  );
});

test("leaving a watch early leaves nothing that holds the process open", async () => {
  running.fake.addEvents(ingestion(1, ACCEPTED), ingestion(2, ACCEPTED));
  running.fake.holdStreams = true;
  const script = fileURLToPath(new URL("./leave-watch.js", import.meta.url));
  const started = performance.now();
  const { stdout } = await promisify(execFile)(process.execPath, [script, running.target], { timeout: 30_000 });
  assert.equal(stdout, "event 1\n");
  assert.ok(performance.now() - started < 10_000, "the watch's 60 s deadline kept the process alive");
});

test("a watch ends DEADLINE_EXCEEDED when its timeout passes", async () => {
  running.fake.addEvents(ingestion(1, ACCEPTED));
  running.fake.holdStreams = true;
  const cursors: string[] = [];
  await using({}, async (sluice) => {
    const started = performance.now();
    await assert.rejects(async () => {
      for await (const event of sluice.watch({ afterCursor: "0", timeoutMs: 300 })) cursors.push(event.cursor);
    }, DeadlineExceeded);
    assert.ok(performance.now() - started < 3000);
  });
  assert.deepEqual(cursors, ["1"]);
  assert.equal(running.fake.watchRequests.length, 1);
});

test("watching ids restarts a broken snapshot and hands out each state once", async () => {
  for (let i = 0; i < 5; i++) running.fake.addEvents(ingestion(i, ACCEPTED));
  for (let i = 0; i < 3; i++) running.fake.addEvents(ingestion(i, INDEXED));
  const ids = Array.from({ length: 5 }, (_, i) => `ing-${i}`);
  running.fake.breakEvery = 2; // the first stream breaks inside the snapshot
  running.fake.breaks = 1;
  const seen: string[] = [];
  await using({}, async (sluice) => {
    for await (const event of sluice.watch({ ingestionIds: ids })) {
      seen.push(`${event.ingestion.ingestionId} ${event.ingestion.state}`);
      if (seen.length === 2) for (let i = 3; i < 5; i++) running.fake.addEvents(ingestion(i, INDEXED));
    }
  });
  // The snapshot said ing-0 and ing-1 were INDEXED; the new snapshot repeats them (dropped) and
  // shows the rest as they are now.
  assert.deepEqual(
    [...seen].sort(),
    ids.map((i) => `${i} INDEXED`),
  );
  assert.deepEqual(
    running.fake.watchRequests.map((r) => r.afterCursor),
    ["", ""],
  );
});

test("watch gives up after its attempts in a row", async () => {
  running.fake.watchRefusal = { code: Code.Unavailable, message: "down", retryDelayMs: 1 };
  await using({}, async (sluice) => {
    await assert.rejects(async () => {
      for await (const _ of sluice.watch()) void _;
    }, Unavailable);
  });
  assert.equal(running.fake.watchRequests.length, FAST.maxAttempts);
});

test("an expired cursor is OUT_OF_RANGE at once", async () => {
  running.fake.watchRefusal = {
    code: Code.OutOfRange,
    message: "the events after this cursor are older than the gateway keeps",
  };
  await using({}, async (sluice) => {
    await assert.rejects(sluice.watch({ afterCursor: "1" }).next(), OutOfRange);
  });
  assert.equal(running.fake.watchRequests.length, 1);
});

test("waitFor resolves to each ingestion as it ended, in the order given", async () => {
  for (let i = 0; i < 4; i++) running.fake.addEvents(ingestion(i, ACCEPTED), ingestion(i, INDEXED));
  const ended = await using({ batchSize: 3 }, (sluice) => sluice.waitFor([3, 0, 1, 2, 0].map((i) => `ing-${i}`)));
  assert.deepEqual([...ended.keys()], ["ing-3", "ing-0", "ing-1", "ing-2"]);
  assert.ok([...ended.values()].every((i) => i.state === "INDEXED" && i.finished));
  assert.deepEqual(
    running.fake.watchRequests.map((r) => r.ingestionIds.length),
    [3, 1],
  );
});

test("waitFor times out with what finished", async () => {
  running.fake.addEvents(ingestion(0, ACCEPTED), ingestion(0, INDEXED), ingestion(1, ACCEPTED));
  // The fake ends a stream once its log is sent; a real gateway waits. Either way ing-1 never ends.
  const slow = new RetryPolicy({ maxAttempts: 1000, initialBackoffMs: 50, maxBackoffMs: 50 });
  await using({ watchRetry: slow }, async (sluice) => {
    const started = performance.now();
    await assert.rejects(sluice.waitFor(["ing-0", "ing-1"], { timeoutMs: 500 }), (e: unknown) => {
      assert.ok(e instanceof WaitTimeout);
      assert.equal(e.code, Code.DeadlineExceeded);
      assert.deepEqual([...e.finished.keys()], ["ing-0"]);
      assert.deepEqual(e.pending, ["ing-1"]);
      return true;
    });
    assert.ok(performance.now() - started < 2000);
  });
});

test("ingestMany with wait resolves to the ended ingestions", async () => {
  await using({ batchSize: 2 }, async (sluice) => {
    const accepted = await sluice.ingestMany([0, 1, 2].map((i) => [`d${i}`, { text: String(i) }] as const));
    for (const a of accepted) {
      running.fake.addEvents(
        create(IngestionSchema, { ingestionId: a.ingestionId, documentId: a.documentId, state: INDEXED }),
      );
    }
    const ended = await sluice.waitFor(accepted.map((a) => a.ingestionId));
    assert.deepEqual(
      [...ended.values()].map((e) => e.documentId),
      ["d0", "d1", "d2"],
    );
  });
  assert.deepEqual(running.fake.batchSizes, [2, 1]);
});

test("search returns typed hits", async () => {
  const hits = await using({}, (sluice) => sluice.search("tides", { topK: 2, filters: { kind: "sample" } }));
  assert.equal(hits.length, 2);
  assert.deepEqual(
    { ...hits[0]! },
    { documentId: "d0", chunkIndex: 0, text: "tides", score: 1, attributes: { kind: "sample" } },
  );
  assert.equal(hits[1]!.documentId, "d1");
  assert.ok(Math.abs(hits[1]!.score - 0.9) < 1e-6);
});
