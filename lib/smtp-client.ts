// Async SMTP client (RFC 5321 subset: HELO, MAIL, RCPT, DATA, QUIT) over Bun.connect.
// The line-oriented connection underneath (LineConnection) is shared with pop3-client.ts.

import type { Socket } from "bun";
import { encodeBase64 } from "./auth.ts";
import { bunClientTls, type ClientTls } from "./tls.ts";

export interface ConnectOptions {
  /** How long to wait for the connection and for each reply, in milliseconds. */
  timeoutMs?: number;
  /** TLS from the first byte (implicit TLS, ports 465 / 995 style). */
  tls?: ClientTls;
}

const DEFAULT_TIMEOUT_MS = 30_000;
// A server that never sends a newline must not make us buffer without limit.
const MAX_LINE_LENGTH = 1 << 20;
const MAX_REPLY_LINES = 1000;

/** What a failed connect/read looks like to the user: one clear line, never a hang. */
function describeConnectError(err: unknown): string {
  const code = (err as { code?: string } | null)?.code;
  if (code === "ECONNREFUSED") return "connection refused";
  if (code === "ENOTFOUND" || code === "EAI_NONAME" || code === "EAI_AGAIN") return "host not found";
  if (code === "ETIMEDOUT") return "timed out";
  if (code === "EHOSTUNREACH" || code === "ENETUNREACH") return "host unreachable";
  return (err as Error)?.message || String(err);
}

type Waiter = { resolve: (line: string) => void; reject: (err: Error) => void };

/**
 * A TCP connection that hands out received text one line at a time (CRLF or LF ends a line),
 * in order, to any number of queued readers, and writes with backpressure.
 */
export class LineConnection {
  private lines: string[] = [];
  private head = 0; // index of the next unread line; avoids O(n) Array.shift on big responses
  private partial: string[] = []; // pieces of a line whose end has not arrived yet
  private partialLength = 0;
  private waiters: Waiter[] = [];
  private failure: Error | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private outQueue: Uint8Array[] = [];
  private decoder = new TextDecoder("utf-8");
  private encoder = new TextEncoder();
  private socket!: Socket<undefined>;
  /** The TLS handshake's outcome once known (null: none yet), and who waits for it. */
  private tlsOutcome: Error | true | null = null;
  private tlsWaiter: (() => void) | null = null;
  private tlsInsecure = false;

  private constructor(
    readonly host: string,
    readonly port: number,
    private timeoutMs: number,
  ) {}

