// Credentials from PEM files and from a directory as `sluice-admin cert client` writes it. (The
// files here are stand-ins: reading and choosing them is what is tested; the integration tests
// connect with real ones.)

import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inspect } from "node:util";
import { after, test } from "node:test";
import { Client, TlsCredentials } from "sluice-client";

const root = mkdtempSync(join(tmpdir(), "sluice-tls-"));
after(() => rmSync(root, { recursive: true, force: true }));
let n = 0;

function dir(...names: string[]): string {
  const directory = join(root, String(n++));
  write(directory, ...names);
  return directory;
}

function write(directory: string, ...names: string[]): void {
  mkdirSync(directory, { recursive: true });
  for (const name of names) writeFileSync(join(directory, name), `PEM of ${name}`);
}

const text = (b: Buffer | undefined) => b?.toString();

test("from a CA directory with the tenant's certificate", () => {
  // deploy/dev/up issues the client certificate into the CA directory itself.
  const d = dir("ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "demo.pem", "demo-key.pem");
  const credentials = TlsCredentials.fromDirectory(d, "demo");
  assert.equal(text(credentials.cert), "PEM of demo.pem");
  assert.equal(text(credentials.key), "PEM of demo-key.pem");
  assert.equal(text(credentials.ca), "PEM of ca.pem");
  // The tenant is the only client pair there: server.pem is not one.
  assert.equal(text(TlsCredentials.fromDirectory(d).cert), "PEM of demo.pem");
  // The key stays out of what is printed or serialized.
  assert.ok(!/\bkey\b/.test(inspect(credentials)), inspect(credentials));
  assert.deepEqual(Object.keys(JSON.parse(JSON.stringify(credentials))), ["cert", "ca"]);
});

test("from an --out directory without the CA", () => {
  // `sluice-admin cert client acme --out ./acme-certs` writes only acme.pem and acme-key.pem.
  const d = dir();
  write(join(d, "acme-certs"), "acme.pem", "acme-key.pem");
  write(join(d, "ca"), "ca.pem");
  assert.equal(TlsCredentials.fromDirectory(join(d, "acme-certs")).ca, undefined); // the system's CAs
  const given = TlsCredentials.fromDirectory(join(d, "acme-certs"), undefined, join(d, "ca/ca.pem"));
  assert.equal(text(given.ca), "PEM of ca.pem");
});

test("several tenants need a name", () => {
  const d = dir("a.pem", "a-key.pem", "b.pem", "b-key.pem");
  assert.throws(() => TlsCredentials.fromDirectory(d), /2 client certificates \(a, b\); name the tenant/);
  assert.equal(text(TlsCredentials.fromDirectory(d, "b").cert), "PEM of b.pem");
});

test("missing files say what writes them", () => {
  const d = dir("ca.pem");
  assert.throws(() => TlsCredentials.fromDirectory(d, "acme"), /sluice-admin cert client acme --out/);
  assert.throws(() => TlsCredentials.fromDirectory(join(d, "nope"), "acme"), /is not a directory/);
  assert.throws(
    () => TlsCredentials.fromFiles(join(d, "ca.pem"), join(d, "key.pem")),
    /the client key .* does not exist/,
  );
});

test("from files", () => {
  const d = dir("c.pem", "k.pem", "ca.pem");
  const credentials = TlsCredentials.fromFiles(join(d, "c.pem"), join(d, "k.pem"), join(d, "ca.pem"));
  assert.deepEqual([credentials.cert, credentials.key, credentials.ca].map(text), [
    "PEM of c.pem",
    "PEM of k.pem",
    "PEM of ca.pem",
  ]);
});

test("a client needs credentials unless it names a dev tenant", () => {
  assert.throws(() => new Client("127.0.0.1:1"), /mTLS/);
});
