// A raw TCP client for the POP3/SMTP end-to-end tests: exact bytes in, exact bytes out,
// with bounded waits so a hung server fails the test instead of hanging it.
import { connect, createConnection, type Socket } from "node:net";

export class Wire {
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  closed = false;

  private constructor(readonly sock: Socket) {
    sock.on("data", (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake();
    });
    const end = () => {
      this.closed = true;
      this.wake();
    };
    sock.on("end", end);
    sock.on("close", end);
    sock.on("error", end);
  }

  static open(port: number, timeoutMs = 10_000): Promise<Wire> {
    return new Promise((resolve, reject) => {
      const s = connect({ host: "127.0.0.1", port });
      const t = setTimeout(() => {
        s.destroy();
        reject(new Error(`connect to ${port} timed out`));
      }, timeoutMs);
      s.once("connect", () => {
        clearTimeout(t);
        resolve(new Wire(s));
      });
      s.once("error", (e) => {
        clearTimeout(t);
        reject(e);
      });
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private async waitMore(deadline: number, what: string): Promise<void> {
    if (this.closed) throw new Error(`connection closed while waiting for ${what}; have ${JSON.stringify(this.buf.toString("latin1").slice(0, 300))}`);
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`timed out waiting for ${what}; have ${JSON.stringify(this.buf.toString("latin1").slice(0, 300))}`);
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, left);
      this.waiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  write(data: string | Buffer): void {
    this.sock.write(data);
  }

  /** One CRLF-terminated line, without the CRLF. */
  async line(timeoutMs = 10_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.buf.indexOf("\r\n");
      if (i >= 0) {
        const l = this.buf.toString("utf8", 0, i);
        this.buf = this.buf.subarray(i + 2);
        return l;
      }
      await this.waitMore(deadline, "a line");
    }
  }

  /** The raw bytes of a multi-line body up to and including the final ".\r\n". */
  async multi(timeoutMs = 10_000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const end = this.buf.subarray(0, 3).equals(Buffer.from(".\r\n")) ? 0 : this.buf.indexOf("\r\n.\r\n");
      if (end >= 0) {
        const n = end === 0 ? 3 : end + 5;
        const b = this.buf.subarray(0, n);
        this.buf = this.buf.subarray(n);
        return Buffer.from(b);
      }
      await this.waitMore(deadline, "a multi-line body");
    }
  }

  /** Sends a command and returns its status line. */
  async cmd(line: string): Promise<string> {
    this.write(line + "\r\n");
    return this.line();
  }

  /** Resolves true when the server closes the connection within the time. */
  async waitClosed(timeoutMs = 10_000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() > deadline) return false;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.max(1, deadline - Date.now()));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return true;
  }

  /** Bytes received and not consumed yet. */
  get pending(): Buffer {
    return this.buf;
  }

  destroy(): void {
    this.sock.destroy();
  }
}

/** A logged-in POP3 connection (greeting, USER, PASS checked). */
export async function popLogin(port: number, user: string, pass: string): Promise<Wire> {
  const w = await Wire.open(port);
  const g = await w.line();
  if (!g.startsWith("+OK")) throw new Error(`greeting: ${g}`);
  const u = await w.cmd(`USER ${user}`);
  if (!u.startsWith("+OK")) throw new Error(`USER: ${u}`);
  const p = await w.cmd(`PASS ${pass}`);
  if (!p.startsWith("+OK")) throw new Error(`PASS: ${p}`);
  return w;
}

/** Undo POP3 dot-stuffing of a multi-line body (with its final ".\r\n"). */
export function unstuffBody(body: Buffer): Buffer {
  const text = body.toString("latin1");
  if (!text.endsWith(".\r\n")) throw new Error("body without terminator");
  const lines = text.slice(0, -3).split("\r\n");
  lines.pop(); // after the last CRLF
  return Buffer.from(lines.map((l) => (l.startsWith(".") ? l.slice(1) : l)).join("\r\n") + (lines.length ? "\r\n" : ""), "latin1");
}

/** Sends one message over SMTP with raw commands; returns the reply to the end of DATA. */
export async function smtpSend(port: number, from: string, to: string, dataLines: string[]): Promise<string> {
  const w = await Wire.open(port);
  try {
    const expect = async (code: string, got: Promise<string>) => {
      let l = await got;
      while (/^\d{3}-/.test(l)) l = await w.line();
      if (!l.startsWith(code)) throw new Error(`expected ${code}, got ${l}`);
      return l;
    };
    await expect("220", w.line());
    await expect("250", w.cmd("HELO tester"));
    await expect("250", w.cmd(`MAIL FROM:<${from}>`));
    await expect("250", w.cmd(`RCPT TO:<${to}>`));
    await expect("354", w.cmd("DATA"));
    const stuffed = dataLines.map((l) => (l.startsWith(".") ? "." + l : l));
    w.write(Buffer.from(stuffed.map((l) => l + "\r\n").join("") + ".\r\n", "utf8"));
    const r = await w.line();
    w.write("QUIT\r\n");
    return r;
  } finally {
    setTimeout(() => w.destroy(), 200);
  }
}

/** Sends text after the greeting, shuts down the sending side at once, and returns everything received until the server closes. */
export function halfClose(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = createConnection({ host: "127.0.0.1", port });
    let got = "";
    const t = setTimeout(() => {
      sock.destroy();
      reject(new Error(`server did not close; got ${JSON.stringify(got)}`));
    }, 10_000);
    sock.on("data", (d: Buffer) => {
      if (!got) sock.end(text);
      got += d.toString("latin1");
    });
    sock.on("error", reject);
    sock.on("close", () => {
      clearTimeout(t);
      resolve(got);
    });
  });
}
