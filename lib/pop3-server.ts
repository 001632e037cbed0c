// Wires Pop3Session to the shared socket adapter, with user.txt and the mailbox files as
// its store. Kept apart from popserver.ts so tests and benchmarks can start it in-process.
import type { LineReader } from "./lines.ts";
import { FileMaildrop, MaildropUnavailable } from "./maildrop.ts";
import { IndexCache } from "./index-cache.ts";
import { formatPopReply, Pop } from "./reply.ts";
import { MailServer, type Handler, type ListenOptions, type Output } from "./server.ts";
import { HeldFiles } from "./descriptors.ts";
import { MAX_SASL_LINE, type LoginThrottle } from "./auth.ts";
import { Pop3Session, type PopResult, type PopStore } from "./pop3-session.ts";
import type { Users } from "./users.ts";

const GC_EVERY_COMMANDS = 500;
/** All sessions' commands together: many medium sessions (each under GC_EVERY_COMMANDS commands) still get collections. */
const GC_EVERY_ALL_COMMANDS = 10_000;

/**
 * Collections paced over one server's sessions: commands leave short-lived objects faster than
 * the collector returns memory, but a full collection costs 3-4 ms (an asynchronous one ~0.6 ms).
 * Figures: README, Benchmarks, "popserver's collections".
 */
class GcPacer {
  private commands = 0;

  /** One command: `sessionCommands` of its session so far. */
  command(sessionCommands: number): void {
    this.commands++;
    if (this.commands % GC_EVERY_ALL_COMMANDS === 0) Bun.gc(true);
    else if (sessionCommands % GC_EVERY_COMMANDS === 0) Bun.gc(false);
  }
}

export const MAX_POP_LINE = 512; // RFC 2449 allows 255 octets; be generous, never unbounded

export interface PopServerOptions extends ListenOptions {
  heldFiles?: HeldFiles;
  requireTls?: boolean;
  throttle?: LoginThrottle;
}

/** `held`: counts the open maildrops (a descriptor each) against the server's open-file bound. */
export function filePopStore(root: string, users: Users, warn: (m: string) => void, held = new HeldFiles()): PopStore {
  const cache = new IndexCache();
  return {
    findUser: (name) => users.account(name),
    // The same user USER found: user.txt may have changed in between, and a name found
    // ignoring case could now mean someone else.
    checkPassword: async (user, password) => (await users.check(user, password)) === user,
    open: async (user) => {
      if (!held.room()) throw new MaildropUnavailable("no descriptor left for another mailbox", "EMFILE", false);
      const drop = await FileMaildrop.open(root, user, warn, cache);
      held.count++;
      const release = drop.release.bind(drop);
      let holding = true;
      drop.release = () => {
        if (holding) {
          holding = false;
          held.count--;
        }
        release();
      };
      return drop;
    },
  };
}

function toOutput(r: PopResult): Output {
  const text = formatPopReply(r.reply);
  const { body, close, log } = r;
  if (r.startTls || r.delayMs) return { text, close, log, startTls: r.startTls, delayMs: r.delayMs };
  if (body === undefined) return { text, close, log };
  if (body instanceof Uint8Array) return { text, bytes: body, close, log };
  if (Symbol.asyncIterator in body) return { text, body, close, log };
  return { text, range: body, close, log };
}

/** One connection's handler: a class, so idle connections do not each hold seven closures (see smtp-server.ts). */
class PopHandler implements Handler {
  private commands = 0;

  constructor(
    private readonly session: Pop3Session,
    private readonly trace: ((line: string) => void) | undefined,
    private readonly gc: GcPacer,
  ) {}

  open(): Output {
    return { text: formatPopReply(this.session.greeting()) };
  }

  next(reader: LineReader): Output | Promise<Output> | null {
    const { session, trace } = this;
    const ev = reader.nextLine(session.expectingAuthResponse ? MAX_SASL_LINE : MAX_POP_LINE);
    if (!ev) return null;
    if (ev.kind === "too-long") return toOutput(session.lineTooLong());
    // Passwords stay out of the log: PASS, AUTH's initial response, SASL responses.
    if (trace) trace(session.logForm(ev.text));
    this.gc.command(++this.commands);
    const r = session.handleLine(ev.text);
    return r instanceof Promise ? r.then(toOutput) : toOutput(r);
  }

  // RFC 1939: an autologout does not enter UPDATE, so nothing is deleted.
  timeoutText(): string {
    return formatPopReply(Pop.timeout());
  }

  shutdownText(): string {
    return formatPopReply(Pop.shuttingDown());
  }

  errorText(): string {
    return formatPopReply(Pop.internalError());
  }

  closed(): void {
    this.session.closed();
  }

  secured(): void {
    this.session.tlsStarted();
  }
}

export function createPopServer(opt: PopServerOptions, store: PopStore): MailServer {
  const gc = new GcPacer();
  return new MailServer({
    ...opt,
    name: "popserver",
    tooManyFromAddressText: formatPopReply(Pop.tooManyFromAddress()),
    tooManyText: formatPopReply(Pop.tooManyConnections()),
    create: (peer, trace, secure): Handler =>
      new PopHandler(new Pop3Session(store, peer, { tls: !!opt.tlsFiles, secure, requireTls: opt.requireTls, throttle: opt.throttle }), trace, gc),
  });
}
