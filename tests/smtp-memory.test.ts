// Memory of large messages in smtpmail: a message is gathered once as it comes (not kept as
// the runtime's chunks and joined at the end), and the memory messages leave behind is
// collected every few size limits' worth, not when the collector's own schedule gets to it.
import { afterAll, expect, spyOn, test } from "bun:test";
import { LineReader } from "../lib/lines.ts";
import { buildRecord, RECORD_ROOM } from "../lib/mailbox.ts";
import type { MailStore } from "../lib/mail-store.ts";
import { createSmtpServer } from "../lib/smtp-server.ts";
import { SmtpConn, sendOne } from "./helpers/smtp-conn.ts";

const servers: { shutdown(ms?: number): Promise<void> }[] = [];
afterAll(() => Promise.all(servers.map((s) => s.shutdown(100))));

test("a large message in many chunks is copied as they come into memory of its own, with the record's room after it: no chunk is kept", () => {
  const r = new LineReader();
  const line = Buffer.from("x".repeat(78) + "\r\n");
  const chunks: Buffer[] = [];
  const text = Buffer.concat([Buffer.from("Subject: big\r\n\r\n"), ...Array.from({ length: 40_000 }, () => line)]);
  // 3.2 MB in 64 KiB chunks, each of its own memory as the runtime gives them.
  for (let at = 0; at < text.length; at += 65536) chunks.push(Buffer.from(text.subarray(at, at + 65536)));
  for (const c of chunks) {
    r.push(c);
    expect(r.nextMessage(10 << 20, null, RECORD_ROOM)).toBeNull();
  }
  // The chunks are no longer the message's: changing them (as the runtime never does, but a
  // kept chunk would show it) changes nothing.
  for (const c of chunks) c.fill(0x21);
  r.push(Buffer.from(".\r\nQUIT\r\n"));
  const msg = r.nextMessage(10 << 20, null, RECORD_ROOM)!;
  expect(msg.bytes.equals(text)).toBe(true);
  expect(msg.room).toBe(RECORD_ROOM);
  expect(msg.bytes.buffer.byteLength).toBe(text.length + RECORD_ROOM);
  // The record is built there, not copied again.
  const record = buildRecord(msg.bytes, "Received: x", { room: msg.room });
  expect(record.buffer).toBe(msg.bytes.buffer);
  expect(r.nextLine(512)).toEqual({ kind: "line", text: "QUIT", bareLf: false });
});

test("a size limit too large to reserve memory for (ulimit -v, a huge --max-size): the message is kept as parts, whole", () => {
  const r = new LineReader();
  const text = Buffer.concat([Buffer.from("Subject: big\r\n\r\n"), Buffer.from(("y".repeat(78) + "\r\n").repeat(40_000))]);
  // 2^50 bytes: no runtime reserves that much address space (before: 451, "local error").
  for (let at = 0; at < text.length; at += 65536) {
    r.push(Buffer.from(text.subarray(at, at + 65536)));
    expect(r.nextMessage(2 ** 50, null, RECORD_ROOM)).toBeNull();
  }
  r.push(Buffer.from(".\r\n"));
  expect(r.nextMessage(2 ** 50, null, RECORD_ROOM)!.bytes.equals(text)).toBe(true);
});

test("the end of a large message split across chunks, a dot-stuffed line over a chunk boundary, and bytes after the end come out as with small chunks", () => {
  const body = Array.from({ length: 30_000 }, (_, i) => (i % 7 === 0 ? ".." : "") + `line ${i}`.padEnd(60, "y") + "\r\n").join("");
  const wire = Buffer.from(`Subject: s\r\n\r\n${body}.\r\nNOOP\r\n`);
  for (const size of [65536, 65537, 524288, 1 << 20]) {
    const r = new LineReader();
    let msg = null;
    for (let at = 0; at < wire.length && !msg; at += size) {
      r.push(Buffer.from(wire.subarray(at, at + size)));
      msg = r.nextMessage(10 << 20, null, RECORD_ROOM);
    }
    expect(msg!.bytes.toString("latin1")).toBe(`Subject: s\r\n\r\n${body}`);
    expect(msg!.tooBig).toBe(false);
    expect(r.nextLine(512)).toEqual({ kind: "line", text: "NOOP", bareLf: false });
  }
});

const nullStore: MailStore = {
  stats: { messages: 0, fsyncs: 0, batches: 0, locks: 0, journals: 0, checkpoints: 0, roundMs: 0, journalMs: 0 },
  deliver: async () => {},
  recover: async () => 0,
  close: async () => {},
} as unknown as MailStore;

test("smtpmail asks for a full collection once messages worth a few size limits have been let go, not for small ones", async () => {
  const server = createSmtpServer(
    { domain: "test", host: "127.0.0.1", port: 0, maxMessageSize: 1 << 20, maxRecipients: 10, maxConnections: 10, idleTimeoutMs: 10_000, quiet: true, log: () => {} } as unknown as Parameters<typeof createSmtpServer>[0],
    { resolve: (u) => (u === "alice" ? "alice" : null) },
    nullStore,
  );
  server.start();
  servers.push(server);
  const gc = spyOn(Bun, "gc");
  try {
    const c = await SmtpConn.open(server.port);
    await c.reply();
    await c.cmd("HELO me");
    // 30 KB messages, 12 MB let go in all (three times the 4 MiB): their garbage is the
    // collector's own business, and counted they would stop every session now and then.
    const small = "Subject: s\r\n\r\n" + ("s".repeat(98) + "\r\n").repeat(300);
    for (let i = 0; i < 200; i++) expect(await sendOne(c, "bob@x", ["alice@x"], small)).toStartWith("250");
    expect(gc).not.toHaveBeenCalled();
    // 900 KB messages: each leaves its chunks and its record, ~1.8 MB; one collection per 4 MiB.
    const big = "Subject: b\r\n\r\n" + ("z".repeat(88) + "\r\n").repeat(10_000);
    for (let i = 0; i < 9; i++) expect(await sendOne(c, "bob@x", ["alice@x"], big)).toStartWith("250");
    expect(gc.mock.calls.length).toBeGreaterThanOrEqual(3);
    expect(gc.mock.calls.length).toBeLessThanOrEqual(5);
    expect(gc.mock.calls.every(([sync]) => sync === true)).toBe(true);
  } finally {
    gc.mockRestore();
  }
});
