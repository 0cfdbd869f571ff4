// The retry policy, alone and over the wire (fake gateway): bounded, honouring RetryInfo, one
// idempotency key per write.

import assert from "node:assert/strict";
import { createServer } from "node:net";
import { afterEach, beforeEach, test } from "node:test";
import {
  Aborted,
  Client,
  Code,
  InvalidArgument,
  NO_RETRY,
  ResourceExhausted,
  RetryPolicy,
  SluiceError,
  Unavailable,
  type ClientOptions,
} from "sluice-client";
import { Running } from "./fakes.js";

const U = Code.Unavailable;
const err = (code: Code, retryDelayMs?: number) => new SluiceError(code, "x", { retryDelayMs });
const close = (a: number, b: number) => assert.ok(Math.abs(a - b) < 1e-9, `${a} != ${b}`);

test("which codes are retried", () => {
  const policy = new RetryPolicy();
  assert.ok(policy.retries(err(U), 1));
  assert.ok(policy.retries(err(Code.Aborted), 1));
  assert.ok(policy.retries(err(Code.ResourceExhausted, 500), 1));
  // Without RetryInfo the gateway says waiting will not help (a too-large request or batch).
  assert.ok(!policy.retries(err(Code.ResourceExhausted), 1));
  for (const code of [
    Code.InvalidArgument,
    Code.NotFound,
    Code.DeadlineExceeded,
    Code.PermissionDenied,
    Code.FailedPrecondition,
  ]) {
    assert.ok(!policy.retries(err(code, 1000), 1), Code[code]);
  }
});

test("attempts are bounded", () => {
  const policy = new RetryPolicy({ maxAttempts: 3 });
  assert.ok(policy.retries(err(U), 2) && !policy.retries(err(U), 3));
  assert.ok(!NO_RETRY.retries(err(U), 1));
  assert.throws(() => new RetryPolicy({ maxAttempts: 0 }), RangeError);
});

test("backoff grows, is capped and jittered", () => {
  const policy = new RetryPolicy({ initialBackoffMs: 100, multiplier: 2, maxBackoffMs: 1000 });
  const high = [1, 2, 3, 4, 5, 6].map((n) => policy.backoffMs(err(U), n, () => 1));
  const low = [1, 2, 3, 4, 5, 6].map((n) => policy.backoffMs(err(U), n, () => 0));
  assert.deepEqual(high, [100, 200, 400, 800, 1000, 1000]);
  assert.deepEqual(
    low,
    high.map((h) => h / 2),
  );
});

test("RetryInfo is a floor, with jitter above it", () => {
  const policy = new RetryPolicy({ maxBackoffMs: 500, jitter: 0.2 });
  close(
    policy.backoffMs(err(U, 3000), 1, () => 0),
    3000,
  );
  close(
    policy.backoffMs(err(U, 3000), 1, () => 1),
    3600,
  );
});

test("no retry past the deadline", () => {
  const policy = new RetryPolicy();
  const now = () => 100_000;
  assert.equal(
    policy.nextDelayMs(err(U, 1000), 1, 100_500, now, () => 0),
    undefined,
  );
  assert.equal(
    policy.nextDelayMs(err(U, 1000), 1, 102_000, now, () => 0),
    1000,
  );
  assert.equal(
    policy.nextDelayMs(err(U, 1000), 1, undefined, now, () => 0),
    1000,
  );
});

let running: Running;
beforeEach(async () => {
  running = await Running.start();
});
afterEach(() => running.stop());

function client(options: ClientOptions = {}): Client {
  return new Client(running.target, { devTenant: "t", timeoutMs: 10_000, ...options });
}

test("ingest retries with one key and writes once, waiting out each RetryInfo", async () => {
  const fake = running.fake;
  fake.refusals = [
    { code: Code.Aborted, message: "transaction aborted; nothing was written, retry", retryDelayMs: 100 },
    { code: Code.Unavailable, message: "Kafka is unavailable", retryDelayMs: 100 },
  ];
  const logged: string[] = [];
  const sluice = client({ log: (m) => logged.push(m) });
  try {
    const started = performance.now();
    const ingestion = await sluice.ingest("doc-1", { text: "hello" });
    const elapsed = performance.now() - started;
    assert.equal(ingestion.documentId, "doc-1");
    assert.ok(elapsed >= 200, `${elapsed} ms`); // both RetryInfo delays were waited out
  } finally {
    sluice.close();
  }
  assert.equal(fake.writeKeys.length, 3);
  assert.equal(new Set(fake.writeKeys).size, 1);
  assert.match(fake.writeKeys[0]!, /^ts-[0-9a-f]{32}$/);
  assert.equal(fake.writes, 1);
  assert.deepEqual(fake.tenants, ["t", "t", "t"]); // the dev tenant header, on every attempt
  assert.equal(logged.length, 2);
  assert.match(logged[0]!, /^ABORTED: transaction aborted.*\(attempt 1\); retrying in 0\.1\d s$/);
});

