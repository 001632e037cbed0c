// The POP3 server as a plain state machine (sans-IO, RFC 1939): command lines go in,
// status lines (and message bodies to stream) come out. Users and mailboxes are reached
// through the injected PopStore, so the session is tested with an in-memory one.
import { maskAuth, SASL_MECHANISMS, SaslExchange, type LoginThrottle, type SaslStep } from "./auth.ts";
import { trimSp } from "./lines.ts";
import { MaildropBusy, MaildropChanged, MaildropUnavailable, MaildropUpdateFailed, type Body, type Maildrop } from "./maildrop.ts";
import { writeNumber } from "./digits.ts";
import { Pop, type PopReply } from "./reply.ts";
import { MAX_NAME_LENGTH } from "./users.ts";

export interface PopStore {
  /** The listed user of that exact name, or null. */
  findUser(name: string): string | null;
  checkPassword(user: string, password: string): Promise<boolean>;
  /** Takes the POP3 lock and indexes the mailbox; throws MaildropBusy or MaildropUnavailable. */
  open(user: string): Promise<Maildrop>;
}

export interface PopResult {
  reply: PopReply;
  /** Multi-line body in wire form, ending with the ".\r\n" line. */
  body?: Body;
  close?: boolean;
  log?: string;
  /** Start TLS once the reply is sent (STLS). */
  startTls?: boolean;
  /** Wait this long before sending the reply (a failed login). */
  delayMs?: number;
}

export interface PopTlsOptions {
  /** A certificate is loaded: STLS is offered on plaintext connections. */
  tls?: boolean;
  /** The connection is encrypted (implicit TLS, or after STLS). */
  secure?: boolean;
  /** Refuse USER and PASS until the connection is encrypted. */
  requireTls?: boolean;
  /** Slows failed PASS per client address; without it failures are answered at once. */
  throttle?: LoginThrottle;
}

type State = "authorization" | "transaction" | "closed";

export const CAPABILITIES = ["TOP", "UIDL", "USER", `SASL ${SASL_MECHANISMS.join(" ")}`, "PIPELINING", "RESP-CODES", "AUTH-RESP-CODE", "EXPIRE NEVER", "IMPLEMENTATION mailsystem-popserver"];
// RFC 1939 section 3. Not for user names: those may be as long as user.txt allows and SMTP
// delivers to (MAX_NAME_LENGTH); a 40-character cap left such a user's mail unreadable (helper-42).
const MAX_ARG = 40;
const LISTING_CHUNK = 1000;

/** Writes message i's value in a listing row into buf at pos; returns the new pos. */
type RowWriter = (i: number, buf: Buffer, pos: number) => number;

const lines = (rows: string[]) => Buffer.from(rows.map((r) => r + "\r\n").join("") + ".\r\n");

export class Pop3Session {
  private current: State = "authorization";
  /** The name given by USER, and the user it names (null: none). */
  private pendingUser: { name: string; user: string | null } | null = null;
  private user: string | null = null;
  private drop: Maildrop | null = null;
  private deleted = new Set<number>();
  /**
   * Messages and octets not marked deleted, kept as DELE and RSET change them: counting them
   * for every STAT was a scan (170 us on 100,000 messages, STAT one at a time 3400/s).
   */
  private live: readonly [number, number] | null = null;
  /** The totals with nothing deleted, for RSET: a pipelined RSET flood must not rescan each time. */
  private all: readonly [number, number] | null = null;
  private failedLogins = 0;
  /** AUTH in progress: the next line is a SASL response, not a command. */
  private sasl: SaslExchange | null = null;

  constructor(
    private readonly store: PopStore,
    private readonly peer = "unknown",
    private readonly opt: PopTlsOptions = {},
  ) {}

  /** RFC 1939's state: authorization, transaction, or closed (after QUIT, a failed open, or the connection's end). */
  get state(): State {
    return this.current;
  }

