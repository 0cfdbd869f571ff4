// mTLS end to end against the fake gateway on TLS: the client presents the certificate from a
// directory laid out as `sluice-admin cert client` writes it, and checks the gateway's against
// the CA. The certificates are made here, for this run only, with openssl (skipped without it).

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Client, NO_RETRY, SluiceError } from "sluice-client";
import { Running } from "./fakes.js";

let openssl = true;
try {
  execFileSync("openssl", ["version"], { stdio: "ignore" });
} catch {
  openssl = false;
}
const skip = openssl ? false : "openssl is not installed";
const dir = mkdtempSync(join(tmpdir(), "sluice-mtls-"));
let running: Running | undefined;

function issue(name: string, subject: string, extensions: string, ca = "ca"): void {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  const at = (file: string) => join(dir, file);
  execFileSync(
    "openssl",
    ["req", ...ec, "-keyout", at(`${name}-key.pem`), "-out", at(`${name}.csr`), "-subj", subject],
    { stdio: "ignore" },
  );
  writeFileSync(at(`${name}.ext`), extensions);
  execFileSync(
    "openssl",
    [
      "x509",
      "-req",
      "-in",
      at(`${name}.csr`),
      "-CA",
      at(`${ca}.pem`),
      "-CAkey",
      at(`${ca}-key.pem`),
      "-CAcreateserial",
      "-days",
      "1",
      "-extfile",
      at(`${name}.ext`),
      "-out",
      at(`${name}.pem`),
    ],
    { stdio: "ignore" },
  );
  rmSync(at(`${name}.csr`));
  rmSync(at(`${name}.ext`));
}

before(async () => {
  if (skip) return;
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  mkdirSync(join(dir, "other"));
  for (const ca of ["ca", "other/ca"]) {
    execFileSync(
      "openssl",
      [
        "req",
        "-x509",
        ...ec,
        "-keyout",
        join(dir, `${ca}-key.pem`),
        "-out",
        join(dir, `${ca}.pem`),
        "-days",
        "1",
        "-subj",
        `/CN=${ca.replace("/", "-")}`,
      ],
      { stdio: "ignore" },
    );
  }
  issue("server", "/CN=localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
  issue("demo", "/CN=demo", "subjectAltName=URI:spiffe://sluice.local/tenant/demo\nextendedKeyUsage=clientAuth\n");
  const read = (file: string) => readFileSync(join(dir, file));
  running = await Running.start({
    key: read("server-key.pem"),
    cert: read("server.pem"),
    ca: read("ca.pem"),
    requestCert: true,
    rejectUnauthorized: true,
  });
});

after(async () => {
  await running?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test("the client presents its certificate and checks the gateway's", { skip }, async () => {
  // The directory holds the CA and the server's pair too, as deploy/dev/up's does: demo is the
  // only client pair.
  const sluice = Client.fromDirectory(running!.target, dir);
  try {
    const ingestion = await sluice.ingest("doc-1", { text: "over mTLS" });
    assert.equal(ingestion.documentId, "doc-1");
  } finally {
    sluice.close();
  }
  assert.deepEqual(running!.peers, ["URI:spiffe://sluice.local/tenant/demo"]);
  assert.deepEqual(running!.fake.tenants, [null]); // no dev tenant header on mTLS
});

test("a gateway whose certificate another CA signed is refused", { skip }, async () => {
  const sluice = Client.fromDirectory(running!.target, dir, {
    tenant: "demo",
    ca: join(dir, "other/ca.pem"),
    retry: NO_RETRY,
  });
  try {
    await assert.rejects(sluice.ingest("doc-2", { text: "refused" }), (e: unknown) => {
      assert.ok(e instanceof SluiceError);
      assert.match(e.message, /certificate/i);
      return true;
    });
  } finally {
    sluice.close();
  }
  assert.equal(running!.fake.writes, 1); // only the first test's
});