test("a write whose connection drops is retried with its key", async () => {
  running.fake.holdNextWrite = true;
  const sluice = client({ retry: new RetryPolicy({ initialBackoffMs: 10 }) });
  try {
    const call = sluice.ingest("doc-1", { text: "hello" });
    while (running.fake.held === 0) await new Promise((resolve) => setTimeout(resolve, 5));
    running.dropConnections(); // as a gateway that is killed mid-call
    assert.equal((await call).documentId, "doc-1");
  } finally {
    sluice.close();
  }
  assert.equal(running.fake.writeKeys.length, 2);
  assert.equal(new Set(running.fake.writeKeys).size, 1);
  assert.equal(running.fake.writes, 1);
});

test("a repeated call with the same key is not a second write", async () => {
  const sluice = client();
  try {
    const first = await sluice.ingest("doc-1", { text: "hello" }, { idempotencyKey: "mine-1" });
    const again = await sluice.ingest("doc-1", { text: "hello" }, { idempotencyKey: "mine-1" });
    const other = await sluice.ingest("doc-1", { text: "hello" });
    assert.equal(first.ingestionId, again.ingestionId);
    assert.notEqual(first.ingestionId, other.ingestionId);
  } finally {
    sluice.close();
  }
  assert.equal(running.fake.writes, 2);
});

test("a quota without RetryInfo fails at once, naming the quota", async () => {
  running.fake.refusals = [
    {
      code: Code.ResourceExhausted,
      message: "batch over a second of documents_per_second",
      quota: "documents_per_second",
    },
  ];
  const sluice = client();
  try {
    await assert.rejects(sluice.ingest("doc-1", { text: "hello" }), (e: unknown) => {
      assert.ok(e instanceof ResourceExhausted);
      assert.equal(e.quotaViolations[0]?.subject, "documents_per_second");
      assert.equal(e.retryDelayMs, undefined);
      return true;
    });
  } finally {
    sluice.close();
  }
  assert.equal(running.fake.writeKeys.length, 1);
});

test("gives up after maxAttempts with the last error", async () => {
  running.fake.refusals = Array.from({ length: 10 }, () => ({
    code: Code.Aborted,
    message: "aborted",
    retryDelayMs: 10,
  }));
  const sluice = client({ retry: new RetryPolicy({ maxAttempts: 3 }) });
  try {
    await assert.rejects(sluice.ingest("doc-1", { text: "hello" }), (e: unknown) => {
      assert.ok(e instanceof Aborted);
      assert.equal(e.retryDelayMs, 10);
      return true;
    });
  } finally {
    sluice.close();
  }
  assert.equal(running.fake.writeKeys.length, 3);
});

test("INVALID_ARGUMENT is not retried", async () => {
  running.fake.refusals = [
    { code: Code.InvalidArgument, message: "bad", fields: [["document.document_id", "required"]] },
  ];
  const sluice = client();
  try {
    await assert.rejects(sluice.ingest("", { text: "hello" }), (e: unknown) => {
      assert.ok(e instanceof InvalidArgument);
      assert.equal(e.fieldViolations[0]?.field, "document.document_id");
      return true;
    });
  } finally {
    sluice.close();
  }
  assert.equal(running.fake.writeKeys.length, 1);
});

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

test("a gateway that is not there is UNAVAILABLE after bounded tries", async () => {
  const logged: string[] = [];
  const retry = new RetryPolicy({ maxAttempts: 3, initialBackoffMs: 50 });
  const sluice = new Client(`127.0.0.1:${await freePort()}`, {
    devTenant: "t",
    retry,
    timeoutMs: 5000,
    log: (m) => logged.push(m),
  });
  try {
    const started = performance.now();
    await assert.rejects(sluice.search("anything"), Unavailable);
    assert.ok(performance.now() - started < 5000);
    assert.equal(logged.length, 2);
  } finally {
    sluice.close();
  }
});