  /** After STLS: RFC 2595 section 4, the client starts the login over. */
  tlsStarted(): void {
    this.opt.secure = true;
    this.pendingUser = null;
  }

  private get loginAllowed(): boolean {
    return !this.opt.requireTls || !!this.opt.secure;
  }

  /** The next line answers a SASL challenge (and holds a password): not to be logged. */
  get expectingAuthResponse(): boolean {
    return this.sasl !== null;
  }

  /** The next line as the log may show it: passwords (PASS, AUTH's initial response, SASL responses) masked. */
  logForm(line: string): string {
    return /^\s*PASS\s/i.test(line) ? "PASS ********" : maskAuth(line, this.expectingAuthResponse);
  }

  /** RFC 2595: STLS while it can be used, USER and SASL only where a plaintext login is allowed. */
  private capabilities(): string[] {
    if (!this.opt.tls) return CAPABILITIES;
    const caps = CAPABILITIES.filter((c) => (c !== "USER" && !c.startsWith("SASL ")) || this.loginAllowed);
    if (!this.opt.secure && this.current === "authorization") caps.push("STLS");
    return caps;
  }

  greeting(): PopReply {
    return Pop.greeting();
  }

  lineTooLong(): PopResult {
    // Also ends an AUTH exchange: the next line is a command again.
    this.sasl = null;
    return { reply: Pop.lineTooLong() };
  }

  handleLine(line: string): PopResult | Promise<PopResult> {
    if (this.sasl) return this.saslStep(this.sasl.respond(line));
    const trimmed = trimSp(line);
    const sp = trimmed.search(/[ \t]/);
    const verb = (sp < 0 ? trimmed : trimmed.slice(0, sp)).toUpperCase();
    const rest = sp < 0 ? "" : trimmed.slice(sp + 1);
    // PASS keeps spaces inside the password; everything else splits into arguments.
    const args = trimSp(rest) ? trimSp(rest).split(/[ \t]+/) : [];
    if (verb === "CAPA") return { reply: Pop.capabilities(), body: lines(this.capabilities()) };
    if (verb === "QUIT") return this.quit();
    // After a failed login or QUIT there is no maildrop: refuse instead of throwing.
    if (this.current === "closed") return { reply: Pop.wrongState(), close: true };
    if (this.current === "authorization") {
      switch (verb) {
        case "STLS":
          return this.stls(args);
        case "USER":
          return this.loginAllowed ? this.userCmd(args) : { reply: Pop.tlsRequired() };
        case "PASS":
          // Trimmed at both ends alike: user.txt's passwords are words, so spaces before one
          // are never part of it ("PASS  pw" was refused while "PASS pw " logged in; helper-112).
          return this.loginAllowed ? this.pass(trimSp(rest)) : { reply: Pop.tlsRequired() };
        case "AUTH":
          return this.loginAllowed ? this.authCmd(args) : { reply: Pop.tlsRequired() };
        case "STAT": case "LIST": case "RETR": case "DELE": case "RSET": case "NOOP": case "UIDL": case "TOP":
          return { reply: Pop.wrongState() };
        default:
          return { reply: Pop.unknownCommand() };
      }
    }
    if (args.some((a) => a.length > MAX_ARG)) return { reply: Pop.syntax("argument too long") };
    switch (verb) {
      case "STAT":
        return this.noArgs(args) ?? { reply: Pop.stat(...this.totals()) };
      case "NOOP":
        return this.noArgs(args) ?? { reply: Pop.noop() };
      case "RSET": {
        const bad = this.noArgs(args);
        if (bad) return bad;
        this.deleted.clear();
        this.live = this.all;
        const [n, octets] = this.totals();
        return { reply: Pop.reset(n, octets) };
      }
      case "LIST":
        return this.listing(args, (i) => this.drop!.size(i), (i, buf, pos) => writeNumber(buf, pos, this.drop!.size(i)));
      case "UIDL":
        return this.listing(args, (i) => this.drop!.uid(i), (i, buf, pos) => (this.drop!.writeUid ? this.drop!.writeUid(i, buf, pos) : pos + buf.write(this.drop!.uid(i), pos, "latin1")));
      case "RETR":
        return this.retr(args);
      case "TOP":
        return this.top(args);
      case "DELE":
        return this.dele(args);
      case "USER":
      case "PASS":
      case "AUTH":
        return { reply: Pop.wrongState() };
      case "STLS":
        return this.opt.tls ? { reply: Pop.wrongState() } : { reply: Pop.unknownCommand() };
      default:
        return { reply: Pop.unknownCommand() };
    }
  }