  static async connect(host: string, port: number, opts: ConnectOptions = {}): Promise<LineConnection> {
    const conn = new LineConnection(host, port, opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    const where = `${host}:${port}`;
    let timedOut = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const connecting = Bun.connect({
      hostname: host,
      port,
      ...(opts.tls ? { tls: bunClientTls(opts.tls) } : {}),
      socket: {
        ...conn.handlers(),
        open: (s) => {
          conn.socket = s;
        },
        connectError: () => {}, // the rejected promise below reports it
      },
    });
    try {
      conn.socket = await Promise.race([
        connecting,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            timedOut = true;
            reject(Object.assign(new Error("timed out"), { code: "ETIMEDOUT" }));
          }, conn.timeoutMs);
        }),
      ]);
    } catch (err) {
      // A connect that completes after we gave up must not leak a socket.
      if (timedOut) connecting.then((s) => s.terminate(), () => {});
      throw new Error(`cannot connect to ${where}: ${describeConnectError(err)}`);
    } finally {
      clearTimeout(timer);
    }
    if (opts.tls) await conn.secured(opts.tls);
    return conn;
  }

  /**
   * Events of the current socket only: after STARTTLS the raw socket underneath keeps
   * reporting the ciphertext, which must not be read as lines.
   */
  private handlers() {
    const where = `${this.host}:${this.port}`;
    const mine = (s: Socket<undefined>) => !this.socket || s === this.socket;
    return {
      data: (s: Socket<undefined>, data: Uint8Array) => {
        if (mine(s)) this.onData(data);
      },
      drain: (s: Socket<undefined>) => {
        if (mine(s)) this.flush();
      },
      close: (s: Socket<undefined>, err?: Error) => {
        if (mine(s)) this.fail(new Error(err ? `connection to ${where} lost: ${err.message}` : `connection closed by ${where}`));
      },
      end: (s: Socket<undefined>) => {
        if (mine(s)) this.fail(new Error(`connection closed by ${where}`));
      },
      error: (s: Socket<undefined>, err: Error) => {
        if (mine(s)) this.fail(new Error(`connection to ${where} failed: ${err.message}`));
      },
      handshake: (s: Socket<undefined>, ok: boolean, err: Error | null) => {
        if (!mine(s)) return;
        // Bun reports a certificate that does not verify here, even when told to accept it,
        // and a name that does not match as not ok: --insecure accepts both (helper-27). A
        // handshake that really failed closes the socket, which the next read reports.
        this.tlsOutcome = this.tlsInsecure || (ok && !err) ? true : new Error(`TLS handshake with ${where} failed: ${err?.message ?? "rejected"}`);
        this.tlsWaiter?.();
      },
    };
  }

  /** Waits for the TLS handshake of this connection (bounded by the reply timeout). */
  private async secured(tls: ClientTls): Promise<void> {
    this.tlsInsecure = !!tls.insecure;
    const deadline = Date.now() + this.timeoutMs;
    while (this.tlsOutcome === null && !this.failure && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(100, Math.max(1, deadline - Date.now())));
        this.tlsWaiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    this.tlsWaiter = null;
    const outcome = this.tlsOutcome ?? this.failure ?? new Error(`TLS handshake with ${this.host}:${this.port} timed out`);
    if (outcome !== true) {
      this.fail(outcome);
      this.socket.terminate();
      throw outcome;
    }
  }

  /** STARTTLS / STLS: encrypt this connection; anything received before is discarded. */
  async startTls(tls: ClientTls): Promise<void> {
    this.lines = [];
    this.head = 0;
    this.partial = [];
    this.partialLength = 0;
    this.tlsOutcome = null;
    this.tlsInsecure = !!tls.insecure;
    const [, encrypted] = this.socket.upgradeTLS({ tls: bunClientTls(tls), socket: this.handlers() });
    this.socket = encrypted as Socket<undefined>;
    await this.secured(tls);
  }

  private onData(data: Uint8Array): void {
    const text = this.decoder.decode(data, { stream: true });
    let start = 0;
    for (;;) {
      const nl = text.indexOf("\n", start);
      if (nl < 0) break;
      let line = text.slice(start, nl);
      if (this.partial.length > 0) {
        this.partial.push(line);
        line = this.partial.join("");
        this.partial = [];
        this.partialLength = 0;
      }
      this.lines.push(line.endsWith("\r") ? line.slice(0, -1) : line);
      start = nl + 1;
    }
    if (start < text.length) {
      this.partial.push(text.slice(start));
      this.partialLength += text.length - start;
      if (this.partialLength > MAX_LINE_LENGTH) {
        this.fail(new Error(`line from ${this.host}:${this.port} longer than ${MAX_LINE_LENGTH} characters`));
        this.socket.terminate();
        return;
      }
    }
    this.deliver();
    // Traffic is progress: restart the clock for whoever is still waiting.
    if (this.waiters.length > 0) this.armTimer(true);
  }

  private deliver(): void {
    while (this.waiters.length > 0 && this.head < this.lines.length) {
      this.waiters.shift()!.resolve(this.takeQueued());
    }
    if (this.waiters.length === 0) this.clearTimer();
  }

  private takeQueued(): string {
    const line = this.lines[this.head++]!;
    if (this.head > 1024 && this.head * 2 > this.lines.length) {
      this.lines = this.lines.slice(this.head);
      this.head = 0;
    }
    return line;
  }

  /** A line already received, or undefined; lets bulk readers skip a promise per line. */
  takeLine(): string | undefined {
    return this.head < this.lines.length ? this.takeQueued() : undefined;
  }

  /** The next line, without its line end. Rejects on close, error or timeout. */
  readLine(): Promise<string> {
    const line = this.takeLine();
    if (line !== undefined) return Promise.resolve(line);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      this.armTimer(false);
    });
  }

  private armTimer(restart: boolean): void {
    if (this.timer && !restart) return;
    this.clearTimer();
    this.timer = setTimeout(() => {
      this.fail(new Error(`timed out waiting for ${this.host}:${this.port}`));
      this.socket.terminate();
    }, this.timeoutMs);
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private fail(err: Error): void {
    // Lines that arrived before the close are still readable; only later reads fail.
    if (!this.failure) this.failure = err;
    this.clearTimer();
    for (const w of this.waiters.splice(0)) w.reject(this.failure);
  }

  /** Queue text for sending; what the kernel does not take now goes out on `drain`. */
  write(text: string): void {
    if (this.failure) throw this.failure;
    this.outQueue.push(this.encoder.encode(text));
    this.flush();
  }

  private flush(): void {
    while (this.outQueue.length > 0) {
      const chunk = this.outQueue[0]!;
      const n = this.socket.write(chunk);
      if (n < 0) {
        this.fail(new Error(`connection to ${this.host}:${this.port} closed while sending`));
        this.outQueue = [];
        return;
      }
      if (n < chunk.length) {
        this.outQueue[0] = chunk.subarray(n);
        return;
      }
      this.outQueue.shift();
    }
  }

  close(): void {
    this.fail(new Error(`connection to ${this.host}:${this.port} closed`));
    this.socket.end();
  }

  /** Closed by either side, or failed: nothing more can be sent. */
  get closed(): boolean {
    return this.failure !== null;
  }
}

