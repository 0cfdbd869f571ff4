// The client's mTLS identity: its certificate says which tenant it acts for.

import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";

function read(path: string, what: string, hint = ""): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") throw new Error(`${what} ${path} does not exist${hint}`);
    throw error;
  }
}

/**
 * A client certificate and key (PEM), and the CA that signed the gateway's certificate.
 * `ca` undefined trusts the system's CAs (a gateway with a public certificate); a development
 * CA must be given.
 */
export class TlsCredentials {
  readonly cert: Buffer;
  readonly ca: Buffer | undefined;
  readonly #key: Buffer;

  constructor(cert: Buffer | string, key: Buffer | string, ca?: Buffer | string) {
    this.cert = Buffer.from(cert);
    this.#key = Buffer.from(key);
    this.ca = ca === undefined ? undefined : Buffer.from(ca);
  }

  /** The private key (kept out of `util.inspect` and JSON). */
  get key(): Buffer {
    return this.#key;
  }

  /** From PEM files: the client certificate, its private key, and optionally the CA. */
  static fromFiles(cert: string, key: string, ca?: string): TlsCredentials {
    return new TlsCredentials(
      read(cert, "the client certificate"),
      read(key, "the client key"),
      ca === undefined ? undefined : read(ca, "the CA certificate"),
    );
  }

  /**
   * From a directory as `sluice-admin cert client TENANT --out DIR` writes it: `TENANT.pem`
   * and `TENANT-key.pem`. The CA is `ca` when given, else the directory's `ca.pem` when there
   * is one (as in a CA directory, where `deploy/dev/up` issues the demo tenant's certificate),
   * else the system's CAs. Without `tenant`, the directory must hold exactly one such pair.
   */
  static fromDirectory(directory: string, tenant?: string, ca?: string): TlsCredentials {
    if (!existsSync(directory) || !statSync(directory).isDirectory())
      throw new Error(`${directory} is not a directory`);
    const name = tenant ?? onlyTenant(directory);
    const hint = ` (sluice-admin cert client ${name} --out ${directory} writes it)`;
    const caPath = ca ?? join(directory, "ca.pem");
    return new TlsCredentials(
      read(join(directory, `${name}.pem`), "the client certificate", hint),
      read(join(directory, `${name}-key.pem`), "the client key", hint),
      ca !== undefined || existsSync(caPath) ? read(caPath, "the CA certificate") : undefined,
    );
  }
}

/** The tenant whose certificate and key are the only pair in `directory`. */
function onlyTenant(directory: string): string {
  const files = new Set(readdirSync(directory));
  const tenants = [...files]
    .filter((f) => f.endsWith("-key.pem") && f !== "ca-key.pem" && f !== "server-key.pem")
    .map((f) => f.slice(0, -"-key.pem".length))
    .filter((t) => files.has(`${t}.pem`))
    .sort();
  if (tenants.length !== 1) {
    throw new Error(
      `${directory} holds ${tenants.length} client certificates (${tenants.join(", ") || "none"}); name the tenant`,
    );
  }
  return tenants[0]!;
}
