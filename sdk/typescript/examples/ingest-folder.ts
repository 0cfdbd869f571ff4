// Ingests a folder of .txt files into Sluice, watches until they are indexed, searches them.
//
//     node sdk/typescript/build/examples/ingest-folder.js ./notes --query "what moves the tides"
//
// (build/ is what `npm run build:all` in sdk/typescript makes.) Connects to the local stack
// deploy/dev/up starts (127.0.0.1:50051, tenant demo, certificates in .sluice/dev/tls);
// --target, --certs and --tenant point it elsewhere. Each file becomes one document: its id
// the file's path in the folder, its title the first line, its text the whole file. Exits 1 if
// any document fails to index.

import { readdirSync, readFileSync, statSync } from "node:fs";
import { basename, join, sep } from "node:path";
import { parseArgs } from "node:util";
import { Client, type Document } from "sluice-client";

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      query: { type: "string" }, // default: the first file's title
      "top-k": { type: "string", default: "3" },
      target: { type: "string", default: "127.0.0.1:50051" },
      certs: { type: "string", default: ".sluice/dev/tls" }, // as sluice-admin cert client writes it
      tenant: { type: "string", default: "demo" },
      timeout: { type: "string", default: "300" }, // seconds to wait for indexing
    },
  });
  const folder = positionals[0];
  if (positionals.length !== 1 || folder === undefined) {
    console.error(
      "usage: ingest-folder FOLDER [--query TEXT] [--top-k N] [--target HOST:PORT] [--certs DIR] [--tenant NAME]",
    );
    return 2;
  }
  const files = readdirSync(folder, { recursive: true, encoding: "utf8" })
    .filter((name) => name.endsWith(".txt") && statSync(join(folder, name)).isFile())
    .sort();
  if (files.length === 0) {
    console.error(`no .txt files in ${folder}`);
    return 2;
  }
  const titles: string[] = [];
  const documents: Document[] = files.map((file) => {
    const text = readFileSync(join(folder, file), "utf8");
    const name = file.split(sep).join("/");
    const title = text.trim().split("\n")[0]?.slice(0, 200) || basename(file, ".txt");
    titles.push(title);
    return { documentId: name, fields: { title, text, source: name }, attributes: { folder: basename(folder) } };
  });

  const sluice = Client.fromDirectory(values.target, values.certs, { tenant: values.tenant });
  try {
    const accepted = await sluice.ingestMany(documents);
    console.log(`accepted ${accepted.length} documents; watching until they are indexed`);
    let failed = 0;
    const watch = sluice.watch({
      ingestionIds: accepted.map((a) => a.ingestionId),
      timeoutMs: Number(values.timeout) * 1000,
    });
    for await (const { ingestion } of watch) {
      const detail =
        { INDEXED: `${ingestion.chunkCount} chunk(s)`, FAILED: ingestion.failureReason }[ingestion.state as string] ??
        "";
      console.log(`  ${ingestion.documentId.padEnd(30)} ${ingestion.state.padEnd(8)} ${detail}`);
      if (ingestion.state === "FAILED") failed += 1;
    }
    console.log(`indexed ${accepted.length - failed} of ${accepted.length}`);

    const query = values.query ?? titles[0]!;
    console.log(`searching: "${query}"`);
    const hits = await sluice.search(query, { topK: Number(values["top-k"]), filters: { folder: basename(folder) } });
    for (const hit of hits) {
      const text = hit.text.split(/\s+/).join(" ").trim();
      console.log(`  ${hit.score.toFixed(3)}  ${hit.documentId.padEnd(30)} #${hit.chunkIndex}  ${text.slice(0, 70)}`);
    }
    return failed ? 1 : 0;
  } finally {
    sluice.close();
  }
}

process.exitCode = await main();
