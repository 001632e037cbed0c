// The indexes popserver keeps between sessions (lib/index-cache.ts), on a real directory:
// whatever happened to the file in between, a login through the cache must see exactly what
// a login that indexes the whole file sees.
import { afterAll, describe, expect, test } from "bun:test";
import { seeded } from "./helpers/random.ts";
import { appendFileSync, fstatSync, openSync, closeSync, readFileSync, renameSync, statSync, truncateSync, unlinkSync, utimesSync, writeFileSync } from "node:fs";
import { IndexCache } from "../lib/index-cache.ts";
import { MailboxScanner, scanFile } from "../lib/mailbox-scanner.ts";
import { FileMaildrop } from "../lib/maildrop.ts";
import { buildRecord } from "../lib/mailbox.ts";
import { messageHash } from "../lib/message-hash.ts";
import { mailboxPath } from "../lib/paths.ts";
import { join } from "node:path";
import { makeRoot, removeRoot } from "./helpers/servers.ts";

const roots: string[] = [];
afterAll(() => roots.forEach(removeRoot));
function root(): string {
  const r = makeRoot({ alice: "pw" });
  roots.push(r);
  return r;
}

const record = (n: number, extra = "") => buildRecord(Buffer.from(`From: bob@example.com\r\nSubject: message ${n}\r\n\r\nbody ${n}${extra}\r\n.leading dot\r\n`), "Received: 2024-01-02 : 03 : 04");

/** What a session sees: per message its size, UID and bytes as sent. */
async function view(r: string, cache: IndexCache | null) {
  const d = await FileMaildrop.open(r, "alice", () => {}, cache);
  try {
    const out: string[] = [];
    for (let i = 0; i < d.count; i++) {
      const body = d.read(i) as { fd: number; offset: number; length: number } | Uint8Array;
      const bytes = body instanceof Uint8Array ? Buffer.from(body) : readFileSync(mailboxPath(r, "alice")).subarray(body.offset, body.offset + body.length);
      out.push(`${d.size(i)} ${d.uid(i)} ${bytes.toString("latin1")}`);
    }
    return out;
  } finally {
    d.release();
  }
}

