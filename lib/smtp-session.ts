// The SMTP receiver as a plain state machine (sans-IO): command lines and message text go
// in, replies come out. It knows nothing of sockets or files: recipients are resolved
// through a Directory and messages handed to a MailStore, both injected.
import type { MessageEvent } from "./lines.ts";
import { buildRecord, receivedLine } from "./mailbox.ts";
import type { MailStore } from "./mail-store.ts";
import { Smtp, type SmtpReply } from "./reply.ts";

export interface SmtpConfig {
  domain: string;
  maxMessageSize: number;
  maxRecipients: number;
  now?: () => Date;
}

export interface Directory {
  /** The listed user an address's local part delivers to, or null. */
  resolve(localPart: string): string | null;
}

export interface SmtpResult {
  replies: SmtpReply[];
  /** Close the connection after sending the replies. */
  close?: boolean;
  /** One line for the server log (deliveries). */
  log?: string;
}

type State = "command" | "data" | "closed";

const MAX_ADDRESS = 320;
// Local part and domain without spaces, brackets or control characters.
const ADDRESS = /^[^\s<>()\[\]\\,;:@\x00-\x1f\x7f]+@[^\s<>()\\,;:@\x00-\x1f\x7f]+$/;

export function parsePath(arg: string): { addr: string; params: string[] } | { error: string } {
  let s = arg.trim();
  let addr: string;
  let rest: string;
  if (s.startsWith("<")) {
    const close = s.indexOf(">");
    if (close < 0) return { error: "missing '>'" };
    addr = s.slice(1, close);
    rest = s.slice(close + 1);
  } else {
    const sp = s.search(/\s/);
    addr = sp < 0 ? s : s.slice(0, sp);
    rest = sp < 0 ? "" : s.slice(sp);
  }
  // A source route ("@a,@b:user@c", RFC 5321 appendix C) is ignored, as the RFC allows.
  if (addr.startsWith("@") && addr.includes(":")) addr = addr.slice(addr.indexOf(":") + 1);
  if (addr.length > MAX_ADDRESS) return { error: "address too long" };
  return { addr, params: rest.trim() ? rest.trim().split(/\s+/) : [] };
}

export class SmtpSession {
  state: State = "command";
  private helo: string | null = null;
  private from: string | null = null;
  private recipients: string[] = []; // user names, each once
  private rcptCount = 0;
  private rcptAttempted = false;

  constructor(
    private readonly config: SmtpConfig,
    private readonly users: Directory,
    private readonly store: MailStore,
    private readonly peer = "unknown",
  ) {}

  greeting(): SmtpReply {
    return Smtp.greeting(this.config.domain);
  }

  /** Whether the bytes that follow are message text rather than commands. */
  get expectingData(): boolean {
    return this.state === "data";
  }

  lineTooLong(): SmtpResult {
    return { replies: [Smtp.lineTooLong()] };
  }

  handleLine(line: string): SmtpResult {
    const m = /^\s*([A-Za-z]+)(?:\s+(.*))?$/.exec(line);
    const verb = m?.[1]?.toUpperCase() ?? "";
    const arg = (m?.[2] ?? "").trim();
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
        return one(arg ? Smtp.cannotVerify() : Smtp.syntax("VRFY needs an argument"));
      case "EXPN":
        return one(Smtp.notImplemented());
      case "HELP":
        return one(Smtp.help());
      case "QUIT":
        this.state = "closed";
        return { replies: [Smtp.closing(this.config.domain)], close: true };
      default:
        return one(Smtp.unknownCommand());
    }
  }

  private hello(verb: string, arg: string): SmtpResult {
    if (!arg || /\s/.test(arg)) return one(Smtp.syntax(`${verb} needs exactly one domain or address literal`));
    this.reset();
    this.helo = arg;
    if (verb === "HELO") return one(Smtp.helo(arg));
    return one(Smtp.ehlo(this.config.domain, arg, ["PIPELINING", `SIZE ${this.config.maxMessageSize}`, "8BITMIME", "HELP"]));
  }

  private mail(arg: string): SmtpResult {
    if (!this.helo) return one(Smtp.badSequence("send HELO or EHLO first"));
    if (this.from !== null) return one(Smtp.badSequence("sender already given, RSET first"));
    const m = /^FROM:(.*)$/i.exec(arg);
    if (!m) return one(Smtp.syntax('expected "MAIL FROM:<address>"'));
    const path = parsePath(m[1]!);
    if ("error" in path) return one(Smtp.syntax(path.error));
    if (path.addr !== "" && !ADDRESS.test(path.addr)) return one(Smtp.syntax(`bad sender address "${path.addr}"`));
    for (const p of path.params) {
      const [key, value = ""] = p.split("=", 2) as [string, string?];
      switch (key.toUpperCase()) {
        case "SIZE":
          if (!/^\d+$/.test(value)) return one(Smtp.syntax("SIZE needs a number"));
          if (Number(value) > this.config.maxMessageSize) return one(Smtp.tooBig());
          break;
        case "BODY":
          if (!/^(7BIT|8BITMIME)$/i.test(value)) return one(Smtp.syntax("BODY must be 7BIT or 8BITMIME"));
          break;
        default:
          return one(Smtp.paramNotImplemented(p));
      }
    }
    this.from = path.addr;
    return one(Smtp.senderOk(path.addr));
  }

  private rcpt(arg: string): SmtpResult {
    if (this.from === null) return one(Smtp.badSequence("need MAIL before RCPT"));
    const m = /^TO:(.*)$/i.exec(arg);
    if (!m) return one(Smtp.syntax('expected "RCPT TO:<address>"'));
    const path = parsePath(m[1]!);
    if ("error" in path) return one(Smtp.syntax(path.error));
    if (path.params.length) return one(Smtp.paramNotImplemented(path.params[0]!));
    this.rcptAttempted = true;
    const isPostmaster = /^postmaster$/i.test(path.addr);
    if (path.addr === "") return one(Smtp.syntax("empty recipient address"));
    // Anything else that is not a deliverable address ("../x", "/", NUL, ...) is simply
    // not one of our users: 550, as the assignment and issue ask.
    if (!isPostmaster && !ADDRESS.test(path.addr)) return one(Smtp.noSuchUser());
    if (this.rcptCount >= this.config.maxRecipients) return one(Smtp.tooManyRecipients());
    const local = isPostmaster ? path.addr : path.addr.slice(0, path.addr.lastIndexOf("@"));
    const user = this.users.resolve(local);
    if (!user) return one(Smtp.noSuchUser());
    this.rcptCount++;
    if (!this.recipients.includes(user)) this.recipients.push(user);
    return one(Smtp.recipientOk(user));
  }

  private data(arg: string): SmtpResult {
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
    const from = this.from;
    const users = this.recipients;
    this.reset();
    if (msg.tooBig) return one(Smtp.tooBig());
    const record = buildRecord(msg.bytes, receivedLine((this.config.now ?? (() => new Date()))()));
    try {
      await this.store.deliver(users, record);
    } catch {
      return one(Smtp.localError());
    }
    return {
      replies: [Smtp.accepted()],
      log: `delivered from=<${from}> to=${users.join(",")} size=${record.length} peer=${this.peer}`,
    };
  }

  private reset(): void {
    this.state = this.state === "closed" ? "closed" : "command";
    this.from = null;
    this.recipients = [];
    this.rcptCount = 0;
    this.rcptAttempted = false;
  }
}

function one(reply: SmtpReply): SmtpResult {
  return { replies: [reply] };
}
