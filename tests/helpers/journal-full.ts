// Child of journal.test.ts: appends to a Journal, makes one append fail (the file size
// limit is lowered for this process), then appends again; prints what readJournal sees.
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { mkdirSync } from "node:fs";
import { Journal, readJournal } from "../../lib/journal.ts";

const dir = join(process.argv[2]!, "j");
mkdirSync(dir, { recursive: true });
const path = join(dir, "test.journal");
const journal = await Journal.create(path); // 4 MiB, zero-filled
const entry = (subject: string, pad = 0) => ({ user: "alice", ino: 1, offset: 0, record: Buffer.from(`Subject: ${subject}\r\n\r\n${"x".repeat(pad)}\r\n.\r\n`) });
const fsize = (v: string) => spawnSync("prlimit", ["--pid", String(process.pid), `--fsize=${v}`]);
await journal.append([entry("first")]);
fsize("5000000:unlimited");
const second = await journal.append([entry("second", 6_000_000)]).then(
  () => "durable",
  (e: NodeJS.ErrnoException) => `refused: ${e.code}`,
);
fsize("unlimited:unlimited");
await journal.append([entry("third")]);
journal.close();
const entries = readJournal(path).map((e) => /Subject: (\S+)/.exec(e.record.toString("latin1"))![1]);
process.stdout.write(JSON.stringify({ second, entries }));
