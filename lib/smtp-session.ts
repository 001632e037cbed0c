// The SMTP receiver as a plain state machine (sans-IO): command lines and message text go
// in, replies come out. It knows nothing of sockets or files: recipients are resolved
// through a Directory and messages handed to a MailStore, both injected.
import { SASL_MECHANISMS, SaslExchange, type Credentials, type LoginThrottle, type SaslStep } from "./auth.ts";
import { closingAngle, trimSp, UNDECODABLE, type MessageEvent } from "./lines.ts";
import { buildRecordYielding, NoRoomForRecord, receivedLine } from "./mailbox.ts";
import { isSafeUserName } from "./users.ts";
import type { MailStore } from "./mail-store.ts";
import { Smtp, type SmtpReply } from "./reply.ts";

export interface SmtpConfig {
  domain: string;
  maxMessageSize: number;
  maxRecipients: number;
  now?: () => Date;
  /** A certificate is loaded: STARTTLS is offered on plaintext connections. */
  tls?: boolean;
  /** Refuse AUTH and mail transactions until the connection is encrypted. */
  requireTls?: boolean;
  /** Refuse MAIL until the client has authenticated (530). */
  requireAuth?: boolean;
  /** Offer AUTH on unencrypted connections too. */
  allowPlainAuth?: boolean;
  /** Messages accepted on one connection before it is closed (421). */
  maxMessagesPerConnection?: number;
  /**
   * The domains mail is accepted for, lower case; others get 550 (no relaying). Unset: any
   * domain, as the assignment routes by user name alone (user@<server IP> and the like).
   */
  localDomains?: readonly string[];
}

/** What AUTH checks passwords against, and the shared failed-login throttle. */
export interface Authenticator {
  check(user: string, password: string): Promise<string | null>;
  throttle: LoginThrottle;
}

export interface Directory {
  /** The listed user an address's local part delivers to, or null. */
  resolve(localPart: string): string | null;
  /** Not listed, but listed until a moment ago (maybe a half-written user.txt): 450, not 550. */
  recentlyRemoved?(localPart: string): boolean;
}

export interface SmtpResult {
  replies: SmtpReply[];
  /** Close the connection after sending the replies. */
  close?: boolean;
  /** One line for the server log (deliveries). */
  log?: string;
  /** Start TLS once the replies are sent (STARTTLS). */
  startTls?: boolean;
  /** Credentials to check: the adapter passes them to finishLogin() and sends what it returns. */
  login?: Credentials;
  /** Wait this long before sending the replies (a failed login). */
  delayMs?: number;
}

type State = "command" | "data" | "closed";

const MAX_ADDRESS = 320;
// A domain without spaces, brackets or control characters, or an address literal
// (RFC 5321 4.1.3: [10.0.0.1], [IPv6:::1]; no "@" in it, which would split the address).
const DOMAIN = String.raw`(?:[^ \t<>()\[\]\\,;:@\x00-\x1f\x7f]+|\[[\x21-\x3f\x41-\x5a\x5e-\x7e]+\])`;
// A local part without spaces, brackets or control characters, "@", a domain.
const ADDRESS = new RegExp(String.raw`^[^ \t<>()\[\]\\,;:@\x00-\x1f\x7f]+@${DOMAIN}$`);
// RFC 5321 4.1.2: a local part may be a quoted string ("john smith"@example.org).
const QUOTED_ADDRESS = new RegExp(String.raw`^"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*)"(@${DOMAIN})$`);

