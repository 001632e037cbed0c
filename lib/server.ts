// The one socket adapter both servers share. Protocol logic lives in the sessions; this
// file owns the Bun.listen details: framing, write backpressure (Bun's write() does not
// buffer), idle timeouts, connection limits, logging and graceful shutdown.
import type { Socket, TCPSocketListener } from "bun";
import { readSync } from "node:fs";
import { connectionRoom, openFileLimit, type HeldFiles } from "./descriptors.ts";
import { LineReader } from "./lines.ts";
import type { ServerTls } from "./tls.ts";
import type { FileRange } from "./fsio.ts";

export interface Output {
  /** Reply text, already in wire form. */
  text?: string;
  /** Bytes sent right after the text (a small POP3 message). */
  bytes?: Uint8Array;
  /** A byte range of a file sent right after the text, read straight into the output buffer. */
  range?: FileRange;
  /** A large body streamed after the text (POP3 RETR), with backpressure. */
  body?: AsyncIterable<Uint8Array>;
  close?: boolean;
  log?: string;
  /** Wait this long before sending (a failed login): only this connection waits. */
  delayMs?: number;
  /** After sending the text, start TLS on this connection (STARTTLS / STLS). */
  startTls?: boolean;
}

export interface Handler {
  open(): Output;
  /** Handles the next complete unit in the reader (line or message), or null when more bytes are needed. */
  next(reader: LineReader): Output | Promise<Output> | null;
  /** The reply for an idle timeout, a shutdown, a failure inside the handler. */
  timeoutText(): string;
  shutdownText(): string;
  errorText(): string;
  /** A message is coming in (SMTP DATA): a shutdown lets it finish before the goodbye. */
  midMessage?(): boolean;
  /** The connection is gone: release locks and the like. */
  closed(): void;
  /** The TLS handshake asked for by startTls is under way: start the session over. */
  secured?(): void;
}

/** How a server listens: the options smtpmail and popserver share. */
export interface ListenOptions {
  host: string;
  port: number;
  maxConnections: number;
  maxPerAddress?: number;
  /** The per-address limit does not apply to 127.0.0.0/8 and ::1. */
  perAddressExemptsLoopback?: boolean;
  idleTimeoutMs: number;
  /** Certificate and key: enables STARTTLS / STLS, and the implicit-TLS port when tlsPort is set. */
  tlsFiles?: ServerTls | null;
  tlsPort?: number;
  verbose: boolean;
  quiet?: boolean;
  log: (line: string) => void;
}

export interface ServerOptions extends ListenOptions {
  name: string;
  heldFiles?: HeldFiles;
  tooManyText: string;
  tooManyFromAddressText?: string;
  /** trace is set in verbose mode: handlers report client lines through it. */
  create(peer: string, trace: ((line: string) => void) | undefined, secure: boolean): Handler;
}

interface Conn {
  id: number;
  peer: string;
  handler: Handler | null;
  reader: LineReader;
  out: Buffer[];
  outBytes: number;
  busy: boolean;
  /** The client has finished sending (a FIN): answer what it sent, then close. */
  eof: boolean;
  /**
   * Since when an unfinished command line has been waiting (0: none). The idle timeout runs
   * from here too, so a client dribbling a byte at a time cannot hold a connection for ever
   * (Postfix's per-record deadline). Message text after DATA is not a command line: there,
   * any progress counts.
   */
  partialSince: number;
  ending: boolean;
  closed: boolean;
  lastActive: number;
  opened: number;
  drained: (() => void) | null;
  /** Counted in the per-address limit. */
  counted: boolean;
  /** Set by a STARTTLS upgrade: the socket the connection continues on. */
  upgradedTo: Socket<Conn> | null;
  /** On the implicit-TLS port, accepted and counted, its handshake not done yet. */
  awaitingTls: boolean;
  /** Encrypted (implicit TLS or STARTTLS): shut with close_notify, and closed with close() at the end of its grace. */
  tls: boolean;
  /** Refused at accept: closed outright, never kept reading (a flood of them held the slots of others). */
  refused: boolean;
  /** closeWrite() has run: a drain after it must not shut the socket again. */
  writeShut: boolean;
}

