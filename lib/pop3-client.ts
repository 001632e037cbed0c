// Async POP3 client (RFC 1939, plus CAPA from RFC 2449) over the same line connection as SMTP.

import { assertOneLine, LineConnection, type ConnectOptions } from "./smtp-client.ts";
import type { ClientTls } from "./tls.ts";

/** The server answered -ERR: `text` is what it said after "-ERR". */
export class Pop3Error extends Error {
  constructor(
    readonly command: string,
    readonly text: string,
  ) {
    super(`${command} failed: -ERR ${text}`.trimEnd());
    this.name = "Pop3Error";
  }
}

export interface Pop3Listing {
  n: number;
  size: number;
}

export interface Pop3Uid {
  n: number;
  uid: string;
}

export class Pop3Client {
  private readChain: Promise<unknown> = Promise.resolve();

  private constructor(
    private conn: LineConnection,
    /** The greeting text after "+OK". */
    readonly greeting: string,
    private readonly maxBlockBytes: number,
  ) {}

  /** Connect and read the greeting; a -ERR greeting rejects with Pop3Error. */
  static async connect(host: string, port: number, opts: ConnectOptions & { maxBlockBytes?: number } = {}): Promise<Pop3Client> {
    const conn = await LineConnection.connect(host, port, opts);
    try {
      const greeting = await readStatus(conn, "greeting");
      return new Pop3Client(conn, greeting, opts.maxBlockBytes ?? MAX_BLOCK_BYTES);
    } catch (err) {
      conn.close();
      throw err;
    }
  }

  // The command goes out at once (so callers can pipeline, RFC 2449); only the reading is
  // chained, so that concurrent callers never read each other's lines.
  private exchange<T>(line: string, read: () => Promise<T>): Promise<T> {
    try {
      assertOneLine(line);
      this.conn.write(line + "\r\n");
    } catch (err) {
      return Promise.reject(err);
    }
    const next = this.readChain.then(read);
    this.readChain = next.catch(() => {});
    return next;
  }

  private simple(line: string, name = line.split(" ")[0]!): Promise<string> {
    return this.exchange(line, () => readStatus(this.conn, name));
  }

  private multi(line: string, name = line.split(" ")[0]!): Promise<string[]> {
    return this.exchange(line, async () => {
      await readStatus(this.conn, name);
      return readBlock(this.conn, this.maxBlockBytes);
    });
  }

  /** STLS (RFC 2595): on +OK the connection is encrypted and the login starts now. */
  async stls(tls: ClientTls): Promise<void> {
    await this.simple("STLS");
    await this.conn.startTls(tls);
  }

  user(name: string): Promise<string> {
    return this.simple(`USER ${name}`, "USER");
  }

  pass(password: string): Promise<string> {
    return this.simple(`PASS ${password}`, "PASS");
  }

  /** USER then PASS; rejects with Pop3Error on either -ERR. */
  async login(name: string, password: string): Promise<void> {
    await this.user(name);
    await this.pass(password);
  }

  async stat(): Promise<{ count: number; size: number }> {
    const text = await this.simple("STAT");
    const m = /^(\d+)\s+(\d+)/.exec(text);
    if (!m) throw new Error(`malformed STAT reply: ${text}`);
    return { count: Number(m[1]), size: Number(m[2]) };
  }

  async list(): Promise<Pop3Listing[]> {
    return (await this.multi("LIST")).map((l) => {
      const m = /^(\d+)\s+(\d+)/.exec(l);
      if (!m) throw new Error(`malformed LIST line: ${l}`);
      return { n: Number(m[1]), size: Number(m[2]) };
    });
  }

  async uidl(): Promise<Pop3Uid[]> {
    return (await this.multi("UIDL")).map((l) => {
      const m = /^(\d+)\s+(\S+)/.exec(l);
      if (!m) throw new Error(`malformed UIDL line: ${l}`);
      return { n: Number(m[1]), uid: m[2]! };
    });
  }

  /** Capability lines (e.g. "TOP", "UIDL", "SASL PLAIN"). */
  capa(): Promise<string[]> {
    return this.multi("CAPA");
  }

  /** The whole message, un-dot-stuffed, every line ending in CRLF, as RFC 1939 sizes count it. */
  async retr(n: number): Promise<string> {
    return joinMessage(await this.multi(`RETR ${n}`, "RETR"));
  }

  /** Headers, the blank line and the first k body lines. */
  async top(n: number, k: number): Promise<string> {
    return joinMessage(await this.multi(`TOP ${n} ${k}`, "TOP"));
  }

  dele(n: number): Promise<string> {
    return this.simple(`DELE ${n}`, "DELE");
  }

  rset(): Promise<string> {
    return this.simple("RSET");
  }

  noop(): Promise<string> {
    return this.simple("NOOP");
  }

  /**
   * Ends the session; the server commits deletions now. Rejects with Pop3Error when the server
   * says some deletions failed. The connection is closed either way.
   */
  async quit(): Promise<string> {
    try {
      return await this.simple("QUIT");
    } finally {
      this.conn.close();
    }
  }

  close(): void {
    this.conn.close();
  }

  /** The session is over (QUIT, the server's autologout, a lost connection). */
  get closed(): boolean {
    return this.conn.closed;
  }
}

async function readStatus(conn: LineConnection, name: string): Promise<string> {
  const line = await conn.readLine();
  if (line.startsWith("+OK")) return line.slice(3).trimStart();
  if (line.startsWith("-ERR")) throw new Pop3Error(name, line.slice(4).trim());
  conn.close();
  throw new Error(`malformed POP3 response to ${name} from ${conn.host}:${conn.port}: ${JSON.stringify(line.slice(0, 200))}`);
}

/**
 * A multi-line response that takes more memory than this is no mail we can show: a server that
 * never sends the "." grew the client to 3.8 GB in 24 s (helper-64). A 100 MB message still fits.
 */
const MAX_BLOCK_BYTES = 512 << 20;
/** What a line costs beyond its characters: its string and its slot in the array. Counted as
 *  characters only, an endless listing of short lines grew the client to 5.4 GB (helper-94). */
const LINE_COST = 64;

/** Lines up to the "." terminator, un-dot-stuffed. */
async function readBlock(conn: LineConnection, max: number): Promise<string[]> {
  const lines: string[] = [];
  let bytes = 0;
  for (;;) {
    // Drain what has already arrived without a promise per line: RETRs can be large.
    let line = conn.takeLine();
    if (line === undefined) line = await conn.readLine();
    if (line === ".") return lines;
    bytes += line.length + LINE_COST;
    if (bytes > max) {
      conn.close();
      throw new Error(`response from ${conn.host}:${conn.port} larger than ${max} bytes without its end`);
    }
    lines.push(line.startsWith(".") ? line.slice(1) : line);
  }
}

function joinMessage(lines: string[]): string {
  return lines.length === 0 ? "" : lines.join("\r\n") + "\r\n";
}