/** Reject protocol arguments that could smuggle a second command into the stream. */
export function assertOneLine(text: string): void {
  if (/[\r\n]/.test(text)) throw new Error("command must not contain CR or LF");
}

export interface SmtpReply {
  code: number;
  /** The text of every reply line, without codes, joined by "\n". */
  text: string;
  /** The last raw reply line, e.g. "550 No such user". */
  line: string;
  /** Every raw reply line, in order. */
  lines: string[];
}

/** The reply as the server sent it, for messages like "Error in sending mail: ...". */
export function formatReply(reply: SmtpReply): string {
  return reply.lines.join("\n");
}

/** RFC 5321 4.5.2 transparency, CRLF line ends and the final "." line, ready for DATA. */
export function encodeData(message: string): string {
  if (message === "") return ".\r\n";
  const body = message.replace(/\r\n|\r|\n/g, "\r\n");
  const lines = (body.endsWith("\r\n") ? body.slice(0, -2) : body).split("\r\n");
  return lines.map((l) => (l.startsWith(".") ? "." + l : l)).join("\r\n") + "\r\n.\r\n";
}

export class SmtpClient {
  private readChain: Promise<unknown> = Promise.resolve();

  private constructor(private conn: LineConnection) {}

  static async connect(host: string, port: number, opts: ConnectOptions = {}): Promise<SmtpClient> {
    return new SmtpClient(await LineConnection.connect(host, port, opts));
  }

  /** Read one (possibly multi-line) reply. Replies come back in the order they were asked for. */
  readReply(): Promise<SmtpReply> {
    // Chained so that pipelined callers never interleave the lines of two replies.
    const next = this.readChain.then(() => this.readOneReply());
    this.readChain = next.catch(() => {});
    return next;
  }

  /** The 220 greeting (or whatever the server says first). */
  greeting(): Promise<SmtpReply> {
    return this.readReply();
  }

