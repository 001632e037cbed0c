// Wires SmtpSession to the shared socket adapter. Kept apart from smtpmail.ts so tests and
// benchmarks can start the same server in-process with another MailStore.
import type { LineReader } from "./lines.ts";
import type { MailStore } from "./mail-store.ts";
import { formatSmtpReply, Smtp, type SmtpReply } from "./reply.ts";
import { MailServer, type Handler, type Output } from "./server.ts";
import { SmtpSession, type Directory, type SmtpConfig } from "./smtp-session.ts";

export const MAX_COMMAND_LINE = 512; // RFC 5321 4.5.3.1.4, CRLF included

export interface SmtpServerOptions extends SmtpConfig {
  host: string;
  port: number;
  maxConnections: number;
  idleTimeoutMs: number;
  verbose: boolean;
  quiet?: boolean;
  log: (line: string) => void;
}

const text = (replies: SmtpReply[]) => replies.map(formatSmtpReply).join("");

export function createSmtpServer(opt: SmtpServerOptions, users: Directory, store: MailStore): MailServer {
  return new MailServer({
    name: "smtpmail",
    host: opt.host,
    port: opt.port,
    maxConnections: opt.maxConnections,
    idleTimeoutMs: opt.idleTimeoutMs,
    verbose: opt.verbose,
    quiet: opt.quiet,
    log: opt.log,
    tooManyText: formatSmtpReply(Smtp.tooManyConnections(opt.domain)),
    create(peer, trace): Handler {
      const session = new SmtpSession(opt, users, store, peer);
      return {
        open: () => ({ text: formatSmtpReply(session.greeting()) }),
        next(reader: LineReader): Output | Promise<Output> | null {
          if (session.expectingData) {
            const msg = reader.nextMessage(opt.maxMessageSize);
            if (!msg) return null;
            if (trace) {
              const lines = msg.bytes.toString("utf8").split("\r\n").slice(0, -1);
              for (const l of lines.slice(0, 100)) trace(l);
              if (lines.length > 100) trace(`... (${lines.length - 100} more lines)`);
              trace(".");
            }
            return session.handleMessage(msg).then((r) => ({ text: text(r.replies), close: r.close, log: r.log }));
          }
          const ev = reader.nextLine(MAX_COMMAND_LINE);
          if (!ev) return null;
          if (ev.kind === "too-long") {
            trace?.("<line too long>");
            return { text: text(session.lineTooLong().replies) };
          }
          trace?.(ev.text);
          const r = session.handleLine(ev.text);
          return { text: text(r.replies), close: r.close };
        },
        timeoutText: () => formatSmtpReply(Smtp.timeout(opt.domain)),
        shutdownText: () => formatSmtpReply(Smtp.shuttingDown(opt.domain)),
        errorText: () => formatSmtpReply(Smtp.localError()),
        closed() {},
      };
    },
  });
}
