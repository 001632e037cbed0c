// Wires SmtpSession to the shared socket adapter. Kept apart from smtpmail.ts so tests and
// benchmarks can start the same server in-process with another MailStore.
import { MAX_SASL_LINE, maskAuth } from "./auth.ts";
import { DataBudget, type LineReader } from "./lines.ts";
import { RECORD_ROOM } from "./mailbox.ts";
import type { MailStore } from "./mail-store.ts";
import { formatSmtpReply, Smtp, type SmtpReply } from "./reply.ts";
import { MailServer, type Handler, type ListenOptions, type Output } from "./server.ts";
import type { HeldFiles } from "./descriptors.ts";
import { SmtpSession, type Authenticator, type Directory, type SmtpConfig, type SmtpResult } from "./smtp-session.ts";

// RFC 5321 4.5.3.1.4: 512 octets, CRLF included, raised by each extension offered for MAIL:
// SIZE= by 26 (RFC 1870), AUTH= by 500 (RFC 4954 section 5). Checked for every command.
export const MAX_COMMAND_LINE = 512 + 26 + 500;

export interface SmtpServerOptions extends SmtpConfig, ListenOptions {
  /** Memory for messages received and not yet stored, all connections together (default: 512 MiB, at least 4 messages of the size limit). */
  dataMemoryLimit?: number;
  /** The store's mailbox descriptors past its share of the open-file limit: the sockets make room for them. */
  heldFiles?: HeldFiles;
}

const text = (replies: SmtpReply[]) => replies.map(formatSmtpReply).join("");

function toOutput(session: SmtpSession, r: SmtpResult): Output | Promise<Output> {
  if (r.login) return session.finishLogin(r.login).then((done) => toOutput(session, done));
  return { text: text(r.replies), close: r.close, log: r.log, delayMs: r.delayMs, startTls: r.startTls };
}

/** Messages from this size on count toward a forced collection (see released()). */
const LARGE_MESSAGE = 256 * 1024;

/** What every connection's handler shares: one object per server, not one per connection. */
interface Shared {
  opt: SmtpServerOptions;
  budget: DataBudget;
  /** Message bytes let go since the last collection asked for (see released()). */
  released: number;
  /** How many make one worth asking for. */
  gcAfter: number;
}

/**
 * Counts a message's bytes as let go, and asks for a collection once enough have been. The
 * budget counts the messages being received and stored, not the memory they leave once
 * done (the received chunks, the message and its record): the collector's own
 * schedule let that pile up, and 20 sessions sending 10 MB messages peaked at 557-702 MiB,
 * 170-239 MiB under a 64 MiB budget. A full collection (3-4 ms) every few messages of the
 * size limit is nothing beside receiving them.
 */
function released(shared: Shared, bytes: number): void {
  // Small messages' garbage is young and goes on the collector's own schedule; counted, they
  // forced a 3-4 ms stop of every session every 20,000 (about once a second at full load).
  if (bytes < LARGE_MESSAGE) return;
  shared.released += bytes;
  if (shared.released < shared.gcAfter) return;
  shared.released = 0;
  // Synchronous: an asynchronous one (Bun.gc(false)) left the peak at 462-485 MiB, against 327-373.
  Bun.gc(true);
}

/**
 * One connection's handler. A class rather than an object of seven closures and their scope:
 * an idle connection's JS heap went from 1402 to 1049 bytes (popserver's: 1386 to 1015).
 */
class SmtpHandler implements Handler {
  /** The reader, once a message has been started: a client gone mid-DATA gives its budget back. */
  private reading: LineReader | null = null;
  /** Whether the last command line ended with a bare LF (see LineReader.nextMessage). */
  private lfClient = false;

  constructor(
    private readonly shared: Shared,
    private readonly session: SmtpSession,
    private readonly trace: ((line: string) => void) | undefined,
  ) {}

  open(): Output {
    return { text: formatSmtpReply(this.session.greeting()) };
  }

  next(reader: LineReader): Output | Promise<Output> | null {
    const { session, trace } = this;
    const { opt, budget } = this.shared;
    if (session.expectingData) {
      this.reading = reader;
      const msg = reader.nextMessage(opt.maxMessageSize, budget, RECORD_ROOM, this.lfClient);
      if (!msg) return null;
      if (trace) {
        const lines = msg.bytes.toString("utf8").split("\r\n").slice(0, -1);
        for (const l of lines.slice(0, 100)) trace(l);
        if (lines.length > 100) trace(`... (${lines.length - 100} more lines)`);
        trace(".");
      }
      return session
        .handleMessage(msg)
        .finally(() => {
          budget.release(msg.charged);
          released(this.shared, msg.received + msg.charged);
        })
        .then((r) => ({ text: text(r.replies), close: r.close, log: r.log }));
    }
    const ev = reader.nextLine(session.expectingAuthResponse ? MAX_SASL_LINE : MAX_COMMAND_LINE);
    if (!ev) return null;
    this.lfClient = ev.kind === "line" && ev.bareLf;
    if (ev.kind === "too-long") {
      trace?.("<line too long>");
      return { text: text(session.lineTooLong().replies) };
    }
    trace?.(maskAuth(ev.text, session.expectingAuthResponse));
    return toOutput(session, session.handleLine(ev.text));
  }

  timeoutText(): string {
    return formatSmtpReply(Smtp.timeout(this.shared.opt.domain));
  }

  shutdownText(): string {
    return formatSmtpReply(Smtp.shuttingDown(this.shared.opt.domain));
  }

  midMessage(): boolean {
    return this.session.expectingData;
  }

  errorText(): string {
    return formatSmtpReply(Smtp.localError());
  }

  closed(): void {
    this.reading?.dropData();
  }

  secured(): void {
    this.session.tlsStarted();
  }
}

export function createSmtpServer(opt: SmtpServerOptions, users: Directory, store: MailStore, auth: Authenticator | null = null): MailServer {
  const config: SmtpConfig = { ...opt, tls: !!opt.tlsFiles };
  const budget = new DataBudget(opt.dataMemoryLimit ?? Math.max(512 << 20, 4 * opt.maxMessageSize));
  // A few messages of the size limit, at most an eighth of the budget (when it is set low).
  const gcAfter = Math.min(4 * opt.maxMessageSize, budget.limit / 8);
  const shared: Shared = { opt, budget, released: 0, gcAfter };
  return new MailServer({
    ...opt,
    name: "smtpmail",
    tooManyFromAddressText: formatSmtpReply(Smtp.tooManyFromAddress(opt.domain)),
    tooManyText: formatSmtpReply(Smtp.tooManyConnections(opt.domain)),
    create: (peer, trace, secure): Handler => new SmtpHandler(shared, new SmtpSession(config, users, store, peer, auth, secure), trace),
  });
}