describe("IndexCache", () => {
  test("an unchanged mailbox is not indexed again; an appended one only from where it ended", async () => {
    const r = root();
    const path = mailboxPath(r, "alice");
    writeFileSync(path, Buffer.concat([record(1), record(2), record(1)]));
    const cache = new IndexCache();
    const index = async () => {
      const fd = openSync(path, "r");
      try {
        return await cache.index(path, fd, fstatSync(fd));
      } finally {
        closeSync(fd);
      }
    };
    const first = await index();
    expect(first.index.count).toBe(3);
    const again = await index();
    expect(again.index).toBe(first.index);
    appendFileSync(path, Buffer.concat([record(3), record(1)]));
    const grown = await index();
    expect(grown.index).not.toBe(first.index);
    expect(first.index.count).toBe(3); // a session holding the old index still sees 3
    expect(grown.index.count).toBe(5);
    expect(grown.validEnd).toBe(statSync(path).size);
    // Messages already there keep their UIDs.
    expect([0, 1, 2].map((i) => grown.index.uid(i))).toEqual([0, 1, 2].map((i) => first.index.uid(i)));
    // Identical messages keep their file-order numbers: the third copy of message 1 is "-3".
    expect(grown.index.uid(4)).toBe(`${grown.index.uid(0)}-3`);
    // Given back, it is grown in place: no second copy of a large index.
    cache.giveBack(path, grown.index);
    appendFileSync(path, record(4));
    const again2 = await index();
    expect(again2.index).toBe(grown.index);
    expect(again2.index.count).toBe(6);
    expect(again2.index.uid(5)).not.toBe(again2.index.uid(4));
  });

  test("after every kind of change, a login through the cache sees what a full index sees", async () => {
    const r = root();
    const path = mailboxPath(r, "alice");
    const cache = new IndexCache();
    const rand = seeded(12345);
    let n = 0;
    const kinds = new Set<string>();
    writeFileSync(path, Buffer.concat([record(++n), record(++n)]));
    // "append" twice: it is the common case.
    const KINDS = ["append", "append", "large append", "torn append", "finish torn", "rewrite", "replace", "replace, same end", "overwrite in place", "truncate", "hand-written", "duplicate"];
    for (let step = 0; step < 100; step++) {
      const kind = KINDS[rand(KINDS.length)]!;
      kinds.add(kind);
      const size = statSync(path).size;
      switch (kind) {
        case "append":
          appendFileSync(path, Buffer.concat(Array.from({ length: 1 + rand(3) }, () => record(++n))));
          break;
        case "large append": // ends further apart than the 64 KiB window the check reads through
          appendFileSync(path, Buffer.concat([record(++n, "y".repeat(70_000 + rand(70_000))), record(++n)]));
          break;
        case "torn append": // an interrupted write: the cache must not take it as a message
          appendFileSync(path, record(++n).subarray(0, 20));
          break;
        case "finish torn": // smtpmail ends a torn tail with a "." line, then appends
          appendFileSync(path, Buffer.concat([Buffer.from("\r\n.\r\n"), record(++n)]));
          break;
        case "rewrite": {
          // popserver's own rewrite at QUIT, with deletions; the cache learns the new file.
          const d = await FileMaildrop.open(r, "alice", () => {}, cache);
          appendFileSync(path, record(++n)); // arrives during the session
          const deleted = new Set<number>();
          for (let i = 0; i < d.count; i++) if (rand(3) === 0) deleted.add(i);
          await d.commit(deleted);
          break;
        }
        case "replace": {
          const tmp = `${path}.new`;
          writeFileSync(tmp, Buffer.concat([record(++n), record(++n), record(++n)]));
          renameSync(tmp, path);
          break;
        }
        case "replace, same end": {
          // Another file whose last message is where the cached one was: only its identity tells.
          const old = readFileSync(path);
          const at = old.indexOf("body ");
          if (at >= 0) old[at] = 0x42;
          writeFileSync(`${path}.new`, old);
          renameSync(`${path}.new`, path);
          break;
        }
        case "overwrite in place": // same inode, different bytes, longer
          writeFileSync(path, Buffer.concat([record(++n, "x"), readFileSync(path), record(++n)]));
          break;
        case "truncate":
          truncateSync(path, Math.floor(size / 2));
          break;
        case "hand-written": // bare LF, and a final "." without a newline
          appendFileSync(path, `From: carol@example.com\nSubject: hand ${++n}\n\nline\n.`);
          break;
        case "duplicate":
          appendFileSync(path, record(1));
          break;
      }
      const cached = await view(r, cache);
      const fresh = await view(r, null);
      expect({ step, kind, messages: cached }).toEqual({ step, kind, messages: fresh });
    }
    expect(kinds.size).toBe(new Set(KINDS).size);
    // Not a full index compared with a full index: most logins came through the cache.
    expect(cache.stats.hits).toBeGreaterThan(cache.stats.misses);
  });

  test("a rewrite at QUIT tells the cache what it wrote, also after a hand-written final '.' that smtpmail ended", async () => {
    const r = root();
    const path = mailboxPath(r, "alice");
    const cache = new IndexCache();
    writeFileSync(path, Buffer.concat([record(1), Buffer.from("From: carol@example.com\nSubject: hand\n\nline\n.")]));
    // First the session's snapshot ends in that ".": the rewrite counts the newline smtpmail
    // added after it in that message, as a fresh index does, so its word is good (it left a
    // gap there, and the next login's check had to index the file again). Then the snapshot
    // ends cleanly.
    for (const [deleted, hit] of [[0, true], [0, true]] as const) {
      const d = await FileMaildrop.open(r, "alice", () => {}, cache);
      // What smtpmail does to a final "." without a newline before it appends.
      if (!readFileSync(path).toString("latin1").endsWith("\n")) appendFileSync(path, "\n");
      appendFileSync(path, record(2 + deleted));
      await d.commit(new Set([deleted]));
      const before = { ...cache.stats };
      expect(await view(r, cache)).toEqual(await view(r, null));
      expect(cache.stats.hits).toBe(before.hits + (hit ? 1 : 0));
    }
  });

  test("a file rewritten in place is indexed again when a message end moved or the last message changed", async () => {
    const r = root();
    const path = mailboxPath(r, "alice");
    const cache = new IndexCache();
    const A = "Subject: a\n\nhello\n.\n", B = "Subject: b\n\nbye\n.\n", C = "Subject: c\n\nlast\n.\n";
    const rewrites: Buffer[] = [
      Buffer.from(A.replace("\n.\n", "\nx\n") + B + C), // same length: A's "." line gone, so A and B are one message
      Buffer.concat([record(2, "+"), record(3).subarray(1), record(4)]), // ends moved, last record where it was
      Buffer.concat([record(2), record(3), record(9)]), // only the last message changed
    ];
    for (const [k, after] of rewrites.entries()) {
      writeFileSync(path, k === 0 ? A + B + C : Buffer.concat([record(2), record(3), record(4)]));
      await view(r, cache);
      const ino = statSync(path).ino;
      writeFileSync(path, after); // truncate and write: the same inode
      expect(statSync(path).ino).toBe(ino);
      expect({ k, messages: await view(r, cache) }).toEqual({ k, messages: await view(r, null) });
    }
  });

  test("a QUIT after such a rewrite writes what a full index would have", async () => {
    const r = root();
    const path = mailboxPath(r, "alice");
    const cache = new IndexCache();
    const A = "Subject: a\n\nhello\n.\n", B = "Subject: b\n\nbye\n.\n", C = "Subject: c\n\nlast\n.\n";
    writeFileSync(path, A + B + C);
    await view(r, cache);
    writeFileSync(path, A.replace("\n.\n", "\nx\n") + B + C);
    const d = await FileMaildrop.open(r, "alice", () => {}, cache);
    expect(d.count).toBe(2); // "a" and "b" are one message now
    await d.commit(new Set([1]));
    expect(readFileSync(path, "latin1")).toBe(A.replace("\n.\n", "\nx\n") + B);
  });

  test("an empty '.' record after the last message, then more bytes", async () => {
    const r = root();
    const path = mailboxPath(r, "alice");
    const cache = new IndexCache();
    writeFileSync(path, Buffer.concat([record(1), Buffer.from(".")]));
    await view(r, cache);
    appendFileSync(path, Buffer.concat([Buffer.from("\r\n"), record(2)]));
    expect(await view(r, cache)).toEqual(await view(r, null));
  });

  test("a file untouched since a settled index is taken without a read; one written since is checked", async () => {
    const r = root();
    const path = mailboxPath(r, "alice");
    writeFileSync(path, Buffer.concat([record(1), record(2)]));
    const old = new Date(Date.now() - 5000);
    utimesSync(path, old, old);
    const cache = new IndexCache();
    await view(r, cache);
    // Bytes changed behind its back with the old size and mtime put back: taken as it is
    // (this is what "untouched" means), so the stale UID shows. Then a real write is seen.
    writeFileSync(path, Buffer.concat([record(1), record(3)]));
    utimesSync(path, old, old);
    const stale = await view(r, cache);
    expect(stale).not.toEqual(await view(r, null));
    appendFileSync(path, record(4));
    expect(await view(r, cache)).toEqual(await view(r, null));
    // A file indexed right after a write is not settled: a second write in the same clock
    // tick (simulated by putting its mtime back) is still looked at.
    writeFileSync(path, Buffer.concat([record(1), record(2)]));
    await view(r, cache);
    const { mtimeMs } = statSync(path);
    writeFileSync(path, Buffer.concat([record(1), record(5)]));
    utimesSync(path, mtimeMs / 1000, mtimeMs / 1000);
    expect(statSync(path).mtimeMs).toBe(mtimeMs);
    expect(await view(r, cache)).toEqual(await view(r, null));
  });

  test("the memory bound counts bytes held, and the least recently used mailbox goes first", async () => {
    const names = Array.from({ length: 60 }, (_, i) => `u${i}`);
    const r = makeRoot(Object.fromEntries([...names, "newcomer"].map((u) => [u, "pw"])));
    roots.push(r);
    const cache = new IndexCache(100_000);
    for (const u of names) {
      writeFileSync(mailboxPath(r, u), record(1));
      (await FileMaildrop.open(r, u, () => {}, cache)).release();
    }
    expect(cache.bytes).toBeLessThanOrEqual(100_000);
    expect(cache.size).toBeGreaterThan(1);
    expect(cache.size).toBeLessThan(names.length);
    // The newest ones are kept.
    const kept = names.slice(-cache.size);
    const hit = async (u: string) => {
      const before = cache.stats.hits;
      (await FileMaildrop.open(r, u, () => {}, cache)).release();
      return cache.stats.hits > before;
    };
    expect(await hit(kept[0]!)).toBe(true); // now the most recently used
    writeFileSync(mailboxPath(r, "newcomer"), record(1));
    expect(await hit("newcomer")).toBe(false); // pushes out the least recently used: kept[1]
    expect(await hit(kept[0]!)).toBe(true);
    expect(await hit(kept[2]!)).toBe(true);
    expect(await hit(kept[1]!)).toBe(false);
  });

  test("a new file on a reused inode number is told apart by its birth time", async () => {
    const r = root();
    const path = mailboxPath(r, "alice");
    const cache = new IndexCache();
    // Same length, same message ends, same last message: only the first message's bytes differ.
    writeFileSync(path, Buffer.concat([record(1), record(2)]));
    await view(r, cache);
    let reused = false;
    for (let attempt = 0; attempt < 20 && !reused; attempt++) {
      const ino = statSync(path).ino;
      unlinkSync(path);
      writeFileSync(path, Buffer.concat([record(7), record(2)]));
      reused = statSync(path).ino === ino;
    }
    expect(reused).toBe(true); // ext4 and tmpfs hand a freed inode number straight back
    expect(await view(r, cache)).toEqual(await view(r, null));
  });

  test("a login that overlaps a cut and re-append of a torn tail is not kept", async () => {
    const r = root();
    const path = mailboxPath(r, "alice");
    const cache = new IndexCache();
    writeFileSync(path, Buffer.concat([record(1), record(2).subarray(0, 30)])); // torn tail
    const fd = openSync(path, "r");
    try {
      const st = fstatSync(fd); // what the login saw first
      // smtpmail sets the torn bytes aside and appends while the login reads: simulated by
      // changing the file between the stat and the read.
      truncateSync(path, record(1).length);
      appendFileSync(path, Buffer.concat([record(3), record(4)]));
      utimesSync(path, new Date(), new Date(Date.now() + 5));
      await cache.index(path, fd, st);
      expect(cache.size).toBe(0);
      // A file that ended at a message boundary when the login began cannot have been cut.
      const st2 = fstatSync(fd);
      appendFileSync(path, record(5));
      await cache.index(path, fd, st2);
      expect(cache.size).toBe(1);
    } finally {
      closeSync(fd);
    }
  });

  test("the UIDs of identical copies outlive a login that overlaps an append and is not kept", async () => {
    const r = root();
    const path = mailboxPath(r, "alice");
    const cache = new IndexCache();
    writeFileSync(path, Buffer.concat([record(7), record(7), record(7), record(8)]));
    const uids = (v: string[]) => v.map((m) => m.split(" ")[1]);
    const first = uids(await view(r, cache));
    const d = await FileMaildrop.open(r, "alice", () => {}, cache);
    await d.commit(new Set([0])); // the survivors keep the 2nd and 3rd copies' UIDs
    expect(uids(await view(r, cache))).toEqual(first.slice(1));
    // A login without deletions while smtpmail appends: its stat sees half a message, its
    // scan sees more, and the file's mtime moves meanwhile, so its index is not kept.
    appendFileSync(path, record(9).subarray(0, 40));
    const fd = openSync(path, "r");
    try {
      const st = fstatSync(fd);
      appendFileSync(path, record(9).subarray(40));
      utimesSync(path, new Date(), new Date(Date.now() + 5000));
      const raced = await cache.index(path, fd, st);
      expect(raced.index.count).toBe(3);
      cache.giveBack(path, raced.index);
    } finally {
      closeSync(fd);
    }
    // The next login counts the copies as the rewrite left them, not afresh (which gave the
    // survivors the first two UIDs: the deleted one came back, and a client skipped it as seen).
    appendFileSync(path, record(7)); // a new copy, with a number nobody has seen
    const after = uids(await view(r, cache));
    expect(after.slice(0, 3)).toEqual(first.slice(1));
    expect(new Set([...first, ...after]).size).toBe(first.length + 2);
  });
});

