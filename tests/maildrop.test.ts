// FileMaildrop over a real temp directory: POP3 lock, offset index, read/top, the rewrite at
// QUIT beside concurrent appends, UIDs, hand-written LF files, crash leftovers.
import { afterAll, describe, expect, test } from "bun:test";
import { appendFileSync, chmodSync, truncateSync, existsSync, lstatSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { collectBody, FileMaildrop, MaildropBusy, MaildropChanged, MaildropUnavailable, type Body } from "../lib/maildrop.ts";
import { buildRecord, toWire } from "../lib/mailbox.ts";
import { scanBuffer } from "../lib/mailbox-scanner.ts";
import { FileMailStore } from "../lib/mail-store.ts";
import { IndexCache } from "../lib/index-cache.ts";
import { mailboxPath, popLockPath, writeLockPath } from "../lib/paths.ts";
import { tryLock, wantedPath } from "../lib/lock.ts";
import { makeRoot, removeRoot } from "./helpers/servers.ts";
import { unstuffBody } from "./helpers/wire.ts";

const strace = Bun.which("strace");
const roots: string[] = [];
afterAll(() => roots.forEach(removeRoot));
function root(): string {
  const r = makeRoot({ alice: "pw" });
  roots.push(r);
  return r;
}

const bytes = (b: Body) => collectBody(b);

/** A message as a client sends it in DATA (wire form, stuffed, without the final "."). */
function wireMsg(n: number, body: string[] = [`body of message ${n}`]): Buffer {
  const lines = [`From: bob@example.com`, `To: alice@example.com`, `Subject: message ${n}`, "", ...body];
  return Buffer.from(lines.map((l) => (l.startsWith(".") ? "." + l : l) + "\r\n").join(""));
}
const RECEIVED = "Received: 2024-01-02 : 03 : 04";
const record = (n: number, body?: string[]) => buildRecord(wireMsg(n, body), RECEIVED);
/** The message a POP3 client should get back (unstuffed, CRLF). */
function expected(n: number, body: string[] = [`body of message ${n}`]): Buffer {
  const lines = [`From: bob@example.com`, `To: alice@example.com`, `Subject: message ${n}`, RECEIVED, "", ...body];
  return Buffer.from(lines.map((l) => l + "\r\n").join(""));
}

function writeBox(r: string, ...records: Buffer[]): string {
  const p = mailboxPath(r, "alice");
  writeFileSync(p, Buffer.concat(records));
  return p;
}

async function all(d: FileMaildrop): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for (let i = 0; i < d.count; i++) out.push(unstuffBody(await bytes(await d.read(i))));
  return out;
}

