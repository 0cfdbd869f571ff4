// A real local Sluice stack for the integration tests, as deploy/dev/up starts one (a port of
// sdk/python/tests/stack.py).
//
// A nisshi broker (SQLite storage) and `sluice-gateway --standalone` (gateway and worker, the
// embedded database and vector store) on free loopback ports, on mTLS with a development CA,
// the gateway's certificate and a tenant's client certificate made by `sluice-admin`; all of it
// in one temporary directory (with a sluice.toml that shortens the Kafka session, so that a
// killed worker's partitions move on in seconds). Every wait is bounded; `close` stops both
// processes.
//
// Where things are: SLUICE_CACHE (default ~/.cache/sluice) has the broker (nisshi/bin/nisshi);
// SLUICE_BIN_DIR (default $CARGO_TARGET_DIR/debug, itself by default $SLUICE_CACHE/target) has
// sluice-gateway and sluice-admin; SLUICE_MODEL_DIR (default $SLUICE_CACHE/model) the model.

import { execFile, spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants, existsSync, openSync, closeSync, readFileSync, writeFileSync } from "node:fs";
import { get } from "node:http";
import { createConnection, createServer } from "node:net";
import { homedir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";

export interface Tools {
  nisshi: string;
  gateway: string;
  admin: string;
  modelDir: string;
}

/** The installed tools, or why they cannot be used. */
export function findTools(): Tools | string {
  const env = process.env;
  const cache = env.SLUICE_CACHE ?? join(homedir(), ".cache/sluice");
  const binDir = env.SLUICE_BIN_DIR ?? join(env.CARGO_TARGET_DIR ?? join(cache, "target"), "debug");
  const tools: Tools = {
    nisshi: join(cache, "nisshi/bin/nisshi"),
    gateway: join(binDir, "sluice-gateway"),
    admin: join(binDir, "sluice-admin"),
    modelDir: env.SLUICE_MODEL_DIR ?? join(cache, "model"),
  };
  for (const path of [tools.nisshi, tools.gateway, tools.admin]) {
    try {
      accessSync(path, constants.X_OK);
    } catch {
      return `${path} is missing (deploy/dev/up or cargo build installs it)`;
    }
  }
  if (!existsSync(join(tools.modelDir, "model.safetensors")))
    return `no model in ${tools.modelDir} (deploy/dev/lib.sh install_model)`;
  return tools;
}

export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port, timeout: 500 });
    const done = (open: boolean) => {
      socket.destroy();
      resolve(open);
    };
    socket
      .on("connect", () => done(true))
      .on("error", () => done(false))
      .on("timeout", () => done(false));
  });
}

function healthy(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const request = get({ host: "127.0.0.1", port, path: "/healthz", timeout: 2000 }, (response) => {
      response.resume();
      resolve(response.statusCode === 200);
    });
    request.on("error", () => resolve(false)).on("timeout", () => request.destroy());
  });
}