  private async readOneReply(): Promise<SmtpReply> {
    const lines: string[] = [];
    const texts: string[] = [];
    for (;;) {
      const line = await this.conn.readLine();
      const m = /^(\d{3})([ -]|$)(.*)$/.exec(line);
      if (!m) {
        this.conn.close();
        throw new Error(`malformed reply from ${this.conn.host}:${this.conn.port}: ${JSON.stringify(line.slice(0, 200))}`);
      }
      lines.push(line);
      texts.push(m[3]!);
      if (m[2] !== "-") return { code: Number(m[1]), text: texts.join("\n"), line, lines };
      // Real replies have a few lines (an EHLO list, some dozen); endless "220-" lines grew
      // the client to 2.4 GB in 15 s (helper-64).
      if (lines.length >= MAX_REPLY_LINES) {
        this.conn.close();
        throw new Error(`reply from ${this.conn.host}:${this.conn.port} of more than ${MAX_REPLY_LINES} lines`);
      }
    }
  }

  /** Send one command line (CRLF added) and return its reply. */
  async command(line: string): Promise<SmtpReply> {
    assertOneLine(line);
    this.conn.write(line + "\r\n");
    return this.readReply();
  }

  /** After a 354: send the message (dot-stuffed, CRLF, terminated) and return the final reply. */
  async sendData(message: string): Promise<SmtpReply> {
    this.conn.write(encodeData(message));
    return this.readReply();
  }

  /** EHLO; the extension keywords (upper case, with their parameters) on success. */
  async ehlo(name: string): Promise<{ reply: SmtpReply; extensions: string[] }> {
    const reply = await this.command(`EHLO ${name}`);
    return { reply, extensions: reply.code === 250 ? reply.text.split("\n").slice(1).map((l) => l.trim().toUpperCase()) : [] };
  }

  /** After a 220 to STARTTLS: the handshake; the caller says EHLO again (RFC 3207). */
  startTls(tls: ClientTls): Promise<void> {
    return this.conn.startTls(tls);
  }

  /** AUTH PLAIN (one line), or LOGIN when only that is offered; the final reply. */
  async auth(user: string, password: string, mechanisms: string[] = ["PLAIN"]): Promise<SmtpReply> {
    if (!mechanisms.includes("PLAIN") && mechanisms.includes("LOGIN")) {
      const r = await this.command("AUTH LOGIN");
      if (r.code !== 334) return r;
      const r2 = await this.command(encodeBase64(user));
      if (r2.code !== 334) return r2;
      return this.command(encodeBase64(password));
    }
    return this.command(`AUTH PLAIN ${encodeBase64(`\0${user}\0${password}`)}`);
  }

  /** Polite goodbye; the connection is closed whatever the server says. */
  async quit(): Promise<SmtpReply | null> {
    try {
      return await this.command("QUIT");
    } catch {
      return null;
    } finally {
      this.conn.close();
    }
  }

  close(): void {
    this.conn.close();
  }
}

export interface SendMailOptions extends ConnectOptions {
  host: string;
  port: number;
  helo: string;
  from: string;
  to: string[];
  message: string;
  /** Upgrade with STARTTLS before anything else; a server that does not offer it is an error. */
  starttls?: ClientTls;
  /** Credentials, used when the server offers AUTH after EHLO or answers MAIL with 530. */
  auth?: { user: string; password: string };
}

/** The SASL mechanisms an EHLO reply's AUTH keyword offers, or null without one. */
function authOffered(extensions: string[]): string[] | null {
  const line = extensions.find((e) => e.startsWith("AUTH "));
  return line ? line.split(/\s+/).slice(1) : null;
}

/**
 * HELO, or EHLO (with STARTTLS and AUTH when asked for and offered, and to learn of SMTPUTF8
 * when an address needs it). The server's refusal, or the extensions it offers (none after HELO).
 */
