// Wires SmtpSession to the shared socket adapter. Kept apart from smtpmail.ts so tests and
// benchmarks can start the same server in-process with another MailStore.
import { MAX_SASL_LINE, maskAuth } from "./auth.ts";
import { DataBudget, type LineReader } from "./lines.ts";
import { RECORD_ROOM } from "./mailbox.ts";
import type { MailStore } from "./mail-store.ts";
import { formatSmtpReply, Smtp, type SmtpReply } from "./reply.ts";
import { MailServer, type Handler, type ListenOptions, type Output } from "./server.ts";
import { SmtpSession, type Authenticator, type Directory, type SmtpConfig, type SmtpResult } from "./smtp-session.ts";

export const MAX_COMMAND_LINE = 512; // RFC 5321 4.5.3.1.4, CRLF included

export interface SmtpServerOptions extends SmtpConfig, ListenOptions {
  /** Memory for messages received and not yet stored, all connections together (default: 512 MiB, at least 4 messages of the size limit). */
  dataMemoryLimit?: number;
}

const text = (replies: SmtpReply[]) => replies.map(formatSmtpReply).join("");

function toOutput(session: SmtpSession, r: SmtpResult): Output | Promise<Output> {
  if (r.login) return session.finishLogin(r.login).then((done) => toOutput(session, done));
  return { text: text(r.replies), close: r.close, log: r.log, delayMs: r.delayMs, startTls: r.startTls };
}

export function createSmtpServer(opt: SmtpServerOptions, users: Directory, store: MailStore, auth: Authenticator | null = null): MailServer {
  const config: SmtpConfig = { ...opt, tls: !!opt.tlsFiles };
  const budget = new DataBudget(opt.dataMemoryLimit ?? Math.max(512 << 20, 4 * opt.maxMessageSize));
  return new MailServer({
    ...opt,
    name: "smtpmail",
    tooManyFromAddressText: formatSmtpReply(Smtp.tooManyFromAddress(opt.domain)),
    tooManyText: formatSmtpReply(Smtp.tooManyConnections(opt.domain)),
    create(peer, trace, secure): Handler {
      const session = new SmtpSession(config, users, store, peer, auth, secure);
      let reading: LineReader | null = null;
      return {
        open: () => ({ text: formatSmtpReply(session.greeting()) }),
        next(reader: LineReader): Output | Promise<Output> | null {
          if (session.expectingData) {
            reading = reader;
            const msg = reader.nextMessage(opt.maxMessageSize, budget, RECORD_ROOM);
            if (!msg) return null;
            if (trace) {
              const lines = msg.bytes.toString("utf8").split("\r\n").slice(0, -1);
              for (const l of lines.slice(0, 100)) trace(l);
              if (lines.length > 100) trace(`... (${lines.length - 100} more lines)`);
              trace(".");
            }
            return session.handleMessage(msg).then(
              (r) => {
                budget.release(msg.charged);
                return { text: text(r.replies), close: r.close, log: r.log };
              },
              (e) => {
                budget.release(msg.charged);
                throw e;
              },
            );
          }
          const ev = reader.nextLine(session.expectingAuthResponse ? MAX_SASL_LINE : MAX_COMMAND_LINE);
          if (!ev) return null;
          if (ev.kind === "too-long") {
            trace?.("<line too long>");
            return { text: text(session.lineTooLong().replies) };
          }
          trace?.(maskAuth(ev.text, session.expectingAuthResponse));
          return toOutput(session, session.handleLine(ev.text));
        },
        timeoutText: () => formatSmtpReply(Smtp.timeout(opt.domain)),
        shutdownText: () => formatSmtpReply(Smtp.shuttingDown(opt.domain)),
        errorText: () => formatSmtpReply(Smtp.localError()),
        // A client gone in the middle of DATA gives its share of the budget back.
        closed: () => reading?.dropData(),
        secured: () => session.tlsStarted(),
      };
    },
  });
}
