// Wires Pop3Session to the shared socket adapter, with user.txt and the mailbox files as
// its store. Kept apart from popserver.ts so tests and benchmarks can start it in-process.
import type { LineReader } from "./lines.ts";
import { FileMaildrop, MaildropUnavailable } from "./maildrop.ts";
import { IndexCache } from "./index-cache.ts";
import { formatPopReply, Pop } from "./reply.ts";
import { HeldFiles, MailServer, type Handler, type ListenOptions, type Output } from "./server.ts";
import { MAX_SASL_LINE, type LoginThrottle } from "./auth.ts";
import { Pop3Session, type PopResult, type PopStore } from "./pop3-session.ts";
import type { Users } from "./users.ts";

const GC_EVERY_COMMANDS = 500;
/** All sessions' commands together: many medium sessions (each under 1000 commands) still get collections. */
const GC_EVERY_ALL_COMMANDS = 10_000;
let allCommands = 0;
// A long listing leaves a string per message (100,000 for UIDL of 1 GiB): collected right
// after, but at most every 250 ms, so no client can make every command a collection.
const LISTING_GC_GAP_MS = 250;
let lastListingGc = -Infinity;

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
  /** The last command was a long listing: the next one collects its garbage. */
  private listed = false;
  private commands = 0;

  constructor(
    private readonly session: Pop3Session,
    private readonly trace: ((line: string) => void) | undefined,
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
    // Each command leaves a few short-lived objects. A client fetching 100,000 messages
    // one by one grows the heap faster than the collector's schedule returns memory;
    // collections every so many commands keep the footprint near the live size. On the
    // 1 GiB mailbox: peak RSS 64-66 MiB with a full one every 4000 commands, 60 with one
    // every 1000 and after long listings. But a full collection costs 3-4 ms even on a
    // small heap (14 % of popserver's CPU in a NOOP loop, 30 % of a pipelined RETR run),
    // so a session's every GC_EVERY_COMMANDS commands ask for an asynchronous one (Bun.gc(false): the
    // call takes 0.57-0.59 ms median inside popserver, against 2.8-3.5), and every 10,000
    // commands of all sessions together get a synchronous one: pipelined RETR went from
    // 93-124k to 153-198k msg/s on 10,000 messages, peak RSS 56 MiB as before and
    // 62.6-62.8 MiB on 1 GiB (asynchronous ones alone: 64.3). Counted per session, not
    // only over all, so a login load (short sessions) does not pay one every 200 logins.
    // Every 500 rather than 1000 (2026-12-02, 4th session): the 1 GiB run's peak, set while
    // RETRs are pipelined, 63.7-64.5 -> 62.8-63.3 MiB, at the same 147-153k msg/s.
    const now = performance.now();
    const commands = ++this.commands;
    allCommands++;
    if (this.listed && now - lastListingGc >= LISTING_GC_GAP_MS) {
      lastListingGc = now;
      Bun.gc(true);
    } else if (allCommands % GC_EVERY_ALL_COMMANDS === 0) Bun.gc(true);
    else if (commands % GC_EVERY_COMMANDS === 0) Bun.gc(false);
    const r = session.handleLine(ev.text);
    // A streamed body answering LIST or UIDL is a listing too long to send at once.
    const note = (r: PopResult) => {
      this.listed = !!r.listing && r.body !== undefined && !(r.body instanceof Uint8Array) && Symbol.asyncIterator in r.body;
      return toOutput(r);
    };
    return r instanceof Promise ? r.then(note) : note(r);
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
  return new MailServer({
    ...opt,
    name: "popserver",
    tooManyFromAddressText: formatPopReply(Pop.tooManyFromAddress()),
    tooManyText: formatPopReply(Pop.tooManyConnections()),
    create: (peer, trace, secure): Handler =>
      new PopHandler(new Pop3Session(store, peer, { tls: !!opt.tlsFiles, secure, requireTls: opt.requireTls, throttle: opt.throttle }), trace),
  });
}