async function hello(client: SmtpClient, opts: SendMailOptions, utf8: boolean): Promise<{ refused: SmtpReply } | { extensions: string[] }> {
  if (!opts.starttls && !opts.tls && !utf8) {
    // The assignment's dialogue: HELO, and AUTH only if MAIL is refused with 530.
    const r = await client.command(`HELO ${opts.helo}`);
    return r.code === 250 ? { extensions: [] } : { refused: r };
  }
  let { reply, extensions } = await client.ehlo(opts.helo);
  if (reply.code !== 250) {
    // A server that knows no EHLO (RFC 5321 3.2): HELO then, unless TLS was asked for.
    if (opts.starttls || opts.tls || (reply.code !== 500 && reply.code !== 502)) return { refused: reply };
    const r = await client.command(`HELO ${opts.helo}`);
    return r.code === 250 ? { extensions: [] } : { refused: r };
  }
  if (opts.starttls) {
    if (!extensions.includes("STARTTLS")) throw new Error(`${opts.host}:${opts.port} does not offer STARTTLS`);
    const r = await client.command("STARTTLS");
    if (r.code !== 220) return { refused: r };
    await client.startTls(opts.starttls);
    ({ reply, extensions } = await client.ehlo(opts.helo));
    if (reply.code !== 250) return { refused: reply };
  }
  // Up front only over TLS: in the clear, the assignment's dialogue authenticates only after a
  // 530 to MAIL (EHLO said for SMTPUTF8 sent the password at once, helper-90).
  const offered = authOffered(extensions);
  if (opts.auth && offered && (opts.starttls || opts.tls)) {
    const r = await client.auth(opts.auth.user, opts.auth.password, offered);
    if (r.code !== 235) return { refused: r };
  }
  return { extensions };
}

export type SendMailResult = { ok: true } | { ok: false; reply: SmtpReply };

/**
 * One whole SMTP transaction. A negative reply resolves {ok:false, reply}; an unreachable
 * server, a dropped connection or a timeout rejects with an Error saying which.
 */
export async function sendMail(opts: SendMailOptions): Promise<SendMailResult> {
  const client = await SmtpClient.connect(opts.host, opts.port, opts);
  try {
    const greeting = await client.greeting();
    // A UTF-8 address (jürgen@x) needs SMTPUTF8 on MAIL (RFC 6531), which only EHLO tells of:
    // after HELO our own server refused it with 553, though the client's check had taken it.
    const utf8 = [opts.from, ...opts.to].some((a) => /[^\x00-\x7f]/.test(a));
    const hi = greeting.code === 220 ? await hello(client, opts, utf8) : { refused: greeting };
    if ("refused" in hi) {
      await client.quit();
      return { ok: false, reply: hi.refused };
    }
    const mailCommand = `MAIL FROM:<${opts.from}>${utf8 && hi.extensions.includes("SMTPUTF8") ? " SMTPUTF8" : ""}`;
    const mail = async () => {
      const r = await client.command(mailCommand);
      if (r.code !== 530 || !opts.auth) return r;
      // 530 asks for AUTH (RFC 4954), or for STARTTLS first (RFC 3207). The password goes
      // only to a server that offers AUTH on this very connection: one that wants TLS first
      // had it sent in the clear (helper-27).
      const { reply, extensions } = await client.ehlo(opts.helo);
      const offered = reply.code === 250 ? authOffered(extensions) : null;
      if (!offered) return r;
      const a = await client.auth(opts.auth.user, opts.auth.password, offered);
      return a.code === 235 ? client.command(mailCommand) : a;
    };
    const steps: Array<[() => Promise<SmtpReply>, (code: number) => boolean]> = [
      [mail, (c) => c === 250],
      ...opts.to.map((rcpt): [() => Promise<SmtpReply>, (c: number) => boolean] => [
        () => client.command(`RCPT TO:<${rcpt}>`),
        (c) => c === 250 || c === 251,
      ]),
      [() => client.command("DATA"), (c) => c === 354],
      [() => client.sendData(opts.message), (c) => c === 250],
    ];
    for (const [step, good] of steps) {
      const reply = await step();
      if (!good(reply.code)) {
        await client.quit();
        return { ok: false, reply };
      }
    }
    // The mail is accepted at the 250 after DATA; a failed QUIT does not undo that.
    await client.quit();
    return { ok: true };
  } finally {
    client.close();
  }
}
