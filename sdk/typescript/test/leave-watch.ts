// Run by client.test.ts in a process of its own: leaves a watch after its first event, with a
// long deadline still ahead, and closes the client. The process must then exit at once.

import { Client } from "sluice-client";

const sluice = new Client(process.argv[2]!, { devTenant: "t" });
for await (const event of sluice.watch({ afterCursor: "0", timeoutMs: 60_000 })) {
  console.log(`event ${event.cursor}`);
  break;
}
sluice.close();