describe("FileMaildrop", () => {
  test("missing mailbox opens as empty and commits cleanly", async () => {
    const r = root();
    const d = await FileMaildrop.open(r, "alice");
    expect(d.count).toBe(0);
    await d.commit(new Set());
    expect(existsSync(popLockPath(r, "alice"))).toBe(false);
  });

  test("read returns each message stuffed, CRLF, with '.' line; sizes equal the unstuffed octets", async () => {
    const r = root();
    const bodies = [["plain"], [".", "..", ".x", "", "ünïcödé ✓"], []];
    writeBox(r, ...bodies.map((b, i) => record(i + 1, b)));
    const d = await FileMaildrop.open(r, "alice");
    try {
      expect(d.count).toBe(3);
      for (let i = 0; i < 3; i++) {
        const raw = await bytes(await d.read(i));
        expect(raw.subarray(-3).toString()).toBe(".\r\n");
        // Every line that starts with "." is stuffed on the wire.
        for (const l of raw.toString("utf8").slice(0, -3).split("\r\n").slice(0, -1)) if (l.startsWith(".")) expect(l.startsWith("..")).toBe(true);
        const got = unstuffBody(raw);
        expect(got.equals(expected(i + 1, bodies[i]))).toBe(true);
        expect(d.size(i)).toBe(got.length);
      }
    } finally {
      d.release();
    }
  });

  test("a large message (over the streaming chunk) reads back whole", async () => {
    const r = root();
    const body = Array.from({ length: 8000 }, (_, i) => (i % 7 === 0 ? "." : "") + `line ${i} ` + "x".repeat(60));
    writeBox(r, record(1), record(2, body), record(3));
    const d = await FileMaildrop.open(r, "alice");
    try {
      const got = await all(d);
      expect(got[1]!.equals(expected(2, body))).toBe(true);
      expect(d.size(1)).toBe(got[1]!.length);
      expect(got[2]!.equals(expected(3))).toBe(true);
    } finally {
      d.release();
    }
  });

  test("top gives the header, the empty line and n body lines", async () => {
    const r = root();
    writeBox(r, record(1, ["one", ".two", "three"]));
    const d = await FileMaildrop.open(r, "alice");
    try {
      const head = "From: bob@example.com\r\nTo: alice@example.com\r\nSubject: message 1\r\n" + RECEIVED + "\r\n\r\n";
      expect((await bytes(await d.top(0, 0))).toString()).toBe(head + ".\r\n");
      expect((await bytes(await d.top(0, 2))).toString()).toBe(head + "one\r\n..two\r\n.\r\n");
      expect((await bytes(await d.top(0, 1000))).toString()).toBe(head + "one\r\n..two\r\nthree\r\n.\r\n");
    } finally {
      d.release();
    }
  });

  test("top with a header longer than the first read (64 KiB) returns the whole header", async () => {
    const r = root();
    const extra = Array.from({ length: 1200 }, (_, i) => `X-Filler-${i}: ${"y".repeat(60)}`);
    const wire = Buffer.from([...extra, "Subject: big header", "", "body line 1", "body line 2"].map((l) => l + "\r\n").join(""));
    writeBox(r, buildRecord(wire, RECEIVED));
    const d = await FileMaildrop.open(r, "alice");
    try {
      const top0 = (await bytes(await d.top(0, 0))).toString();
      expect(top0.length).toBeGreaterThan(70_000);
      expect(top0.endsWith("Subject: big header\r\n" + RECEIVED + "\r\n\r\n.\r\n")).toBe(true);
      const top1 = (await bytes(await d.top(0, 1))).toString();
      expect(top1.endsWith("\r\n\r\nbody line 1\r\n.\r\n")).toBe(true);
    } finally {
      d.release();
    }
  });

  test("top of a large message is streamed and gives the header, the empty line and n body lines, whatever the piece boundaries", async () => {
    const r = root();
    // About 1.4 MB: empty lines, dot lines and lines of every length, so that cuts fall
    // anywhere in the 512 KiB first read and the 256 KiB pieces after it.
    const body = Array.from({ length: 60_000 }, (_, i) => (i % 5 === 0 ? "" : i % 11 === 0 ? "." : `line ${i} ${"z".repeat(i % 37)}`));
    // The same message hand-written with bare LFs (converted piece by piece when sent).
    const handWritten = Buffer.from(["From: a@b", "Subject: lf", "", ...body.map((l) => (l.startsWith(".") ? "." + l : l)), "."].join("\n") + "\n");
    writeBox(r, record(1, body), handWritten);
    const d = await FileMaildrop.open(r, "alice");
    try {
      for (const i of [0, 1]) {
        const whole = (await bytes(await d.read(i))).toString("latin1");
        const content = whole.slice(0, -3);
        const head = content.indexOf("\r\n\r\n") + 4;
        const lines = content.slice(head).split("\r\n").slice(0, -1);
        expect(lines.length).toBe(60_000);
        for (const n of [0, 1, 2, 9_999, 21_000, 21_001, 40_000, 59_999, 60_000, 60_001, 1_000_000]) {
          const top = await d.top(i, n);
          expect(Symbol.asyncIterator in top).toBe(true);
          const want = content.slice(0, head) + lines.slice(0, n).map((l) => l + "\r\n").join("") + ".\r\n";
          expect((await bytes(top)).toString("latin1")).toBe(want);
        }
      }
    } finally {
      d.release();
    }
  });

  test("top of a hand-written CRLF mail with stray bare LFs: every line ends CRLF and the response ends CRLF.CRLF, small or streamed", async () => {
    const r = root();
    const big = "x".repeat(70) + "\r\n";
    const small = Buffer.from("From: c@d\r\nSubject: two\r\n\r\nmixed\nends\r\nlast\r\n.\r\n");
    const large = Buffer.from("From: c@d\r\nSubject: big\r\n\r\nmixed\nends\r\n" + big.repeat(20_000) + "a\nb\r\n.\r\n");
    writeBox(r, small, large);
    const d = await FileMaildrop.open(r, "alice");
    try {
      // RETR sends them as stored (LIST counts that), ending CRLF.CRLF.
      expect((await bytes(await d.read(0))).toString()).toBe(small.toString());
      const head = "From: c@d\r\nSubject: ";
      expect((await bytes(await d.top(0, 1))).toString()).toBe(head + "two\r\n\r\nmixed\r\n.\r\n");
      expect((await bytes(await d.top(0, 2))).toString()).toBe(head + "two\r\n\r\nmixed\r\nends\r\n.\r\n");
      expect((await bytes(await d.top(0, 9))).toString()).toBe(head + "two\r\n\r\nmixed\r\nends\r\nlast\r\n.\r\n");
      const top = await d.top(1, 1);
      expect(Symbol.asyncIterator in top).toBe(true);
      expect((await bytes(top)).toString()).toBe(head + "big\r\n\r\nmixed\r\n.\r\n");
      const all = (await bytes(await d.top(1, 1_000_000))).toString();
      expect(all).toEndWith("\r\na\r\nb\r\n.\r\n");
      expect(all.split("\n").length).toBe(all.split("\r\n").length);
    } finally {
      d.release();
    }
  });

  test("streamed top: a header line that starts within the header scan and ends past the first read is header, not body", async () => {
    const r = root();
    // (The Subject first: the Received line goes after it, not after the long line.)
    const header = ["Subject: long header", ...Array.from({ length: 250 }, (_, i) => `X-H${i}: ${"a".repeat(990)}`)];
    header.push(`X-Long: ${"b".repeat(300_000)}`);
    const wire = Buffer.from([...header, "", "body line 1", "body line 2"].map((l) => l + "\r\n").join(""));
    writeBox(r, buildRecord(wire, RECEIVED));
    const d = await FileMaildrop.open(r, "alice");
    try {
      const whole = (await bytes(await d.read(0))).toString("latin1");
      const head = whole.indexOf("\r\n\r\n") + 4;
      expect((await bytes(await d.top(0, 0))).toString("latin1")).toBe(whole.slice(0, head) + ".\r\n");
      expect((await bytes(await d.top(0, 1))).toString("latin1")).toBe(whole.slice(0, head) + "body line 1\r\n.\r\n");
    } finally {
      d.release();
    }
  });

  test("a second open while a session holds the maildrop is MaildropBusy; release frees it", async () => {
    const r = root();
    writeBox(r, record(1));
    const d = await FileMaildrop.open(r, "alice");
    let err: unknown;
    try {
      await FileMaildrop.open(r, "alice");
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MaildropBusy);
    d.release();
    expect(existsSync(popLockPath(r, "alice"))).toBe(false);
    const d2 = await FileMaildrop.open(r, "alice");
    expect(d2.count).toBe(1);
    d2.release();
  });

  test("commit removes exactly the marked messages and releases the lock; no deletions leaves the file alone", async () => {
    const r = root();
    const p = writeBox(r, ...[1, 2, 3, 4, 5].map((n) => record(n)));
    const before = readFileSync(p);
    const ino = statSync(p).ino;
    const d0 = await FileMaildrop.open(r, "alice");
    await d0.commit(new Set());
    expect(readFileSync(p).equals(before)).toBe(true);
    expect(statSync(p).ino).toBe(ino);
    const d = await FileMaildrop.open(r, "alice");
    await d.commit(new Set([0, 2, 4]));
    expect(existsSync(popLockPath(r, "alice"))).toBe(false);
    expect(readFileSync(p).equals(Buffer.concat([record(2), record(4)]))).toBe(true);
    expect(readdirSync(join(r, "alice")).sort()).toEqual(["mymailbox"]);
    const d2 = await FileMaildrop.open(r, "alice");
    expect(await all(d2)).toEqual([expected(2), expected(4)]);
    await d2.commit(new Set([0, 1]));
    expect(readFileSync(p).length).toBe(0);
  });

  test("a file cut short under the session (by a program ignoring the lock): read and top of a message past the end throw MaildropChanged, not a short body", async () => {
    const r = root();
    const big = record(3, ["x".repeat(300_000)]); // streamed, not read at once
    const p = writeBox(r, record(1), record(2), big);
    const d = await FileMaildrop.open(r, "alice");
    truncateSync(p, record(1).length + 10);
    expect(await all({ count: 1, read: (i: number) => d.read(i) } as unknown as FileMaildrop)).toEqual([expected(1)]);
    for (const f of [() => d.read(1), () => d.top(1, 0), () => d.read(2)]) expect(f).toThrow(MaildropChanged);
    d.release();
    // Cut while a large message is being streamed: the stream fails instead of ending early.
    writeBox(r, record(1), big);
    const e = await FileMaildrop.open(r, "alice");
    const stream = e.read(1) as AsyncIterable<Uint8Array>;
    const it = stream[Symbol.asyncIterator]();
    expect((await it.next()).done).toBe(false);
    truncateSync(p, record(1).length + 200_000);
    await expect((async () => {
      for (let step = await it.next(); !step.done; step = await it.next());
    })()).rejects.toThrow(MaildropChanged);
    e.release();
  });

  test("a file emptied or overwritten in place during the session (a program ignoring the lock): QUIT removes nothing, every byte written since stays, and RETR of a message whose end moved is refused", async () => {
    const longer = (n: number) => record(n, [`body of the new message ${n}`, "z".repeat(200)]);
    const cases: { name: string; after: Buffer[]; dele: number[]; moved?: boolean }[] = [
      // `: > mymailbox`, then deliveries: the marked one's bytes are now another message's.
      { name: "emptied, then longer mail", after: [10, 11, 12, 13].map(longer), dele: [0], moved: true },
      // Restored over itself from a backup with messages of the same sizes: every "." line
      // is where it was, only the bytes differ.
      { name: "same sizes", after: [21, 22, 23].map((n) => record(n)), dele: [1] },
      { name: "same sizes, last marked", after: [21, 22, 23].map((n) => record(n)), dele: [2] },
      { name: "shorter", after: [record(31)], dele: [0], moved: true },
    ];
    for (const c of cases) {
      const r = root();
      const p = writeBox(r, record(1), record(2), record(3));
      const cache = new IndexCache();
      const d = await FileMaildrop.open(r, "alice", () => {}, cache);
      expect(d.count).toBe(3);
      truncateSync(p, 0);
      for (const rec of c.after) appendFileSync(p, rec);
      const now = readFileSync(p);
      // Where the marked message's "." line is gone, RETR and TOP refuse rather than serve other mail under its UID.
      if (c.moved) for (const f of [() => d.read(0), () => d.top(0, 0)]) expect(f, c.name).toThrow(MaildropChanged);
      const err = await d.commit(new Set(c.dele)).then(() => null, (e: Error) => e);
      expect(err, c.name).toBeInstanceOf(MaildropChanged);
      expect(readFileSync(p).equals(now), c.name).toBe(true);
      expect(readdirSync(join(r, "alice")).sort(), c.name).toEqual(["mymailbox"]);
      // Nothing of the old session survives in the cache: the next login serves the file as it is.
      const d2 = await FileMaildrop.open(r, "alice", () => {}, cache);
      expect(d2.count, c.name).toBe(c.after.length);
      await d2.commit(new Set([0]));
      expect(readFileSync(p).equals(Buffer.concat(c.after.slice(1))), c.name).toBe(true);
    }
  });

  test("a same-layout overwrite while QUIT waits for smtpmail's lock is seen: nothing removed (helper-86)", async () => {
    const r = root();
    const p = writeBox(r, record(1), record(2), record(3));
    const d = await FileMaildrop.open(r, "alice");
    // smtpmail holds the write lock for a moment, as under load; the kept messages are copied meanwhile.
    const held = tryLock(writeLockPath(r, "alice"), r)!;
    const quit = d.commit(new Set([1])).then(() => null, (e: Error) => e);
    for (let t = Date.now(); !existsSync(wantedPath(writeLockPath(r, "alice"))) && Date.now() - t < 5000; ) await Bun.sleep(1);
    // `cp backup mymailbox`: message 2's place now holds message 9, of the same size, which the session never saw.
    writeFileSync(p, Buffer.concat([record(1), record(9), record(3)]));
    held.release();
    expect(await quit).toBeInstanceOf(MaildropChanged);
    expect(readFileSync(p).equals(Buffer.concat([record(1), record(9), record(3)]))).toBe(true);
  });

  test("hand-written ends: a mailbox that is a blank line and a bare '.' can be emptied; a last message that ended in a whole '.' line at login is not served once it reads bare (helper-86)", async () => {
    const r = root();
    const p = writeBox(r, Buffer.from("Subject: a\n\nhi\n.\n\n."));
    const d = await FileMaildrop.open(r, "alice");
    expect(d.count).toBe(2);
    await d.commit(new Set([0]));
    expect(readFileSync(p).toString()).toBe("\n.");
    const e = await FileMaildrop.open(r, "alice");
    expect(e.count).toBe(1);
    await e.commit(new Set([0]));
    expect(readFileSync(p).length).toBe(0);
    // [m1, m2] emptied and overwritten by one longer delivery whose bytes at m2's end read "\n.".
    const two = Buffer.concat([record(1), record(2)]);
    writeBox(r, two);
    const f = await FileMaildrop.open(r, "alice");
    const filler = Buffer.alloc(two.length + 10, "x");
    filler.write("\n.", two.length - 2);
    writeFileSync(p, filler);
    for (const read of [() => f.read(1), () => f.top(1, 0)]) expect(read).toThrow(MaildropChanged);
    f.release();
  });

  test("the check at QUIT does not refuse what the session saw: the first, the last, all, and messages among appends", async () => {
    for (const dele of [[0], [4], [0, 1, 2, 3, 4], [1, 3]]) {
      const r = root();
      const p = writeBox(r, ...[1, 2, 3, 4, 5].map((n) => record(n)));
      const store = new FileMailStore(r);
      const d = await FileMaildrop.open(r, "alice");
      await store.deliver(["alice"], record(6));
      await d.commit(new Set(dele));
      await store.close();
      const kept = [1, 2, 3, 4, 5, 6].filter((n) => !dele.includes(n - 1));
      expect(readFileSync(p).equals(Buffer.concat(kept.map((n) => record(n))))).toBe(true);
    }
  });

  test("the rewrite keeps the mailbox's permissions (a private 0600 box stays private; 0640 stays 0640)", async () => {
    const r = root();
    const p = writeBox(r, ...[1, 2, 3].map((n) => record(n)));
    for (const mode of [0o600, 0o640]) {
      chmodSync(p, mode);
      const d = await FileMaildrop.open(r, "alice");
      await d.commit(new Set([0]));
      expect(statSync(p).mode & 0o7777).toBe(mode);
    }
    const d = await FileMaildrop.open(r, "alice");
    expect(await all(d)).toEqual([expected(3)]);
    await d.release();
  });

  test("QUIT never writes through a symbolic link its user put in the directory: not the rewrite's temp file, not a lock's (helper-94)", async () => {
    const r = makeRoot({ alice: "pw", bob: "pw" });
    roots.push(r);
    const victim = join(r, "victim");
    writeFileSync(victim, "precious\n");
    chmodSync(victim, 0o600);
    const bobBox = mailboxPath(r, "bob");
    writeFileSync(bobBox, record(9));
    const bobBefore = readFileSync(bobBox);
    const p = writeBox(r, ...[1, 2].map((n) => record(n)));
    const d = await FileMaildrop.open(r, "alice");
    // Planted after login: the rewrite's temp name, and the names a lock's temp file takes.
    symlinkSync(victim, `${p}.rewrite.${process.pid}.tmp`);
    for (let n = 1; n <= 200; n++) symlinkSync(bobBox, join(r, "alice", `.link.${hostname()}.${process.pid}.${n}`));
    await d.commit(new Set([0]));
    // The write lock links from the mail root's temp file: nothing by those names was touched.
    for (let n = 1; n <= 200; n++) expect(lstatSync(join(r, "alice", `.link.${hostname()}.${process.pid}.${n}`)).isSymbolicLink()).toBe(true);
    expect(readFileSync(victim, "utf8")).toBe("precious\n");
    expect(statSync(victim).mode & 0o7777).toBe(0o600);
    expect(readFileSync(bobBox)).toEqual(bobBefore);
    expect(lstatSync(p).isFile()).toBe(true);
    const again = await FileMaildrop.open(r, "alice");
    expect(await all(again)).toEqual([expected(2)]);
    again.release();
  });

  test("scattered deletions among small and large messages keep every other message byte for byte, in order", async () => {
    const r = root();
    // Sizes around the rewrite's copy paths: short runs gathered in a buffer, long ones streamed.
    const recs = Array.from({ length: 1500 }, (_, i) => record(i, [`m${i} ` + "z".repeat(i % 500 === 7 ? 300_000 : (i * 37) % 8000)]));
    const p = writeBox(r, ...recs);
    const d = await FileMaildrop.open(r, "alice");
    const del = new Set(recs.map((_, i) => i).filter((i) => (i * 7919) % 3 !== 0 && i % 500 !== 8));
    await d.commit(del);
    expect(readFileSync(p).equals(Buffer.concat(recs.filter((_, i) => !del.has(i))))).toBe(true);
  });

  // A 1 GiB rewrite flushed by one fdatasync at the end held smtpmail's journal fsyncs on the
  // same disk behind 1 GiB of dirty pages (deliveries to other users fell to ~0.5 % for half a second).
  test.skipIf(!strace)("a rewrite flushes its temp file as it writes it: never more than a step (and a chunk) written unsynced, and synced whole before the rename", () => {
    const r = root();
    // 48 messages of ~256 KiB (12 MiB) rewritten with a 512 KiB step.
    const body = Array.from({ length: 3300 }, (_, i) => `line ${i} `.padEnd(78, "x"));
    const p = writeBox(r, ...Array.from({ length: 48 }, (_, n) => record(n, body)));
    const size = statSync(p).size;
    const out = join(r, "trace");
    const run = Bun.spawnSync([strace!, "-f", "-y", "-qq", "-e", "trace=write,pwrite64,writev,fdatasync,fsync,rename,renameat,renameat2", "-o", out, process.execPath, join(import.meta.dir, "helpers", "rewrite-once.ts"), r, String(512 << 10)]);
    expect(run.stderr.toString()).toBe("");
    expect(run.exitCode).toBe(0);
    // In the order the calls returned; a call another thread interrupts is logged in two lines,
    // "<unfinished ...>" then "<... resumed>" with its result. `before`: writes to the temp file
    // that had returned when it began (a sync covers those for sure, not those it overlaps).
    const temp = /\.rewrite\.\d+\.tmp>/;
    const begun = new Map<string, number>();
    const calls: { name: string; before: number; result: number }[] = [];
    let total = 0;
    for (const line of readFileSync(out, "latin1").split("\n")) {
      const start = /^(\d+)\s+(\w+)\((.*)$/.exec(line);
      const end = start ?? /^(\d+)\s+<\.\.\. (\w+) resumed>(.*)$/.exec(line);
      if (!end) continue;
      const [, tid, name, rest] = end;
      if (start && !(temp.test(line) || (name!.startsWith("rename") && line.includes(".rewrite.")))) continue;
      if (!start && !begun.has(tid!)) continue;
      const before = start ? total : begun.get(tid!)!;
      if (rest!.endsWith("<unfinished ...>")) {
        begun.set(tid!, before);
        continue;
      }
      begun.delete(tid!);
      const result = Number(/= (-?\d+)$/.exec(rest!)?.[1]);
      if (/^(p?write(64)?|writev)$/.test(name!)) total += result;
      calls.push({ name: name!, before, result });
    }
    let synced = 0;
    let written = 0;
    let most = 0;
    let syncs = 0;
    let renamedAfter = -1;
    for (const { name, before, result } of calls) {
      if (/^(p?write(64)?|writev)$/.test(name)) {
        written += result;
        most = Math.max(most, written - synced);
      } else if (name === "fdatasync" || name === "fsync") {
        synced = Math.max(synced, before);
        syncs++;
      } else if (name.startsWith("rename")) renamedAfter = written - synced;
    }
    // Every kept byte went to the temp file. At most two steps and two 1 MiB chunks of it
    // unsynced at any time (one sync in flight while the copy goes on): 3 MiB, not 12.
    expect(total).toBe(size - record(0, body).length);
    expect(most).toBeLessThanOrEqual(3 << 20);
    expect(syncs).toBeGreaterThanOrEqual(8);
    // Renamed once everything written was synced.
    expect(renamedAfter).toBe(0);
    expect(statSync(p).size).toBe(total);
  });

  test("release without commit deletes nothing", async () => {
    const r = root();
    const p = writeBox(r, record(1), record(2));
    const before = readFileSync(p);
    const d = await FileMaildrop.open(r, "alice");
    d.release();
    expect(readFileSync(p).equals(before)).toBe(true);
  });

  test("the rewrite keeps mail appended (by FileMailStore) after login", async () => {
    const r = root();
    const p = writeBox(r, record(1), record(2), record(3));
    const store = new FileMailStore(r);
    const d = await FileMaildrop.open(r, "alice");
    expect(d.count).toBe(3);
    await store.deliver(["alice"], record(4));
    await Promise.all([store.deliver(["alice"], record(5)), store.deliver(["alice"], record(6))]);
    // The session still sees its login snapshot.
    expect(d.count).toBe(3);
    await d.commit(new Set([0, 2]));
    const after = scanBuffer(readFileSync(p));
    expect(after.validEnd).toBe(readFileSync(p).length);
    const d2 = await FileMaildrop.open(r, "alice");
    const got = (await all(d2)).map((b) => /Subject: message (\d+)/.exec(b.toString())![1]);
    d2.release();
    expect(got.sort()).toEqual(["2", "4", "5", "6"]);
    await store.close();
  });

  test("a hand-written last message whose '.' has no newline, then mail appended during the session: the newline goes with that '.'", async () => {
    const hand = "From: a@b\nSubject: first\n\nhello\n.\nFrom: a@b\nSubject: second\n\nbye\n.";
    for (const dropped of [new Set([1]), new Set([0]), new Set<number>([0, 1])]) {
      const r = root();
      const p = writeBox(r, Buffer.from(hand));
      const store = new FileMailStore(r);
      const cache = new IndexCache();
      const d = await FileMaildrop.open(r, "alice", () => {}, cache);
      expect(d.count).toBe(2);
      // smtpmail writes the missing newline first (before the commit, so the session's
      // snapshot ends at the bare ".").
      await store.deliver(["alice"], record(7));
      await store.deliver(["alice"], record(8));
      await d.commit(dropped);
      const file = readFileSync(p);
      expect(scanBuffer(file).validEnd).toBe(file.length);
      const kept = ["first", "second"].filter((_, i) => !dropped.has(i)).map((w) => `From: a@b\r\nSubject: ${w}\r\n\r\n${w === "first" ? "hello" : "bye"}\r\n`);
      // The index the rewrite left in the cache is the file's as a fresh scan reads it, so the
      // next login takes it (a one-byte gap after a kept "." failed the check; taken without
      // one, a later rewrite from it ran the next message on from the ".": helper-63).
      const hits = cache.stats.hits;
      const d2 = await FileMaildrop.open(r, "alice", () => {}, cache);
      expect(cache.stats.hits).toBe(hits + 1);
      expect((await all(d2)).map((b) => b.toString())).toEqual([...kept, expected(7).toString(), expected(8).toString()]);
      await d2.commit(new Set([kept.length])); // message 7, through the cached index
      await store.close();
      const fresh = await FileMaildrop.open(r, "alice");
      expect((await all(fresh)).map((b) => b.toString())).toEqual([...kept, expected(8).toString()]);
      fresh.release();
    }
  });

  test("appends racing the commit are kept, each exactly once", async () => {
    const r = root();
    writeBox(r, ...Array.from({ length: 200 }, (_, i) => record(i)));
    const store = new FileMailStore(r);
    const d = await FileMaildrop.open(r, "alice");
    const deliveries = Array.from({ length: 50 }, (_, i) => store.deliver(["alice"], record(1000 + i)));
    const marked = new Set(Array.from({ length: 100 }, (_, i) => i * 2));
    await Promise.all([d.commit(marked), ...deliveries]);
    const d2 = await FileMaildrop.open(r, "alice");
    const got = (await all(d2)).map((b) => Number(/Subject: message (\d+)/.exec(b.toString())![1]));
    d2.release();
    await store.close();
    const want = [...Array.from({ length: 100 }, (_, i) => i * 2 + 1), ...Array.from({ length: 50 }, (_, i) => 1000 + i)];
    expect(got.sort((a, b) => a - b)).toEqual(want.sort((a, b) => a - b));
  });

  test("UIDs are unique for identical messages and stable across sessions", async () => {
    const r = root();
    writeBox(r, record(1), record(7), record(7), record(2), record(7));
    const d = await FileMaildrop.open(r, "alice");
    const uids = Array.from({ length: d.count }, (_, i) => d.uid(i));
    expect(new Set(uids).size).toBe(5);
    for (const u of uids) expect(u).toMatch(/^[\x21-\x7e]{1,70}$/); // RFC 1939 unique-id syntax
    d.release();
    const d2 = await FileMaildrop.open(r, "alice");
    expect(Array.from({ length: d2.count }, (_, i) => d2.uid(i))).toEqual(uids);
    // Deleting message 1 does not change the others' ids.
    await d2.commit(new Set([0]));
    const d3 = await FileMaildrop.open(r, "alice");
    expect(Array.from({ length: d3.count }, (_, i) => d3.uid(i))).toEqual(uids.slice(1));
    d3.release();
  });

  // UIDs hash the whole message: sharing a prefix and a length is not enough to collide.
  test("a different message never inherits the UID of a deleted one (same first 4 KiB and length)", async () => {
    // Another client deletes A; a client that keeps mail on the server and saw A must not
    // mistake B for A, or it never downloads B.
    const r = root();
    const prefix = Array.from({ length: 80 }, (_, i) => `shared line ${i} ${"p".repeat(50)}`);
    const a = record(1, [...prefix, "tail AAAA"]);
    const b = record(1, [...prefix, "tail BBBB"]);
    expect(a.length).toBe(b.length);
    const store = new FileMailStore(r);
    const open: FileMaildrop[] = [];
    try {
      await store.deliver(["alice"], a);
      const d1 = await FileMaildrop.open(r, "alice");
      const uidA = d1.uid(0);
      d1.release();
      await store.deliver(["alice"], b);
      const d2 = await FileMaildrop.open(r, "alice");
      open.push(d2);
      expect(d2.count).toBe(2);
      expect(d2.uid(0)).toBe(uidA);
      expect(d2.uid(1)).not.toBe(uidA);
      await d2.commit(new Set([0])); // A deleted
      const d3 = await FileMaildrop.open(r, "alice");
      open.push(d3);
      expect(d3.count).toBe(1);
      expect((await all(d3))[0]!.toString()).toContain("tail BBBB");
      expect(d3.uid(0)).not.toBe(uidA);
    } finally {
      for (const d of open) d.release();
      await store.close();
    }
  });

  test("a hand-written LF-only mailbox in the assignment's format is served with CRLF and correct sizes", async () => {
    const r = root();
    const text =
      "From: agupta@10.5.20.22\nTo: alice@10.5.21.32\nSubject: This week's lab\nReceived: 2024-01-02 : 10 : 30\nThe students are eager.\nLet us give them something.\n.\n" +
      "From: ng@10.5.21.32\nTo: alice@10.5.21.32\nSubject: second\nReceived: 2024-01-03 : 11 : 45\nshort body\n.\n";
    writeBox(r, Buffer.from(text));
    const d = await FileMaildrop.open(r, "alice");
    try {
      expect(d.count).toBe(2);
      const msgs = text.split("\n.\n").slice(0, 2).map((m) => Buffer.from(m.split("\n").join("\r\n") + "\r\n"));
      for (let i = 0; i < 2; i++) {
        const raw = await bytes(await d.read(i));
        expect(raw.toString()).toBe(msgs[i]!.toString() + ".\r\n");
        expect(d.size(i)).toBe(msgs[i]!.length);
      }
      const top = (await bytes(await d.top(0, 1))).toString();
      expect(top).toBe("From: agupta@10.5.20.22\r\nTo: alice@10.5.21.32\r\nSubject: This week's lab\r\nReceived: 2024-01-02 : 10 : 30\r\nThe students are eager.\r\n.\r\n");
    } finally {
      d.release();
    }
  });

  test("a large hand-written LF message is streamed converted piece by piece, the same bytes as at once, CRLF split across pieces included", async () => {
    const r = root();
    // Over the 128 KiB read-at-once size; a CR|LF pair straddles the 256 KiB piece boundary.
    let body = "From: a@b\nSubject: big\n\n";
    while (body.length < 256 * 1024 - 1) body += "line of text\n";
    body = body.slice(0, 256 * 1024 - 1) + "\r\n";
    for (let i = 0; i < 30_000; i++) body += i % 7 ? `..stuffed ${i}\n` : `crlf ${i}\r\n`;
    const stored = Buffer.from(body + ".\n", "latin1");
    writeBox(r, stored);
    const d = await FileMaildrop.open(r, "alice");
    try {
      expect(d.count).toBe(1);
      const raw = await bytes(await d.read(0));
      expect(raw.equals(toWire(stored, true))).toBe(true);
      expect(unstuffBody(raw).length).toBe(d.size(0));
    } finally {
      d.release();
    }
  });

  test("a hand-written message with a line starting with a single '.' is not dot-stuffed: RETR and TOP stuff its '.' lines, small and streamed", async () => {
    const r = root();
    const small = "From: a@b\nSubject: dots\n\n.x dotted\n..two\nplain\n.\n";
    let big = "From: a@b\nSubject: big\n\n";
    for (let i = 0; big.length < 300 * 1024; i++) big += i % 3 ? `line ${i}\n` : `.dot ${i}\r\n`;
    big += "last\n";
    // The "." line goes without a newline at the end of the file: it gets no dot either.
    writeBox(r, Buffer.from(small + big + ".", "latin1"));
    const d = await FileMaildrop.open(r, "alice");
    try {
      expect(d.count).toBe(2);
      for (const [i, text] of [small.slice(0, -2), big].entries()) {
        const wire = text.split(/\r?\n/).slice(0, -1).map((l) => (l.startsWith(".") ? "." + l : l) + "\r\n").join("");
        const raw = (await bytes(await d.read(i))).toString("latin1");
        expect(raw).toBe(wire + ".\r\n");
        // RFC 1939: LIST counts what a client has once it takes off the stuffing dots.
        expect(unstuffBody(Buffer.from(raw, "latin1")).length).toBe(d.size(i));
        expect(d.size(i)).toBe(text.replace(/\r?\n/g, "\r\n").length);
        const top = (await bytes(await d.top(i, 2))).toString("latin1");
        expect(top).toBe(wire.split("\r\n").slice(0, 5).join("\r\n") + "\r\n.\r\n");
      }
    } finally {
      d.release();
    }
  });

  test("a hand-written file whose final '.' has no newline: the last message is complete in RETR and TOP", async () => {
    const r = root();
    writeBox(r, Buffer.from("From: a@b\nTo: alice@c\nSubject: s\nReceived: x\nfirst\nlast line\n."));
    const d = await FileMaildrop.open(r, "alice");
    try {
      expect(d.count).toBe(1);
      const want = "From: a@b\r\nTo: alice@c\r\nSubject: s\r\nReceived: x\r\nfirst\r\nlast line\r\n";
      expect((await bytes(await d.read(0))).toString()).toBe(want + ".\r\n");
      expect(d.size(0)).toBe(want.length);
      expect((await bytes(await d.top(0, 10))).toString()).toBe(want + ".\r\n");
    } finally {
      d.release();
    }
  });

  test("an unterminated tail (crash mid-append, or a last message without its '.' line) is not served, and a rewrite keeps it beside the mailbox, never glued or lost", async () => {
    const lastWithoutDot = Buffer.from("Subject: two\r\n\r\nbody2\r\n."); // "\r\n." could be a cut record: torn
    for (const torn of [record(3).subarray(0, 40), lastWithoutDot]) {
      const r = root();
      const p = writeBox(r, record(1), record(2), torn);
      const warnings: string[] = [];
      const d = await FileMaildrop.open(r, "alice", (m) => warnings.push(m));
      expect(d.count).toBe(2);
      expect(warnings.join("\n")).toMatch(/unterminated/);
      expect(await all(d)).toEqual([expected(1), expected(2)]);
      await d.commit(new Set([0]));
      expect(readFileSync(p).equals(record(2))).toBe(true);
      const asides = readdirSync(join(r, "alice")).filter((f) => f.startsWith("mymailbox.torn-"));
      expect(asides.length).toBe(1);
      expect(readFileSync(join(r, "alice", asides[0]!)).equals(torn)).toBe(true);
      expect(warnings.join("\n")).toContain(`moved to ${join(r, "alice", asides[0]!)}`);
      const d2 = await FileMaildrop.open(r, "alice");
      expect(await all(d2)).toEqual([expected(2)]);
      d2.release();
    }
  });

  test("a FIFO or a device in the mailbox's place is refused at once (never waits for a writer), and the lock is let go", async () => {
    const r = root();
    const p = mailboxPath(r, "alice");
    expect(Bun.spawnSync(["mkfifo", p]).exitCode).toBe(0);
    for (let i = 0; i < 3; i++) {
      // Three in a row: a blocking open would hold both of Bun's pool threads by the third.
      const e = await FileMaildrop.open(r, "alice").then(() => null, (err: MaildropUnavailable) => err);
      expect(e).toBeInstanceOf(MaildropUnavailable);
      expect([e?.why, e?.permanent]).toEqual(["not a regular file", true]);
    }
    expect(existsSync(popLockPath(r, "alice"))).toBe(false);
    removeRoot(p);
    // A link is not followed at all (helper-42: frank's link to bob's mailbox let frank read it).
    symlinkSync("/dev/zero", p);
    const e = await FileMaildrop.open(r, "alice").then(() => null, (err: MaildropUnavailable) => err);
    expect([e?.why, e?.permanent]).toEqual(["ELOOP", true]);
    removeRoot(p);
    writeFileSync(join(r, "other"), record(1));
    symlinkSync(join(r, "other"), p);
    const e2 = await FileMaildrop.open(r, "alice").then(() => null, (err: MaildropUnavailable) => err);
    expect([e2?.why, e2?.permanent]).toEqual(["ELOOP", true]);
    expect(existsSync(popLockPath(r, "alice"))).toBe(false);
  });

  test("a listed user whose directory does not exist yet logs in to an empty maildrop (the directory is made)", async () => {
    const r = root();
    removeRoot(join(r, "alice"));
    const d = await FileMaildrop.open(r, "alice");
    expect(d.count).toBe(0);
    expect(existsSync(popLockPath(r, "alice"))).toBe(true);
    d.release();
    expect(readdirSync(join(r, "alice"))).toEqual([]);
  });

  test("a leftover rewrite temp file does not block login and is cleaned up", async () => {
    const r = root();
    const p = writeBox(r, record(1), record(2));
    writeFileSync(`${p}.rewrite.99999.tmp`, record(9));
    const d = await FileMaildrop.open(r, "alice");
    expect(await all(d)).toEqual([expected(1), expected(2)]);
    await d.commit(new Set([1]));
    expect(readdirSync(join(r, "alice")).sort()).toEqual(["mymailbox"]);
    expect(readFileSync(p).equals(record(1))).toBe(true);
  });

  test("a stale POP3 lock left by a dead process does not block login; a live one does", async () => {
    const r = root();
    writeBox(r, record(1));
    const dead = Bun.spawn(["true"]);
    await dead.exited;
    writeFileSync(popLockPath(r, "alice"), `${dead.pid} ${hostname()}\n`);
    const d = await FileMaildrop.open(r, "alice");
    expect(d.count).toBe(1);
    d.release();
    expect(existsSync(popLockPath(r, "alice"))).toBe(false);
    // A lock naming a live process (a sleeping child) is respected.
    const live = Bun.spawn(["sleep", "30"]);
    try {
      writeFileSync(popLockPath(r, "alice"), `${live.pid} ${hostname()}\n`);
      let err: unknown;
      try {
        (await FileMaildrop.open(r, "alice")).release();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(MaildropBusy);
    } finally {
      live.kill(9);
      await live.exited;
    }
  });

  test("a login that sees only the first '.' of an append does not take it for an empty record", async () => {
    // A message whose first header line starts with "." is stored stuffed: its record begins "..".
    const r = root();
    const path = mailboxPath(r, "alice");
    const second = buildRecord(Buffer.from("..X-Dot: y\r\nSubject: two\r\n\r\nbody\r\n"), RECEIVED);
    writeFileSync(path, Buffer.concat([record(1), second.subarray(0, 1)])); // smtpmail's write, seen after one byte
    const d = await FileMaildrop.open(r, "alice");
    expect(d.count).toBe(1);
    appendFileSync(path, second.subarray(1)); // the write completes during the session
    await d.commit(new Set([0]));
    expect(readFileSync(path).equals(second)).toBe(true);
  });
});
