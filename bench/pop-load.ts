// POP3 load: a mailbox written straight to disk in the stored format, then login, LIST,
// UIDL and RETR of every message, one command at a time and pipelined.
import type { Socket } from "bun";
import { openSync, writeSync, closeSync } from "node:fs";
import { join } from "node:path";
import { buildRecord } from "../lib/mailbox.ts";

/** Writes `count` messages of about `bytes` each (after what is there with `append`); returns the bytes written. */
export function writeMailbox(root: string, user: string, count: number, bytes: number, append = false): number {
  const fd = openSync(join(root, user, "mymailbox"), append ? "a" : "w");
  const line = "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\r\n".slice(0, 78) + "\r\n";
  const bodyLines = Math.max(1, Math.floor((bytes - 160) / line.length));
  const body = line.repeat(bodyLines) + "..a line that starts with a dot\r\n";
  let size = 0;
  let parts: Buffer[] = [];
  let pending = 0;
  for (let i = 1; i <= count; i++) {
    const rec = buildRecord(Buffer.from(`From: sender${i % 97}@example.org\r\nTo: ${user}@here\r\nSubject: message number ${i}\r\n\r\n${body}`), "Received: 2026-12-01 : 10 : 00");
    parts.push(rec);
    pending += rec.length;
    if (pending > 8 << 20) {
      size += writeSync(fd, Buffer.concat(parts));
      parts = [];
      pending = 0;
    }
  }
  if (parts.length) size += writeSync(fd, Buffer.concat(parts));
  closeSync(fd);
  return size;
}

const END = Buffer.from("\r\n.\r\n");

/** A raw POP3 connection that waits for complete responses (single-line or multi-line). */
export class PopConn {
  private socket!: Socket<undefined>;
  private carry = Buffer.alloc(0);
  private waiters: { multi: boolean; resolve: (ok: boolean) => void }[] = [];
  private inBody = false;
  private searchFrom = 0;
  private ok = false;

  static async open(port: number): Promise<PopConn> {
    const c = new PopConn();
    const greeted = new Promise<boolean>((resolve) => c.waiters.push({ multi: false, resolve }));
    c.socket = await Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: { data: (_s, chunk) => c.onData(chunk), error() {} },
    });
    await greeted;
    return c;
  }

  private onData(chunk: Buffer): void {
    const buf = this.carry.length ? Buffer.concat([this.carry, chunk]) : chunk;
    let pos = 0;
    while (this.waiters.length) {
      if (!this.inBody) {
        const nl = buf.indexOf("\r\n", pos);
        if (nl < 0) break;
        this.ok = buf[pos] === 0x2b; // "+"
        pos = nl + 2;
        if (this.waiters[0]!.multi && this.ok) {
          this.inBody = true;
          this.searchFrom = pos - 2; // the status line's CRLF starts an empty body's end
          continue;
        }
        this.waiters.shift()!.resolve(this.ok);
      } else {
        const end = buf.indexOf(END, this.searchFrom);
        if (end < 0) {
          pos = Math.max(pos, buf.length - 4);
          this.searchFrom = 0;
          break;
        }
        pos = end + 5;
        this.inBody = false;
        this.waiters.shift()!.resolve(true);
      }
    }
    this.carry = Buffer.from(buf.subarray(pos));
  }

  /** Sends one command; resolves (true for +OK) when its response is complete. */
  send(line: string, multi = false): Promise<boolean> {
    const p = new Promise<boolean>((resolve) => this.waiters.push({ multi, resolve }));
    this.socket.write(line + "\r\n");
    return p;
  }

  /** Several commands in one write (RFC 2449 PIPELINING). */
  sendMany(lines: string[], multi: boolean): Promise<boolean>[] {
    const ps = lines.map((_) => new Promise<boolean>((resolve) => this.waiters.push({ multi, resolve })));
    this.socket.write(lines.join("\r\n") + "\r\n");
    return ps;
  }

  close(): void {
    this.socket.write("QUIT\r\n");
    this.socket.end();
  }
}