  /** The connection ended without QUIT: nothing is deleted (RFC 1939 section 6). */
  closed(): void {
    this.drop?.release();
    this.drop = null;
    this.current = "closed";
  }

  private stls(args: string[]): PopResult {
    if (!this.opt.tls) return { reply: Pop.unknownCommand() };
    if (args.length) return { reply: Pop.syntax("no arguments expected") };
    if (this.opt.secure) return { reply: Pop.tlsActive() };
    return { reply: Pop.beginTls(), startTls: true };
  }

  private userCmd(args: string[]): PopResult {
    if (args.length !== 1) return { reply: Pop.syntax("USER needs exactly one name") };
    if (args[0]!.length > MAX_NAME_LENGTH) return { reply: Pop.syntax("name too long") };
    const name = args[0]!;
    this.pendingUser = { name, user: this.store.findUser(name) };
    // The same reply for every name, as Dovecot: whether an account exists shows only as a
    // failed PASS, which is slowed like a wrong password.
    return { reply: Pop.userOk(name) };
  }

  private async pass(password: string): Promise<PopResult> {
    const pending = this.pendingUser;
    this.pendingUser = null;
    if (!pending) return { reply: Pop.needUser() };
    return this.login(pending.user, password, pending.name);
  }

  /**
   * AUTH (RFC 5034) with PLAIN (RFC 4616) or LOGIN; AUTH alone lists the mechanisms, as
   * RFC 1734 clients expect. Passwords are the same as for USER/PASS.
   */
  private authCmd(args: string[]): PopResult | Promise<PopResult> {
    this.pendingUser = null;
    if (args.length === 0) return { reply: Pop.mechanisms(), body: lines(SASL_MECHANISMS) };
    if (args.length > 2) return { reply: Pop.syntax("expected AUTH mechanism [initial-response]") };
    const { exchange, step } = SaslExchange.start(args[0]!, args[1]);
    this.sasl = exchange;
    return this.saslStep(step);
  }

  /** A step of the SASL exchange as a POP3 reply; any but a challenge ends the exchange. */
  private saslStep(step: SaslStep): PopResult | Promise<PopResult> {
    if (step.kind !== "challenge") this.sasl = null;
    switch (step.kind) {
      case "challenge":
        return { reply: Pop.authChallenge(step.base64) };
      case "cancelled":
        return { reply: Pop.authCancelled() };
      case "badBase64":
        return { reply: Pop.authBadBase64() };
      case "unknownMech":
        return { reply: Pop.authMechanism() };
      case "creds": {
        const creds = step.creds;
        // An unknown name or a malformed response gets a wrong password's reply and throttling.
        if (!creds) return this.loginFailed('""');
        const user = creds.user.length <= MAX_NAME_LENGTH ? this.store.findUser(creds.user) : null;
        return this.login(user, creds.password, creds.user.slice(0, MAX_NAME_LENGTH));
      }
    }
  }