/**
 * After the last reply: the connection is only shut for writing, and what the client still
 * sends is read and dropped until it closes (the sweep ends it after GOODBYE_GRACE_MS). Closed
 * outright, commands a pipelining client had sent after ours crossed met a reset, and mpop
 * reported "network write error: Connection reset by peer" instead of the goodbye (helper-91).
 * On a TLS connection Bun 1.4.5's shutdown() sends close_notify, then the FIN, and keeps the
 * socket ours. Not end(): it sends the same close_notify but lets go of the socket (readyState
 * -1), so neither the sweep nor a server shutdown could close it any more (terminate(), end()
 * and close() after it do nothing), and a client that kept its side open held the connection
 * until Bun's own close 10 to 12 s later: every SIGTERM waited its full grace for it
 * (helper-106). A connection refused at accept is ended outright (a flood of them kept reading
 * filled the connection slots). Never end(data): it truncated in recent Bun versions.
 */
function closeWrite(s: Socket<Conn>): void {
  if (s.data.writeShut) return;
  s.data.writeShut = true;
  if (s.data.refused) s.end();
  else s.shutdown();
}

function newConn(peer: string, now: number, id = ++nextId): Conn {
  return { id, peer, handler: null, reader: new LineReader(), out: [], outBytes: 0, busy: false, eof: false, partialSince: 0, ending: false, closed: false, lastActive: now, opened: now, drained: null, counted: false, upgradedTo: null, awaitingTls: false, tls: false, refused: false, writeShut: false };
}

/**
 * Unanswered commands a connection may have waiting, and replies the client has not taken:
 * past these it is paused (TCP backpressure) or waited for. At 1 MiB each, clients that
 * pipeline commands and never read held about 3 MiB of the server's memory apiece: 200
 * of them from one address, over 500 MiB (helper-47).
 */
const IN_HIGH_WATER = 64 << 10;
const OUT_HIGH_WATER = 256 << 10;
/**
 * Longest a connection works through its pipelined commands (or a streamed listing) before
 * letting the event loop serve others. Without it, 120 KB of pipelined RSET on a
 * 100,000-message mailbox held popserver for 2.4 s, and 4 MB of MAIL/RCPT/RSET held
 * smtpmail for 0.6 s (helper-20).
 */
const SLICE_MS = 4;

/** Lets the event loop run other connections' I/O before continuing. */
const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));
const GOODBYE_GRACE_MS = 5000;
const STAGE_MAX = 1 << 20;

