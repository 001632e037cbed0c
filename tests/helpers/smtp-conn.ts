// A bare SMTP conversation over TCP for end-to-end tests: send raw bytes, read whole
// replies (multi-line ones included), see when the server closes the connection.
import { connect, type Socket } from "node:net";

export class SmtpConn {
  private buf = "";
  private waiters: (() => void)[] = [];
  closed = false;
  readonly closedPromise: Promise<void>;

  private constructor(readonly sock: Socket) {
    sock.on("data", (d: Buffer) => {
      this.buf += d.toString("latin1");
      this.wake();
    });
    this.closedPromise = new Promise((resolve) => {
      const done = () => {
        this.closed = true;
        this.wake();
        resolve();
      };
      sock.on("close", done);
      sock.on("end", done);
    });
    sock.on("error", () => {});
  }

  static open(port: number): Promise<SmtpConn> {
    return new Promise((resolve, reject) => {
      const s = connect({ host: "127.0.0.1", port }, () => resolve(new SmtpConn(s)));
      s.once("error", reject);
    });
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  send(data: string | Buffer): void {
    this.sock.write(typeof data === "string" ? Buffer.from(data, "utf8") : data);
  }

  /** The next complete reply, all its lines joined with CRLF (and a final CRLF). */
  async reply(timeoutMs = 20_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      let pos = 0;
      for (;;) {
        const nl = this.buf.indexOf("\r\n", pos);
        if (nl < 0) break;
        const line = this.buf.slice(pos, nl);
        pos = nl + 2;
        if (/^\d{3}( |$)/.test(line)) {
          const out = this.buf.slice(0, pos);
          this.buf = this.buf.slice(pos);
          return out;
        }
        if (!/^\d{3}-/.test(line)) throw new Error(`malformed reply line: ${JSON.stringify(line)}`);
      }
      if (this.closed) throw new Error(`connection closed; pending ${JSON.stringify(this.buf)}`);
      if (Date.now() > deadline) throw new Error(`no reply; pending ${JSON.stringify(this.buf)}`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 200);
      });
    }
  }

  async code(): Promise<number> {
    return Number((await this.reply()).slice(0, 3));
  }

  /** Sends a command line and returns the reply. */
  async cmd(line: string): Promise<string> {
    this.send(line + "\r\n");
    return this.reply();
  }

  /** Waits until the server closes the connection; returns what it sent before. */
  async untilClosed(timeoutMs = 20_000): Promise<string> {
    await Promise.race([this.closedPromise, Bun.sleep(timeoutMs)]);
    if (!this.closed) throw new Error("server did not close the connection");
    const rest = this.buf;
    this.buf = "";
    return rest;
  }

  close(): void {
    this.sock.end();
  }

  destroy(): void {
    this.sock.destroy();
  }
}

/** Dot-stuffs a text and adds the end of data. */
export function dataOf(text: string): string {
  const lines = text.split("\r\n");
  if (lines.at(-1) === "") lines.pop();
  return lines.map((l) => (l.startsWith(".") ? "." + l : l) + "\r\n").join("") + ".\r\n";
}

/** One whole transaction on an open, greeted and HELO'd connection; the final reply. */
export async function sendOne(c: SmtpConn, from: string, to: string[], text: string): Promise<string> {
  let r = await c.cmd(`MAIL FROM:<${from}>`);
  if (!r.startsWith("250")) return r;
  for (const t of to) await c.cmd(`RCPT TO:<${t}>`);
  r = await c.cmd("DATA");
  if (!r.startsWith("354")) return r;
  c.send(dataOf(text));
  return c.reply();
}