  /**
   * Checks the password, then locks and indexes the maildrop (PASS and AUTH alike). An
   * unknown name (user null) is checked too, so that it takes as long as a wrong password.
   */
  private async login(user: string | null, password: string, given: string): Promise<PopResult> {
    const ok = await this.store.checkPassword(user ?? given, password);
    if (!ok || user === null) return this.loginFailed(user ?? JSON.stringify(given));
    // The client may have vanished while we waited: closed() already ran, so nothing may stay open.
    if (this.current === "closed") return { reply: Pop.connectionClosed(), close: true };
    try {
      const drop = await this.store.open(user);
      // closed() may have run during the await (TypeScript cannot see that).
      if ((this.current as State) === "closed") {
        drop.release();
        return { reply: Pop.connectionClosed(), close: true };
      }
      this.drop = drop;
      this.live = this.all = null;
    } catch (e) {
      // RFC 1939: the mailbox cannot be opened or locked: -ERR, and the server closes.
      this.current = "closed";
      // The reason goes to the log; the client learns the error code, not the server's paths.
      const reply = e instanceof MaildropBusy ? Pop.locked() : e instanceof MaildropUnavailable ? Pop.cannotOpen(e.why, e.permanent) : Pop.cannotOpen();
      return { reply, close: true, log: `cannot open mailbox of ${user}: ${(e as Error).message}` };
    }
    this.user = user;
    this.current = "transaction";
    const [n, octets] = this.totals();
    return { reply: Pop.loggedIn(n, octets), log: `login ${user} from ${this.peer}, ${n} messages` };
  }

  private loginFailed(user: string): PopResult {
    const log = `failed login for ${user} from ${this.peer}`;
    const throttle = this.opt.throttle;
    if (!throttle) return { reply: Pop.badLogin(), log };
    const delayMs = throttle.failed(this.peer);
    if (++this.failedLogins >= throttle.config.maxFailuresPerConnection) {
      this.current = "closed";
      return { reply: Pop.tooManyFailures(), close: true, delayMs, log };
    }
    return { reply: Pop.badLogin(), delayMs, log };
  }

  private async quit(): Promise<PopResult> {
    if (this.current !== "transaction") {
      this.current = "closed";
      return { reply: Pop.goodbye(null), close: true };
    }
    // UPDATE state: remove the marked messages, then release everything.
    const drop = this.drop!;
    const count = this.deleted.size;
    this.drop = null;
    this.current = "closed";
    try {
      await drop.commit(this.deleted);
    } catch (e) {
      // As at login: the client learns the error code, the log the server's paths.
      const reply = e instanceof MaildropChanged ? Pop.changedBeforeUpdate() : Pop.updateFailed(e instanceof MaildropUpdateFailed ? e.why : undefined);
      return { reply, close: true, log: `update of ${this.user} failed: ${(e as Error).message}` };
    }
    return { reply: Pop.goodbye(this.user), close: true, log: count ? `${this.user} deleted ${count} messages` : undefined };
  }

  private noArgs(args: string[]): PopResult | null {
    return args.length ? { reply: Pop.syntax("no arguments expected") } : null;
  }

  private totals(): readonly [number, number] {
    if (this.live) return this.live;
    let n = 0;
    let octets = 0;
    const d = this.drop!;
    for (let i = 0; i < d.count; i++) {
      if (this.deleted.has(i)) continue;
      n++;
      octets += d.size(i);
    }
    this.live = [n, octets];
    if (this.deleted.size === 0) this.all = this.live;
    return this.live;
  }

  /** A message number argument: 1-based, present, not deleted. Returns the 0-based index. */
  private msg(arg: string | undefined): number | PopResult {
    if (arg === undefined) return { reply: Pop.syntax("message number required") };
    if (!/^\d+$/.test(arg)) return { reply: Pop.syntax(`invalid message number "${arg.slice(0, MAX_ARG)}"`) };
    const n = Number(arg);
    if (n < 1 || n > this.drop!.count) return { reply: Pop.noSuchMessage() };
    if (this.deleted.has(n - 1)) return { reply: Pop.deleted() };
    return n - 1;
  }

  private listing(args: string[], value: (i: number) => string | number, write: RowWriter): PopResult {
    if (args.length > 1) return { reply: Pop.syntax("at most one message number") };
    if (args.length === 1) {
      const i = this.msg(args[0]);
      if (typeof i !== "number") return i;
      return { reply: Pop.scanLine(i + 1, value(i)) };
    }
    const [n, octets] = this.totals();
    return { reply: Pop.listing(n, octets), body: this.scanListing(write) };
  }