describe("scanFile", () => {
  test("a large message whose file is cut and written again between the scan and its re-read is left out, not hashed from other bytes (helper-72)", async () => {
    const root = makeRoot({ alice: "a" });
    const path = join(root, "alice", "mymailbox");
    const small = "Subject: a\r\n\r\nhi\r\n.\r\n";
    const file = small + "From: big\n" + "line of text\n".repeat(200_000) + ".\nSubject: after\r\n\r\nbye\r\n.\r\n";
    writeFileSync(path, file);
    const proto = MailboxScanner.prototype as unknown as { scan: (...a: unknown[]) => number };
    const scan = proto.scan;
    let cut = false;
    // The file changes right after the scan found the big message's end.
    proto.scan = function (this: MailboxScanner, ...a: unknown[]) {
      const used = scan.apply(this, a);
      if (this.unsettled && !cut) {
        cut = true;
        truncateSync(path, this.unsettled.start + 100);
        appendFileSync(path, "X".repeat(file.length));
      }
      return used;
    };
    const fd = openSync(path, "r");
    try {
      const s = await scanFile(fd, 0, file.length);
      expect(cut).toBe(true);
      // Before: an entry [21, 2600012] with another size and UID, its bytes no longer a message.
      expect(s.messages.map((m) => [m.offset, m.length])).toEqual([[0, small.length]]);
      expect(s.validEnd).toBe(small.length);
    } finally {
      closeSync(fd);
      proto.scan = scan;
      removeRoot(root);
    }
  });

  // Its reads overlap its scans (the next 1 MiB chunk is read while this one is scanned):
  // messages cut by chunk ends, one larger than two chunks, and a region that starts
  // mid-file must index exactly as one scan of the bytes in memory does.
  test("a file of several chunks indexes as a scan of the whole bytes at once", async () => {
    const r = root();
    const parts: Buffer[] = [];
    const next = seeded(7);
    const rand = () => next(2 ** 31) / 2 ** 31;
    for (let n = 0; n < 60; n++) {
      const big = n === 20 ? 2.5 * 2 ** 20 : rand() < 0.2 ? rand() * 300_000 : rand() * 3000;
      parts.push(record(n, "x".repeat(Math.floor(big))));
    }
    parts.push(Buffer.from("From: hand@written\nSubject: LF only\n\nbody\n.")); // a hand-written last message, "." without newline
    const file = Buffer.concat(parts);
    expect(file.length).toBeGreaterThan(4 * 2 ** 20);
    const starts = parts.map((_, i) => parts.slice(0, i).reduce((n, p) => n + p.length, 0));
    const path = mailboxPath(r, "alice");
    writeFileSync(path, file);
    const fd = openSync(path, "r");
    try {
      // From the start, from a message before the big one, from the big one itself.
      for (const first of [0, 3, 20]) {
        const from = starts[first]!;
        const scanned = await scanFile(fd, from, file.length);
        const whole = new MailboxScanner(from);
        whole.scan(file.subarray(from), from, true);
        expect(scanned.messages).toEqual(whole.messages);
        expect(scanned.validEnd).toBe(file.length);
        expect(scanned.messages.length).toBe(parts.length - first);
        expect(scanned.messages.map((m) => m.offset)).toEqual(starts.slice(first));
      }
    } finally {
      closeSync(fd);
    }
  });

  /** scanFile of file from each offset in `froms` against one scan of the bytes in memory. */
  async function sameAsWhole(file: Buffer, froms: number[]) {
    const path = mailboxPath(root(), "alice");
    writeFileSync(path, file);
    const fd = openSync(path, "r");
    try {
      for (const from of froms) {
        const whole = new MailboxScanner(from);
        whole.scan(file.subarray(from), from, true);
        const scanned = await scanFile(fd, from, file.length);
        expect(scanned.messages).toEqual(whole.messages);
        expect(scanned.validEnd).toBe(whole.validEnd);
      }
    } finally {
      closeSync(fd);
    }
  }

  // The scan lets go of the bytes of a message longer than its buffer (1 MiB) once searched,
  // and hashes it from the file when its end is found: every kind of record must index as
  // before, its UID (the hash of all its bytes), size, flags and end, wherever the chunks cut it.
  test("messages longer than the scan buffer index as a scan of the whole bytes does (UIDs, sizes, flags, ends)", async () => {
    const rand = seeded(11);
    const MiB = 2 ** 20;
    const text = (n: number, eol: string, dots: string[]) => {
      let out = "";
      while (out.length < n) {
        const k = rand(40);
        out += (k < dots.length ? dots[k]! : "x".repeat(rand(120))) + eol;
      }
      return out;
    };
    // Each a record of more than a buffer, ended as a file may hold it.
    const kinds: Array<() => string> = [
      // smtpmail's own: CRLF, dot-stuffed ("..x"), a ".x" line from a client that did not stuff.
      () => buildRecord(Buffer.from(`Subject: big\r\n\r\n${text(MiB + rand(2 * MiB), "\r\n", ["..x", ".x", "..", ""])}`), "Received: 2024-01-02 : 03 : 04").toString("latin1"),
      // Hand-written with LF: stuffed or not ("." then no second "."), empty lines.
      () => `From: hand\n${text(MiB + rand(2 * MiB), "\n", [".x", "", "..y", ". "])}.\n`,
      () => `From: hand\n${text(MiB + rand(MiB), "\n", ["..x", "..", ""])}.\n`,
      // Line ends mixed; a CRLF mail closed by `echo .`.
      () => `From: mixed\r\n${text(MiB + rand(MiB), rand(2) ? "\r\n" : "\n", ["..", "\r"])}a\r\nb\n.\n`,
      () => `Subject: x\r\n${text(MiB + rand(MiB), "\r\n", [".."])}.\n`,
      // A first line longer than the buffer (its dot counted before its end is seen).
      () => `${rand(2) ? "." : ".."}${"y".repeat(MiB + rand(MiB))}${rand(2) ? "\r\n" : "\n"}body\r\n.\r\n`,
      () => `${"z".repeat(2 * MiB + rand(MiB))}\n..w\n.\n`,
    ];
    const small = (n: number) => buildRecord(Buffer.from(`Subject: small ${n}\r\n\r\n.dot\r\n`), "Received: 2024-01-02 : 03 : 04").toString("latin1");
    // How the file ends: complete, a hand-written last message with "." and no newline (long
    // too), a long unterminated one, an append cut in its "\r\n." (no message), a lone ".".
    const ends = ["", `From: end\n${text(MiB + rand(MiB), "\n", [".x"])}.`, `From: cut\r\n${text(MiB + rand(MiB), "\r\n", [".."])}`, "From: torn\r\n\r\nbody\r\n.", "\n."];
    for (let round = 0; round < 10; round++) {
      const parts = [small(0)];
      for (let k = 1 + rand(3); k > 0; k--) parts.push(kinds[(round + k) % kinds.length]!(), ...(rand(2) ? [small(k)] : []));
      parts.push(ends[round % ends.length]!);
      const file = Buffer.from(parts.join(""), "latin1");
      // From the start, and from the first big message (an index grown by a tail scan).
      await sameAsWhole(file, [0, parts[0]!.length]);
    }
  }, 60_000);

  // A login to one 10 MB message cost popserver 18 MiB and 50 at once ~900 MiB: the scan
  // buffer doubled until it held the whole message. Measured in a process of its own, and
  // against the message's real index (its UID the hash of all its bytes).
  test("indexing a 40 MB message takes memory bounded by the scan buffer, not by the message", async () => {
    const r = root();
    const path = mailboxPath(r, "alice");
    const head = buildRecord(Buffer.from("Subject: before\r\n\r\nhi\r\n"), "Received: 2024-01-02 : 03 : 04");
    const body = Buffer.from(`From: hand\nSubject: big\n\n${"0123456789 ".repeat(7).concat("\n", ".dot line\n").repeat(480_000)}.\n`);
    const after = buildRecord(Buffer.from("Subject: after\r\n\r\nbye\r\n"), "Received: 2024-01-02 : 03 : 04");
    const file = Buffer.concat([head, body, after]);
    expect(body.length).toBeGreaterThan(40e6);
    writeFileSync(path, file);
    const whole = new MailboxScanner();
    whole.scan(file, 0, true);
    const expected = whole.messages;
    expect(expected[1]!.uid).toBe(messageHash(body.subarray(0, body.length - 2)).toString(36));
    // Without the FTL tier, as the servers run: its compiles alone would add ~6 MiB.
    const p = Bun.spawn([process.execPath, join(import.meta.dir, "helpers/scan-peak.ts"), path], { stdout: "pipe", stderr: "pipe", env: { ...process.env, BUN_JSC_useFTLJIT: "0" } });
    const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    expect(err).toBe("");
    expect(code).toBe(0);
    const got = JSON.parse(out) as { grewKiB: number; messages: unknown; validEnd: number };
    expect(got.messages).toEqual(expected);
    expect(got.validEnd).toBe(file.length);
    // The buffer is 1 MiB and the read-ahead 512 KiB; with the compiles and the heap, 7-8 MiB
    // here. A buffer grown to hold the message (64 MiB, and the 32 MiB it was copied from): 104-109 MiB.
    expect(got.grewKiB).toBeLessThan(16 * 1024);
  }, 60_000);
});