function tail(path: string, lines = 40): string {
  return existsSync(path)
    ? readFileSync(path, "utf8")
        .split("\n")
        .slice(-lines - 1)
        .join("\n")
    : "(no log)";
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** `promise`, or a rejection naming `what` after `ms`; the timer does not outlive it. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took more than ${ms / 1000} s`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Sends `signal`; if it was SIGTERM and the process has not exited within `timeoutMs`, SIGKILL. */
export async function stop(
  child: ChildProcess | undefined,
  timeoutMs: number,
  signal: "SIGTERM" | "SIGKILL" = "SIGTERM",
) {
  if (!child || exited(child)) return;
  const gone = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill(signal);
  try {
    await within(gone, timeoutMs, "stopping");
  } catch {
    child.kill("SIGKILL");
    await within(gone, 10_000, "a SIGKILL").catch(() => undefined);
  }
}

const running = new Set<ChildProcess>();
// A test process that dies leaves no broker or gateway behind.
process.on("exit", () => running.forEach((child) => child.kill("SIGKILL")));

/** Broker + Sluice standalone on mTLS, in `root` (a fresh temporary directory). */
export class LocalStack {
  readonly tls: string;
  readonly data: string;
  kafkaPort = 0;
  grpcPort = 0;
  healthPort = 0;
  broker: ChildProcess | undefined;
  gateway: ChildProcess | undefined;
  gatewayStarts = 0;

  constructor(
    readonly tools: Tools,
    readonly root: string,
    readonly tenant = "demo",
  ) {
    this.tls = join(root, "tls");
    this.data = join(root, "data");
  }

  get target(): string {
    return `127.0.0.1:${this.grpcPort}`;
  }

  #env(): NodeJS.ProcessEnv {
    // Only what this stack sets: no SLUICE_* configuration of the caller's leaks in.
    const env = Object.fromEntries(
      Object.entries(process.env).filter(([k]) => !k.startsWith("SLUICE_") && k !== "RUST_LOG"),
    );
    return { ...env, SLUICE_MODEL_DIR: this.tools.modelDir, RUST_LOG: "info" };
  }

  async admin(...args: string[]): Promise<string> {
    const argv = ["--data-dir", this.data, "--actor", "sdk/typescript tests", ...args];
    try {
      const { stdout } = await promisify(execFile)(this.tools.admin, argv, {
        cwd: this.root,
        env: this.#env(),
        timeout: 60_000,
      });
      return stdout;
    } catch (error) {
      throw new Error(`sluice-admin ${args.join(" ")} failed:\n${(error as { stderr?: string }).stderr ?? error}`);
    }
  }

  async start(): Promise<void> {
    [this.kafkaPort, this.grpcPort, this.healthPort] = [await freePort(), await freePort(), await freePort()];
    // What deploy/dev/up gives on the command line, plus what the tests of killing a process
    // need: a killed worker holds its partitions until its session times out.
    writeFileSync(
      join(this.root, "sluice.toml"),
      '[kafka.properties]\n"session.timeout.ms" = "6000"\n"heartbeat.interval.ms" = "500"\n',
    );
    // deploy/dev/up's steps: CA, server certificate, tenant, client certificate.
    await this.admin("cert", "init-ca", "--out", this.tls);
    await this.admin(
      "cert",
      "server",
      "--ca-dir",
      this.tls,
      "--out",
      this.tls,
      "--name",
      "localhost",
      "--name",
      "127.0.0.1",
    );
    await this.admin("tenant", "create", this.tenant, "--name", "SDK test tenant");
    await this.admin("cert", "client", this.tenant, "--ca-dir", this.tls, "--out", this.tls);
    await this.startBroker();
    await this.startGateway();
  }

  #spawn(command: string, args: string[], log: string, env: NodeJS.ProcessEnv): ChildProcess {
    const fd = openSync(join(this.root, log), "a");
    const child = spawn(command, args, { cwd: this.root, env, stdio: ["ignore", fd, fd] });
    closeSync(fd);
    running.add(child);
    child.once("exit", () => running.delete(child));
    return child;
  }

  async startBroker(): Promise<void> {
    const url = `tcp://127.0.0.1:${this.kafkaPort}`;
    // nisshi resolves sqlite:// paths against its working directory.
    this.broker = this.#spawn(
      this.tools.nisshi,
      [
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "sqlite://broker.db",
        "--group-initial-rebalance-delay",
        "100ms",
      ],
      "broker.log",
      this.#env(),
    );
    const deadline = performance.now() + 30_000;
    while (!(await portOpen(this.kafkaPort))) {
      if (exited(this.broker) || performance.now() > deadline) {
        throw new Error(`the broker did not start:\n${tail(join(this.root, "broker.log"))}`);
      }
      await sleep(100);
    }
  }

  async startGateway(timeoutMs = 180_000): Promise<void> {
    const env = {
      ...this.#env(),
      SLUICE_TLS__CERT: join(this.tls, "server.pem"),
      SLUICE_TLS__KEY: join(this.tls, "server-key.pem"),
      SLUICE_TLS__CLIENT_CA: join(this.tls, "ca.pem"),
    };
    this.gatewayStarts += 1;
    const gateway = this.#spawn(
      this.tools.gateway,
      [
        "--standalone",
        "--config",
        join(this.root, "sluice.toml"),
        "--listen",
        this.target,
        "--health-listen",
        `127.0.0.1:${this.healthPort}`,
        "--bootstrap-servers",
        `127.0.0.1:${this.kafkaPort}`,
        "--data-dir",
        this.data,
      ],
      "sluice.log",
      env,
    );
    this.gateway = gateway;
    const deadline = performance.now() + timeoutMs;
    while (!(await healthy(this.healthPort))) {
      if (exited(gateway))
        throw new Error(`sluice-gateway exited (${gateway.exitCode ?? gateway.signalCode}):\n${this.logTail()}`);
      if (performance.now() > deadline)
        throw new Error(`sluice-gateway not healthy within ${timeoutMs / 1000} s:\n${this.logTail()}`);
      await sleep(250);
    }
  }

  /** SIGTERM (graceful: in-flight calls finish, streams end UNAVAILABLE), then SIGKILL. */
  async stopGateway(timeoutMs = 30_000): Promise<void> {
    await stop(this.gateway, timeoutMs);
    this.gateway = undefined;
  }

  /** SIGKILL: connections reset, the worker's open transaction is left to abort. */
  async killGateway(): Promise<void> {
    await stop(this.gateway, 10_000, "SIGKILL");
    this.gateway = undefined;
  }

  logTail(lines = 40): string {
    return tail(join(this.root, "sluice.log"), lines);
  }

  async close(): Promise<void> {
    await stop(this.gateway, 30_000); // first, so it finishes its transactions while the broker is up
    await stop(this.broker, 10_000);
    this.gateway = this.broker = undefined;
  }
}