  /**
   * The rows of LIST / UIDL. A long listing (100,000 messages is 1.5 MB) is produced in
   * chunks as the client reads it, instead of as one large string.
   */
  private scanListing(write: RowWriter): Uint8Array | AsyncIterable<Uint8Array> {
    const count = this.drop!.count;
    // Not copied: commands are handled one at a time, so no DELE or RSET runs while this
    // listing streams. (A copy per listing, after DELE of all 100,000, took popserver from 64
    // to 200 MiB under a LIST flood.)
    const deleted = this.deleted;
    // Rows are written into one reused buffer: a listing of 100,000 messages would otherwise
    // leave 100,000 strings for the garbage collector.
    const buf = Buffer.allocUnsafe(LISTING_CHUNK * 96);
    const rows = (from: number, to: number, last: boolean) => {
      let pos = 0;
      for (let i = from; i < to; i++) {
        if (deleted.has(i)) continue;
        pos = writeNumber(buf, pos, i + 1);
        buf[pos++] = 0x20;
        pos = write(i, buf, pos);
        buf[pos++] = 0x0d;
        buf[pos++] = 0x0a;
      }
      if (last) pos += buf.write(".\r\n", pos, "latin1");
      return buf.subarray(0, pos);
    };
    if (count <= LISTING_CHUNK) return Buffer.from(rows(0, count, true));
    return (async function* () {
      for (let i = 0; i < count; i += LISTING_CHUNK) yield rows(i, Math.min(count, i + LISTING_CHUNK), i + LISTING_CHUNK >= count);
    })();
  }

  private retr(args: string[]): PopResult | Promise<PopResult> {
    if (args.length !== 1) return { reply: Pop.syntax("RETR needs one message number") };
    const i = this.msg(args[0]);
    if (typeof i !== "number") return i;
    return this.multiLine(Pop.retrOk(this.drop!.size(i)), () => this.drop!.read(i));
  }

  /** The reply and its body; -ERR and a close when the file no longer holds the message. */
  private multiLine(reply: PopReply, make: () => Body | Promise<Body>): PopResult | Promise<PopResult> {
    // Cut under the session by something that ignores the lock: the whole index is suspect.
    const changed = (e: unknown): PopResult => {
      if (!(e instanceof MaildropChanged)) throw e;
      return { reply: Pop.mailboxChanged(), close: true, log: (e as Error).message };
    };
    try {
      const body = make();
      return body instanceof Promise ? body.then((b) => ({ reply, body: b }), changed) : { reply, body };
    } catch (e) {
      return changed(e);
    }
  }

  private top(args: string[]): PopResult | Promise<PopResult> {
    if (args.length !== 2) return { reply: Pop.syntax("TOP needs a message number and a line count") };
    const i = this.msg(args[0]);
    if (typeof i !== "number") return i;
    if (!/^\d+$/.test(args[1]!)) return { reply: Pop.syntax(`invalid line count "${args[1]!.slice(0, MAX_ARG)}"`) };
    const n = Number(args[1]);
    // A count of at least the message's size in octets covers every line: the whole message,
    // sent as RETR sends it (streamed when large). Counted line by line from a synchronous
    // read, a count of 10^8 on 10 MB of empty lines held the event loop ~140 ms (helper-20).
    return this.multiLine(Pop.topOk(), () => (n >= this.drop!.size(i) ? this.drop!.read(i) : this.drop!.top(i, n)));
  }

  private dele(args: string[]): PopResult {
    if (args.length !== 1) return { reply: Pop.syntax("DELE needs one message number") };
    const i = this.msg(args[0]);
    if (typeof i !== "number") return i;
    this.deleted.add(i);
    if (this.live) this.live = [this.live[0] - 1, this.live[1] - this.drop!.size(i)];
    return { reply: Pop.deleOk(i + 1) };
  }
}