function readFully(fd: number, buf: Buffer, at: number, length: number, position: number): number {
  let got = 0;
  while (got < length) {
    const n = readSync(fd, buf, at + got, length - got, position + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}
let nextId = 0;

/** Fewer sessions than this at once is worth a warning at start. */
const LOW_ROOM = 1000;

function isLoopback(address: string): boolean {
  return address.startsWith("127.") || address === "::1" || address.startsWith("::ffff:127.");
}

export class MailServer {
  private listener: TCPSocketListener<Conn> | null = null;
  private tlsListener: TCPSocketListener<Conn> | null = null;
  private readonly perAddress = new Map<string, number>();
  private readonly conns = new Set<Socket<Conn>>();
  /**
   * Sessions and sockets at most, within the open-file limit: at the limit accept() fails, and
   * Bun retried it at 100 % CPU while new clients hung without a word (helper-47).
   */
  private readonly maxSessions: number;
  private readonly maxSockets: number;
  private readonly fileLimit: number | null;
  private fullLoggedAt = 0;
  private sweeper: ReturnType<typeof setInterval> | null = null;
  private stopping = false;
  // Replies gathered while one connection handles a batch of pipelined commands, written
  // with one syscall. One buffer for the whole server, reused batch after batch, so an idle
  // connection holds none and a RETR allocates nothing: only one connection is between
  // cork() and uncork() at a time, since nothing awaits in between.
  private stage = Buffer.allocUnsafe(64 * 1024);
  private stageLen = 0;
  private stageOwner: Socket<Conn> | null = null;

  constructor(private readonly opt: ServerOptions) {
    this.fileLimit = openFileLimit();
    const room = this.fileLimit === null ? null : connectionRoom(this.fileLimit);
    this.maxSockets = room?.sockets ?? Infinity;
    this.maxSessions = Math.min(opt.maxConnections, room?.sessions ?? Infinity);
    if (room && room.sessions < LOW_ROOM && room.sessions < opt.maxConnections)
      opt.log(`${opt.name}: warning: the open-file limit (${this.fileLimit}, ulimit -n) allows only ${this.capacity()} at once`);
    const held = opt.heldFiles;
    if (held) {
      held.room = () => this.conns.size + held.count < this.maxSockets;
      // The descriptors' count of sessions, not --max-connections: refused ones hold sockets too.
      const sessions = room?.sessions ?? Infinity;
      const refusals = room ? room.sockets - room.sessions : Infinity;
      held.spare = () => held.count + 1 <= refusals || this.conns.size + 2 * (held.count + 1) <= sessions;
    }
  }

  get port(): number {
    return this.listener?.port ?? 0;
  }

  get tlsPort(): number {
    return this.tlsListener?.port ?? 0;
  }

  get connections(): number {
    return this.conns.size;
  }

  start(): void {
    // Half-open allowed: a client may send its last commands and shut down its side at once
    // (nc -N, scripted senders); it still gets the replies, such as the 250 after DATA.
    this.listener = Bun.listen<Conn>({ hostname: this.opt.host, port: this.opt.port, allowHalfOpen: true, socket: this.handlers(false) });
    if (this.opt.tlsFiles && this.opt.tlsPort !== undefined) {
      try {
        this.tlsListener = Bun.listen<Conn>({ hostname: this.opt.host, port: this.opt.tlsPort, tls: this.opt.tlsFiles, allowHalfOpen: true, socket: this.handlers(true) });
      } catch (e) {
        this.listener.stop(true);
        throw e;
      }
    }
    const every = Math.max(50, Math.min(1000, this.opt.idleTimeoutMs / 4));
    this.sweeper = setInterval(() => this.sweep(), every);
  }

  /** Socket handlers; `secure` for the implicit-TLS port, null for a socket upgraded by STARTTLS (already open). */
  private handlers(secure: boolean | null) {
    const self = this;
    const common = {
      open(s: Socket<Conn>) {
        if (secure !== null) self.onOpen(s, secure);
      },
      data(s: Socket<Conn>, chunk: Buffer) {
          self.onData(s, chunk);
      },
      drain(s: Socket<Conn>) {
        self.flush(s);
      },
      end(s: Socket<Conn>) {
        self.onEnd(s);
      },
      close(s: Socket<Conn>) {
        self.onClose(s);
      },
      error(s: Socket<Conn>, e: Error) {
        self.opt.log(`${self.opt.name}: connection ${s.data?.peer ?? "?"} error: ${e.message}`);
      },
    };
    if (secure !== true) return common;
    // With a handshake handler Bun calls open() at accept, not after the handshake: the
    // connection is counted and timed from its first moment. Without it, connections that
    // never finished a handshake were invisible: no idle timeout, no connection limits,
    // and 250 of them starved the server of descriptors (helper-27).
    return {
      ...common,
      handshake(s: Socket<Conn>, ok: boolean) {
        self.onHandshake(s, ok);
      },
    };
  }

  /** At most once a minute. */
  private logFull(): void {
    if (Date.now() - this.fullLoggedAt < 60_000) return;
    this.fullLoggedAt = Date.now();
    this.opt.log(`${this.opt.name}: refusing connections: ${this.capacity()} at once is what the open-file limit (${this.fileLimit}, ulimit -n) allows`);
  }

  /** A logged-in POP3 session holds its mailbox open too: two descriptors (helper-98). */
  private capacity(): string {
    const loggedIn = this.opt.heldFiles?.perSession ? `, ${Math.min(this.maxSessions, Math.floor(this.maxSockets / 2))} of them logged in` : "";
    return `${this.maxSessions} connections${loggedIn}`;
  }

  private onOpen(s: Socket<Conn>, secure: boolean): void {
    const peer = `${s.remoteAddress}`;
    // Past the sockets the descriptors allow, not even a reply: its descriptor goes at once.
    if (this.conns.size + (this.opt.heldFiles?.count ?? 0) >= this.maxSockets) {
      this.logFull();
      s.terminate();
      return;
    }
    s.data = newConn(peer, Date.now());
    s.data.tls = secure;
    this.conns.add(s);
    const fromPeer = (this.perAddress.get(peer) ?? 0) + 1;
    const limited = this.opt.maxPerAddress !== undefined && !(this.opt.perAddressExemptsLoopback && isLoopback(peer));
    // Refused at once, without a session: a flood from one address costs others nothing.
    const refusal =
      this.stopping || this.conns.size > this.maxSessions
        ? this.opt.tooManyText
        : limited && fromPeer > this.opt.maxPerAddress!
          ? (this.opt.tooManyFromAddressText ?? this.opt.tooManyText)
          : null;
    if (refusal !== null) {
      if (this.conns.size > this.maxSessions && this.maxSessions < this.opt.maxConnections) this.logFull();
      // Before a TLS handshake there is no way to say why.
      if (secure) s.terminate();
      else {
        s.data.refused = true;
        this.send(s, refusal);
        this.end(s);
      }
      return;
    }
    this.perAddress.set(peer, fromPeer);
    s.data.counted = true;
    if (secure) {
      s.data.awaitingTls = true; // the session begins with the handshake
      return;
    }
    this.begin(s, secure);
  }

  private onHandshake(s: Socket<Conn>, ok: boolean): void {
    const c = s.data;
    if (!c?.awaitingTls || c.closed) return;
    c.awaitingTls = false;
    // Not ok: the client gave up or spoke no TLS (a peer certificate is not asked for).
    if (!ok) s.terminate();
    else this.begin(s, true);
  }

  /** The session of an accepted connection: its handler, the log line, the greeting. */
  private begin(s: Socket<Conn>, secure: boolean): void {
    const peer = s.data.peer;
    const trace = this.opt.verbose ? (line: string) => this.opt.log(`[${s.data.id}] C: ${line}`) : undefined;
    s.data.handler = this.opt.create(peer, trace, secure);
    if (!this.opt.quiet) this.opt.log(`${this.opt.name}: [${s.data.id}] connect from ${peer}`);
    this.emit(s, s.data.handler.open());
  }

  private onData(s: Socket<Conn>, chunk: Buffer): void {
    const c = s.data;
    if (!c || c.ending || !c.handler) return;
    c.lastActive = Date.now();
    c.reader.push(chunk);
    // A client that sends faster than we answer is paused (TCP backpressure), not buffered.
    if (c.busy && c.reader.buffered > IN_HIGH_WATER) s.pause();
    void this.pump(s);
  }

  private onEnd(s: Socket<Conn>): void {
    const c = s.data;
    // A socket left behind by a STARTTLS upgrade has a closed Conn: the TLS socket decides.
    if (!c || c.eof || c.closed) return;
    c.eof = true;
    // Not busy: every complete command has been answered (an unfinished line or message is
    // dropped, as a closed connection's is). Busy: the pump closes once it has caught up.
    if (!c.busy) this.end(s);
  }

  private onClose(s: Socket<Conn>): void {
    const c = s.data;
    if (!c || c.closed) return;
    c.closed = true;
    this.conns.delete(s);
    if (c.counted) {
      const left = (this.perAddress.get(c.peer) ?? 1) - 1;
      if (left > 0) this.perAddress.set(c.peer, left);
      else this.perAddress.delete(c.peer);
    }
    c.drained?.();
    try {
      c.handler?.closed();
    } catch (e) {
      this.opt.log(`${this.opt.name}: cleanup failed: ${(e as Error).message}`);
    }
    if (c.handler && !this.opt.quiet)
      this.opt.log(`${this.opt.name}: [${c.id}] disconnect ${c.peer} after ${((Date.now() - c.opened) / 1000).toFixed(1)}s`);
  }

  private async pump(s: Socket<Conn>): Promise<void> {
    const c = s.data;
    if (c.busy || !c.handler) return;
    c.busy = true;
    let progressed = false;
    try {
      // Replies to pipelined commands are gathered and written together: one syscall
      // per batch instead of one per reply.
      this.cork(s);
      let slice = performance.now();
      while (!c.ending && !c.closed) {
        let step = c.handler.next(c.reader);
        if (step === null) break;
        progressed = true;
        if (step instanceof Promise) {
          this.uncork(s);
          step = await step;
          this.cork(s);
        }
        const slow = this.emit(s, step);
        if (slow) await slow;
        if (c.upgradedTo) {
          s = c.upgradedTo;
          c.upgradedTo = null;
        }
        // Shutting down: a message that was coming in has had its answer; commands pipelined
        // after it must not start another (helper-63).
        if (this.stopping && !c.handler.midMessage?.()) break;
        this.cork(s);
        if (c.outBytes > OUT_HIGH_WATER) {
          this.uncork(s);
          await this.waitDrain(s);
          this.cork(s);
        }
        // Awaits above do not restart the slice: a streamed listing or an async step may
        // settle in microtasks alone, without the event loop running in between.
        if (performance.now() - slice > SLICE_MS) {
          this.uncork(s);
          await yieldToLoop();
          this.cork(s);
          slice = performance.now();
        }
      }
      this.uncork(s);
    } catch (e) {
      this.uncork(s);
      this.opt.log(`${this.opt.name}: [${c.id}] internal error: ${(e as Error).stack ?? e}`);
      this.send(s, c.handler.errorText());
      this.end(s);
    } finally {
      c.busy = false;
    }
    // In DATA the reader keeps nothing pending (message bytes are set aside), so only an
    // unfinished command line is left here.
    if (c.reader.buffered === 0) c.partialSince = 0;
    else if (progressed || c.partialSince === 0) c.partialSince = Date.now();
    if (c.eof) this.end(s);
    if (!c.closed) s.resume();
    if (this.stopping && !c.ending && !c.closed && !c.handler.midMessage?.()) {
      this.send(s, c.handler.shutdownText());
      this.end(s);
    }
  }

  /**
   * Sends one Output. Synchronous unless it has to wait (a delay, a TLS upgrade, a streamed
   * body): the shared output stage must never be held across an await, or another
   * connection could write into it.
   */
  private emit(s: Socket<Conn>, out: Output): Promise<void> | undefined {
    if (out.log) this.opt.log(`${this.opt.name}: [${s.data.id}] ${out.log}`);
    if (out.delayMs || out.startTls || out.body) return this.emitSlow(s, out);
    if (out.text) this.send(s, out.text);
    if (out.bytes) this.send(s, out.bytes);
    if (out.range) this.sendRange(s, out.range);
    if (out.close) {
      this.uncork(s);
      this.end(s);
    }
    return undefined;
  }

  private async emitSlow(s: Socket<Conn>, out: Output): Promise<void> {
    this.uncork(s);
    if (out.delayMs) await Bun.sleep(out.delayMs);
    if (out.text) this.send(s, out.text);
    if (out.startTls) {
      await this.waitDrain(s);
      if (!s.data.closed && !s.data.ending) this.startTls(s);
      return;
    }
    if (out.bytes) this.send(s, out.bytes);
    if (out.range) this.sendRange(s, out.range);
    if (out.body) {
      let slice = performance.now();
      try {
        for await (const chunk of out.body) {
          if (s.data.closed) return;
          // Producers may reuse a chunk's buffer once we return, so what the kernel does not
          // take now is copied.
          this.writeOut(s, Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength), true);
          if (s.data.outBytes > OUT_HIGH_WATER) await this.waitDrain(s);
          // A listing made faster than the client reads it never fills the socket: take turns.
          if (performance.now() - slice > SLICE_MS) {
            await yieldToLoop();
            slice = performance.now();
          }
        }
      } catch (e) {
        // The connection went first (a client that stopped reading): its maildrop was closed
        // under the read, which is what failed. Nothing to report.
        if (s.data.closed) return;
        // Half a body is out: an error reply now would read as part of it (helper-25).
        this.opt.log(`${this.opt.name}: [${s.data.id}] reply cut short: ${(e as Error).message}; closing`);
        this.end(s);
        return;
      }
    }
    if (out.close) this.end(s);
  }

  /**
   * Bun 1.4.5's upgradeTLS works when it is called right after the reply went out, before the
   * event loop runs again: the client's ClientHello must reach the TLS layer, not our data
   * handler (a later upgrade loses it and the handshake hangs). The raw socket keeps firing
   * data events with the ciphertext, so it gets a dead Conn that ignores them; bytes the
   * client sent before the handshake are dropped with the old reader (RFC 3207, RFC 2595).
   */
  private startTls(s: Socket<Conn>): void {
    const c = s.data;
    const dead = newConn(c.peer, c.opened, c.id);
    dead.closed = true;
    const [raw, tls] = s.upgradeTLS<Conn>({ data: c, tls: this.opt.tlsFiles!, socket: this.handlers(null) });
    raw.data = dead;
    s.data = dead;
    this.conns.delete(s);
    this.conns.add(tls);
    c.reader = new LineReader();
    c.upgradedTo = tls;
    c.tls = true;
    c.handler?.secured?.();
  }

  /** Starts gathering this connection's replies in the stage. */
  private cork(s: Socket<Conn>): void {
    if (this.stageOwner && this.stageOwner !== s) this.uncork(this.stageOwner);
    this.stageOwner = s;
  }

  private uncork(s: Socket<Conn>): void {
    if (this.stageOwner !== s) return;
    this.stageOwner = null;
    const len = this.stageLen;
    this.stageLen = 0;
    if (len > 0) this.writeOut(s, this.stage.subarray(0, len), true);
  }

  /** Writes what is staged so far and keeps gathering. */
  private flushStage(s: Socket<Conn>): void {
    this.uncork(s);
    this.cork(s);
  }

  /** Room for n more bytes in the stage, or false when n is too big to stage. */
  private stageRoom(n: number): boolean {
    if (n > STAGE_MAX) return false;
    const need = this.stageLen + n;
    if (this.stage.length < need) {
      const grown = Buffer.allocUnsafe(Math.min(STAGE_MAX, Math.max(need, this.stage.length * 2)));
      this.stage.copy(grown, 0, 0, this.stageLen);
      this.stage = grown;
    }
    return true;
  }

  private send(s: Socket<Conn>, data: string | Uint8Array): void {
    const c = s.data;
    if (c.closed || c.ending) return;
    if (this.opt.verbose && typeof data === "string")
      for (const line of data.split("\r\n").slice(0, -1)) this.opt.log(`[${c.id}] S: ${line}`);
    const n = typeof data === "string" ? Buffer.byteLength(data) : data.byteLength;
    if (this.stageOwner === s) {
      if (this.stageLen + n > STAGE_MAX) this.flushStage(s);
      if (this.stageRoom(n)) {
        if (typeof data === "string") this.stage.write(data, this.stageLen);
        else this.stage.set(data, this.stageLen);
        this.stageLen += n;
        return;
      }
    }
    if (typeof data === "string" && c.out.length === 0) {
      // Most replies fit the socket buffer at once: no Buffer needed unless some is left.
      const written = s.write(data);
      if (written < 0 || written === n) return;
      this.writeOut(s, Buffer.from(data).subarray(written), false);
      return;
    }
    const buf = typeof data === "string" ? Buffer.from(data) : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    this.writeOut(s, buf, false);
  }

  private sendRange(s: Socket<Conn>, r: FileRange): void {
    const c = s.data;
    if (c.closed || c.ending) return;
    if (this.stageOwner === s && this.stageLen + r.length > STAGE_MAX) this.flushStage(s);
    if (this.stageOwner === s && this.stageRoom(r.length)) {
      const got = readFully(r.fd, this.stage, this.stageLen, r.length, r.offset);
      if (got < r.length) return this.cutShort(s, r);
      this.stageLen += got;
      return;
    }
    const buf = Buffer.allocUnsafe(r.length);
    if (readFully(r.fd, buf, 0, r.length, r.offset) < r.length) return this.cutShort(s, r);
    this.writeOut(s, buf, false);
  }

  /**
   * The file ended before the range did (cut under us by something that ignores the lock):
   * the reply cannot be finished, and sending part of it would leave the client waiting for
   * an end that never comes, so the connection ends instead.
   */
  private cutShort(s: Socket<Conn>, r: FileRange): void {
    this.opt.log(`${this.opt.name}: [${s.data.id}] the file ended inside a reply (${r.length} bytes at ${r.offset}); closing`);
    this.uncork(s);
    this.end(s);
  }

  /** Writes what the kernel takes now and queues the rest (copied if the buffer is reused). */
  private writeOut(s: Socket<Conn>, buf: Buffer, reused: boolean): void {
    const c = s.data;
    if (c.closed || c.ending) return;
    if (c.out.length === 0) {
      const n = s.write(buf);
      if (n < 0 || n === buf.length) return;
      buf = buf.subarray(n);
    }
    if (reused) buf = Buffer.from(buf);
    c.out.push(buf);
    c.outBytes += buf.length;
  }

  private flush(s: Socket<Conn>): void {
    const c = s.data;
    if (!c) return;
    while (c.out.length) {
      const buf = c.out[0]!;
      const n = s.write(buf);
      if (n <= 0) return;
      c.lastActive = Date.now();
      if (n < buf.length) {
        c.out[0] = buf.subarray(n);
        c.outBytes -= n;
        return;
      }
      c.out.shift();
      c.outBytes -= buf.length;
    }
    const d = c.drained;
    c.drained = null;
    d?.();
    if (c.ending) closeWrite(s);
  }

  private waitDrain(s: Socket<Conn>): Promise<void> {
    if (s.data.outBytes === 0 || s.data.closed) return Promise.resolve();
    return new Promise((resolve) => (s.data.drained = resolve));
  }

  /** Close after everything queued has been written. */
  private end(s: Socket<Conn>): void {
    const c = s.data;
    if (c.ending) return;
    c.ending = true;
    // The grace after a goodbye counts from the goodbye, not from the client's last word.
    c.lastActive = Date.now();
    if (c.out.length === 0) closeWrite(s);
  }

  private sweep(): void {
    const now = Date.now();
    for (const s of this.conns) {
      const c = s.data;
      if (c.awaitingTls) {
        if (now - c.lastActive > this.opt.idleTimeoutMs) s.terminate();
        continue;
      }
      if (c.ending) {
        // We said goodbye (or 421 to a refused connection): a peer that neither reads nor
        // closes must not keep holding a connection slot. It is closed, not reset: the kernel
        // may still hold the end of a large reply for a slow reader (a reset threw it away,
        // with the goodbye after it, helper-102). A TLS one with close(), which lets go of the
        // descriptor at once whether or not the close_notify went out (a peer that stopped
        // reading); end() there would hand it to Bun's own close, seconds later.
        if (now - c.lastActive > Math.min(this.opt.idleTimeoutMs, GOODBYE_GRACE_MS)) {
          if (c.tls) s.close();
          else s.end();
        }
        continue;
      }
      // Output waiting for the client (a big RETR): the drain event comes only once the
      // kernel's send buffer is about half empty, megabytes for a slow reader, so a reader
      // that is slow but steady shows its progress only to a write attempt.
      if (c.outBytes > 0 && now - c.lastActive > this.opt.idleTimeoutMs / 2) this.flush(s);
      if (c.busy) {
        // Stuck behind a client that stopped reading: idle as well, and nothing more can be
        // said to it.
        if (c.drained && now - c.lastActive > this.opt.idleTimeoutMs) {
          if (!this.opt.quiet) this.opt.log(`${this.opt.name}: [${c.id}] client stopped reading, closing`);
          s.terminate();
        }
        continue;
      }
      const dribbling = c.partialSince !== 0 && now - c.partialSince > this.opt.idleTimeoutMs;
      if ((now - c.lastActive > this.opt.idleTimeoutMs || dribbling) && c.handler) {
        if (!this.opt.quiet) this.opt.log(`${this.opt.name}: [${c.id}] idle timeout`);
        this.send(s, c.handler.timeoutText());
        this.end(s);
      }
    }
  }

  /** Stop accepting, let work in flight finish, say goodbye to every client. */
  async shutdown(graceMs = 10_000): Promise<void> {
    this.stopping = true;
    this.listener?.stop(false);
    this.tlsListener?.stop(false);
    for (const s of this.conns) {
      const c = s.data;
      // A client mid-DATA that got 421 now would have its message deferred for the sender's
      // retry interval (Postfix: 300 s; helper-60 saw 20 of a burst so deferred).
      if (!c.busy && !c.ending && c.handler && !c.handler.midMessage?.()) {
        this.send(s, c.handler.shutdownText());
        this.end(s);
      } else if (c.awaitingTls) s.terminate();
    }
    const deadline = Date.now() + graceMs;
    while (this.conns.size > 0 && Date.now() < deadline) await Bun.sleep(10);
    for (const s of this.conns) s.terminate();
    if (this.sweeper) clearInterval(this.sweeper);
    this.listener?.stop(true);
    this.tlsListener?.stop(true);
  }
}