/** The address with a quoted local part unquoted when the quotes were not needed ("bob"@x is bob@x). */
function unquoted(addr: string): string {
  const m = QUOTED_ADDRESS.exec(addr);
  if (!m) return addr;
  const local = m[1]!.replace(/\\(.)/g, "$1");
  return /^[A-Za-z0-9!#$%&'*+\/=?^_`{|}~.-]+$/.test(local) ? local + m[2] : addr;
}

export function parsePath(arg: string): { addr: string; params: string[] } | { error: string } {
  let s = trimSp(arg);
  let addr: string;
  let rest: string;
  if (s.startsWith("<")) {
    const close = closingAngle(s, 0);
    if (close < 0) return { error: "missing '>'" };
    addr = s.slice(1, close);
    rest = s.slice(close + 1);
    // Parameters are separated from the path by a space: "<a@b>junk" is no parameter.
    if (rest && !/^[ \t]/.test(rest)) return { error: "unexpected text after '>'" };
  } else {
    const sp = s.search(/[ \t]/);
    addr = sp < 0 ? s : s.slice(0, sp);
    rest = sp < 0 ? "" : s.slice(sp);
  }
  // A source route ("@a,@b:user@c", RFC 5321 appendix C) is ignored, as the RFC allows.
  if (addr.startsWith("@") && addr.includes(":")) addr = addr.slice(addr.indexOf(":") + 1);
  // In octets (RFC 5321 4.5.3.1): a UTF-8 character may take four.
  if (Buffer.byteLength(addr) > MAX_ADDRESS) return { error: "address too long" };
  // Bytes that were not UTF-8 at all: no address, SMTPUTF8 or not (RFC 6531 3.3).
  if (addr.includes(UNDECODABLE)) return { error: "address with bytes that are not UTF-8" };
  rest = trimSp(rest);
  return { addr, params: rest ? rest.split(/[ \t]+/) : [] };
}

export class SmtpSession {
  private state: State = "command";
  private helo: string | null = null;
  private from: string | null = null;
  private recipients: string[] = []; // user names, each once
  private rcptAddresses: string[] = []; // as RCPT TO gave them, one per user
  private rcptCount = 0;
  private rcptAttempted = false;
  private authUser: string | null = null;
  /** MAIL carried SMTPUTF8 (RFC 6531): its addresses may be UTF-8. */
  private utf8 = false;
  /** AUTH in progress: the next line is a SASL response, not a command. */
  private sasl: SaslExchange | null = null;
  private failedLogins = 0;
  private messages = 0;

  constructor(
    private readonly config: SmtpConfig,
    private readonly users: Directory,
    private readonly store: MailStore,
    private readonly peer = "unknown",
    private readonly auth: Authenticator | null = null,
    /** The connection is encrypted (implicit TLS, or after STARTTLS). */
    private secure = false,
  ) {}

  /** The user this session authenticated as, or null. */
  get authenticated(): string | null {
    return this.authUser;
  }

  /** Whether the next line is a SASL response (its contents must not be logged). */
  get expectingAuthResponse(): boolean {
    return this.sasl !== null;
  }

  /**
   * The TLS handshake after STARTTLS: RFC 3207 section 4.2 wants everything learnt before it
   * forgotten, so the client starts again with EHLO.
   */
  tlsStarted(): void {
    this.secure = true;
    this.reset();
    this.helo = null;
    this.authUser = null;
    this.sasl = null;
  }

  private get authOffered(): boolean {
    return this.auth !== null && (this.secure || (!!this.config.allowPlainAuth && !this.config.requireTls));
  }

  greeting(): SmtpReply {
    return Smtp.greeting(this.config.domain);
  }

  /** Whether the bytes that follow are message text rather than commands. */
  get expectingData(): boolean {
    return this.state === "data";
  }

  lineTooLong(): SmtpResult {
    // Also ends an AUTH exchange: the next line is a command again.
    this.sasl = null;
    return { replies: [Smtp.lineTooLong()] };
  }

  handleLine(line: string): SmtpResult {
    if (this.sasl) return this.saslStep(this.sasl.respond(line));
    const m = /^[ \t]*([A-Za-z]+)(?:[ \t]+(.*))?$/.exec(line);
    const verb = m?.[1]?.toUpperCase() ?? "";
    const arg = trimSp(m?.[2] ?? "");
    switch (verb) {
      case "HELO":
      case "EHLO":
        return this.hello(verb, arg);
      case "MAIL":
        return this.mail(arg);
      case "RCPT":
        return this.rcpt(arg);
      case "DATA":
        return this.data(arg);
      case "RSET":
        if (arg) return one(Smtp.syntax("RSET takes no arguments"));
        this.reset();
        return one(Smtp.resetOk());
      case "NOOP":
        return one(Smtp.noop());
      case "VRFY":
        if (this.tlsMissing) return one(Smtp.tlsRequired());
        return one(arg ? Smtp.cannotVerify() : Smtp.syntax("VRFY needs an argument"));
      case "EXPN":
        return one(Smtp.notImplemented());
      case "HELP":
        return one(Smtp.help());
      case "STARTTLS":
        return this.starttls(arg);
      case "AUTH":
        return this.authCmd(arg);
      case "QUIT":
        this.state = "closed";
        return { replies: [Smtp.closing(this.config.domain)], close: true };
      default:
        return one(Smtp.unknownCommand());
    }
  }

  private hello(verb: string, arg: string): SmtpResult {
    // One word of printable ASCII (RFC 5321 4.1.1.1; no SMTPUTF8 here).
    if (!arg || /[^\x21-\x7e]/.test(arg)) return one(Smtp.syntax(`${verb} needs exactly one domain or address literal`));
    // RFC 5321 4.5.3.1.2: a domain name is at most 255 octets.
    if (Buffer.byteLength(arg) > 255) return one(Smtp.syntax(`${verb} domain too long`));
    this.reset();
    this.helo = arg;
    if (verb === "HELO") return one(Smtp.helo(arg));
    // SMTPUTF8 (RFC 6531): without it, Postfix bounces mail with UTF-8 in its header lines, and
    // the bounce too (helper-60: a Subject "Grüße" sent through its sendmail was lost).
    const ext = ["PIPELINING", `SIZE ${this.config.maxMessageSize}`, "8BITMIME", "SMTPUTF8"];
    if (this.config.tls && !this.secure) ext.push("STARTTLS");
    if (this.authOffered) ext.push(`AUTH ${SASL_MECHANISMS.join(" ")}`);
    ext.push("HELP");
    return one(Smtp.ehlo(this.config.domain, arg, ext));
  }

  private starttls(arg: string): SmtpResult {
    // A command we know but do not offer here: 502 (RFC 5321 4.2.4), as Postfix and as AUTH.
    if (!this.config.tls) return one(Smtp.tlsNotAvailable());
    if (arg) return one(Smtp.syntax("STARTTLS takes no arguments"));
    if (this.secure) return one(Smtp.tlsActive());
    // RFC 3207 4.2 forgets the transaction at the handshake: refuse rather than drop it.
    if (this.from !== null) return one(Smtp.badSequence("MAIL transaction in progress"));
    return { replies: [Smtp.readyForTls()], startTls: true };
  }

  private authCmd(arg: string): SmtpResult {
    if (!this.authOffered) {
      if (this.auth && this.config.tls && !this.secure) return one(Smtp.encryptionRequired());
      return one(Smtp.authNotAvailable());
    }
    if (!this.helo) return one(Smtp.badSequence("send EHLO first"));
    if (this.authUser !== null) return one(Smtp.badSequence("already authenticated"));
    if (this.from !== null) return one(Smtp.badSequence("AUTH not permitted during a mail transaction"));
    const [mech = "", initial, extra] = arg.split(/[ \t]+/);
    if (!mech || extra !== undefined) return one(Smtp.syntax("expected AUTH mechanism [initial-response]"));
    const { exchange, step } = SaslExchange.start(mech, initial);
    this.sasl = exchange;
    return this.saslStep(step);
  }

  /** A step of the SASL exchange as SMTP replies; any but a challenge ends the exchange. */
  private saslStep(step: SaslStep): SmtpResult {
    if (step.kind !== "challenge") this.sasl = null;
    switch (step.kind) {
      case "challenge":
        return one(Smtp.authChallenge(step.base64));
      case "cancelled":
        return one(Smtp.authCancelled());
      case "badBase64":
        return one(Smtp.authBadBase64());
      case "unknownMech":
        return one(Smtp.authMechanism());
      case "creds":
        // A malformed PLAIN response counts as a failed login: it is how a guesser would probe.
        return { replies: [], login: step.creds ?? { user: "", password: "" } };
    }
  }

  /** Checks the credentials from a `login` result; a failure is slowed per client address. */
  async finishLogin(creds: Credentials): Promise<SmtpResult> {
    const user = creds.user ? await this.auth!.check(creds.user, creds.password) : null;
    if (user !== null && this.state !== "closed") {
      this.authUser = user;
      return { replies: [Smtp.authOk()], log: `authenticated ${user} from ${this.peer}` };
    }
    this.failedLogins++;
    const delayMs = this.auth!.throttle.failed(this.peer);
    const log = `failed AUTH for ${JSON.stringify(creds.user.slice(0, 64))} from ${this.peer}`;
    if (this.failedLogins >= this.auth!.throttle.config.maxFailuresPerConnection) {
      this.state = "closed";
      return { replies: [Smtp.authFailed(), Smtp.tooManyFailures(this.config.domain)], close: true, delayMs, log };
    }
    return { replies: [Smtp.authFailed()], delayMs, log };
  }

  /** RFC 3207 section 4: a server that requires TLS answers 530 to everything but a few commands. */
  private get tlsMissing(): boolean {
    return !!this.config.requireTls && !this.secure;
  }

  private mail(arg: string): SmtpResult {
    if (!this.helo) return one(Smtp.badSequence("send HELO or EHLO first"));
    if (this.tlsMissing) return one(Smtp.tlsRequired());
    if (this.config.requireAuth && this.authUser === null) return one(Smtp.authRequired());
    if (this.from !== null) return one(Smtp.badSequence("sender already given, RSET first"));
    const maxMessages = this.config.maxMessagesPerConnection;
    if (maxMessages !== undefined && this.messages >= maxMessages) {
      this.state = "closed";
      return { replies: [Smtp.tooManyMessages(this.config.domain)], close: true };
    }
    const m = /^FROM:(.*)$/i.exec(arg);
    // Nothing after the colon is no path at all (RFC 5321 4.1.2); the null sender is "<>".
    if (!m || trimSp(m[1]!) === "") return one(Smtp.syntax('expected "MAIL FROM:<address>" (<> for none)'));
    const path = parsePath(m[1]!);
    if ("error" in path) return one(Smtp.syntax(path.error));
    if (path.addr !== "" && !ADDRESS.test(path.addr) && !QUOTED_ADDRESS.test(path.addr)) return one(Smtp.syntax(`bad sender address "${path.addr}"`));
    // The null sender (bounces, vacation replies, MDNs) is nobody's to own.
    if (this.authUser !== null && path.addr !== "" && !this.owns(this.authUser, path.addr)) return one(Smtp.senderNotOwned(path.addr));
    const seen = new Set<string>();
    for (const p of path.params) {
      const eq = p.indexOf("=");
      const key = (eq < 0 ? p : p.slice(0, eq)).toUpperCase();
      const value = eq < 0 ? "" : p.slice(eq + 1);
      if (seen.has(key)) return one(Smtp.syntax(`${key} given twice`));
      seen.add(key);
      switch (key) {
        case "SIZE":
          if (!/^\d+$/.test(value)) return one(Smtp.syntax("SIZE needs a number"));
          if (Number(value) > this.config.maxMessageSize) return one(Smtp.tooBig());
          break;
        case "BODY":
          if (!/^(7BIT|8BITMIME)$/i.test(value)) return one(Smtp.syntax("BODY must be 7BIT or 8BITMIME"));
          break;
        case "SMTPUTF8":
          if (eq >= 0) return one(Smtp.syntax("SMTPUTF8 takes no value"));
          break;
        case "AUTH":
          // RFC 4954 section 5: the original submitter, as a relay passes it on. Nothing to
          // relay here, so it is accepted and not used (also where AUTH is not offered: refusing
          // a harmless parameter would only fail a relay's mail).
          break;
        default:
          return one(Smtp.paramNotImplemented(p));
      }
    }
    if (!seen.has("SMTPUTF8") && !isAscii(path.addr)) return one(Smtp.utf8Required());
    this.from = path.addr;
    this.utf8 = seen.has("SMTPUTF8");
    return one(Smtp.senderOk(path.addr));
  }

  /** An authenticated user sends as themselves: the local part names them (any domain of ours). */
  private owns(user: string, quoted: string): boolean {
    const addr = unquoted(quoted);
    const at = addr.lastIndexOf("@");
    return at > 0 && this.users.resolve(addr.slice(0, at)) === user;
  }

  private rcpt(arg: string): SmtpResult {
    if (this.tlsMissing) return one(Smtp.tlsRequired());
    if (this.from === null) return one(Smtp.badSequence("need MAIL before RCPT"));
    const m = /^TO:(.*)$/i.exec(arg);
    if (!m) return one(Smtp.syntax('expected "RCPT TO:<address>"'));
    const path = parsePath(m[1]!);
    if ("error" in path) return one(Smtp.syntax(path.error));
    if (path.params.length) return one(Smtp.paramNotImplemented(path.params[0]!));
    if (!this.utf8 && !isAscii(path.addr)) return one(Smtp.utf8Required());
    this.rcptAttempted = true;
    const addr = unquoted(path.addr);
    // A bare user name (no domain) is local, as Postfix's append_at_myorigin makes it.
    const bare = !addr.includes("@") && isSafeUserName(addr);
    if (addr === "") return one(Smtp.syntax("empty recipient address"));
    // Anything else that is not a deliverable address ("../x", "/", NUL, ...) is simply
    // not one of our users: 550, as the assignment and issue ask.
    if (!bare && !ADDRESS.test(addr)) return one(Smtp.noSuchUser());
    if (this.rcptCount >= this.config.maxRecipients) return one(Smtp.tooManyRecipients());
    const at = addr.lastIndexOf("@");
    const local = bare ? addr : addr.slice(0, at);
    const domains = this.config.localDomains;
    // Our domains are ASCII: Unicode case folding would take "\u212Aexample.org" for kexample.org.
    const domain = addr.slice(at + 1);
    if (!bare && domains && !(isAscii(domain) && domains.includes(domain.toLowerCase().replace(/\.$/, "")))) return one(Smtp.relayDenied(addr));
    // User names are ASCII: Unicode case folding would take the Kelvin sign for a k.
    const user = isAscii(local) ? this.users.resolve(local) : null;
    if (!user) return one(isAscii(local) && this.users.recentlyRemoved?.(local) ? Smtp.mailboxUnavailable(local) : Smtp.noSuchUser());
    const why = this.recipients.includes(user) ? null : this.store.unavailable?.(user);
    if (why) return { replies: [Smtp.mailboxUnavailable(user)], log: `recipient ${user} deferred (450): ${why}` };
    this.rcptCount++;
    if (!this.recipients.includes(user)) {
      this.recipients.push(user);
      this.rcptAddresses.push(path.addr);
    }
    return one(Smtp.recipientOk(user));
  }

  private data(arg: string): SmtpResult {
    if (this.tlsMissing) return one(Smtp.tlsRequired());
    if (arg) return one(Smtp.syntax("DATA takes no arguments"));
    if (this.from === null) return one(Smtp.badSequence("need MAIL before DATA"));
    if (this.recipients.length === 0)
      return one(this.rcptAttempted ? Smtp.noValidRecipients() : Smtp.badSequence("need RCPT before DATA"));
    this.state = "data";
    return one(Smtp.startData());
  }

  /** The message text after 354, up to the final "."; resolves once it is stored. */
  async handleMessage(msg: MessageEvent): Promise<SmtpResult> {
    if (this.state !== "data") throw new Error("handleMessage outside DATA");
    const from = this.from!;
    const users = this.recipients;
    const envelope = { sender: from, recipients: this.rcptAddresses };
    this.reset();
    if (msg.tooBig) return one(Smtp.tooBig());
    if (msg.noRoom) return { replies: [Smtp.storageFull()], log: `message from <${from}> refused: DATA memory budget full, peer=${this.peer}` };
    let record: Buffer;
    try {
      record = await buildRecordYielding(msg.bytes, receivedLine((this.config.now ?? (() => new Date()))()), { room: msg.room, charge: msg.charge, envelope, lfStart: msg.lfStart });
    } catch (e) {
      if (!(e instanceof NoRoomForRecord)) throw e;
      return { replies: [Smtp.storageFull()], log: `message from <${from}> refused: DATA memory budget full for its stored copy, peer=${this.peer}` };
    }
    try {
      await this.store.deliver(users, record);
    } catch {
      return one(Smtp.localError());
    }
    this.messages++;
    return {
      replies: [Smtp.accepted()],
      log: `delivered from=<${from}> to=${users.join(",")} size=${record.length} peer=${this.peer}`,
    };
  }

  private reset(): void {
    this.state = this.state === "closed" ? "closed" : "command";
    this.from = null;
    this.utf8 = false;
    this.recipients = [];
    this.rcptAddresses = [];
    this.rcptCount = 0;
    this.rcptAttempted = false;
  }
}

const isAscii = (s: string): boolean => !/[^\x00-\x7f]/.test(s);

function one(reply: SmtpReply): SmtpResult {
  return { replies: [reply] };
}
