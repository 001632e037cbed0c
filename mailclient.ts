// mailclient: the Home machine's interactive client (assignment option 1 Manage Mail, 2 Send Mail,
// 3 Quit), sending through smtpmail with SMTP and reading through popserver with POP3.

import { hostname } from "node:os";
import pkg from "./package.json" with { type: "json" };
import { Pop3Client, Pop3Error } from "./lib/pop3-client.ts";
import { formatReply, sendMail } from "./lib/smtp-client.ts";
import {
  composeMessage,
  formatMailList,
  parseComposedMail,
  parseHeaders,
  receivedWhen,
  sanitizeForTerminal,
  decodeEncodedWords,
  senderAddress,
} from "./lib/mail-format.ts";
import { readableMail } from "./lib/mime.ts";
import { readKey, readLine, readPassword } from "./lib/terminal.ts";
import { readFileSync } from "node:fs";
import type { ClientTls, TlsMode } from "./lib/tls.ts";

const DEFAULT_SMTP_PORT = 2525;
const DEFAULT_POP3_PORT = 1100;
const USAGE = "usage: mailclient <server_IP> [smtp_port] [pop3_port]   (options: --tls | --starttls, --insecure, --cafile FILE)";
const HELP = `${USAGE}

Interactive mail client: sends mail through the SMTP server (smtpmail, default port
${DEFAULT_SMTP_PORT}) and reads and deletes mail through the POP3 server (popserver, default
port ${DEFAULT_POP3_PORT}) running on <server_IP> (an IP address or a host name).

Options:
  --tls          TLS from the first byte on both ports (the servers' --tls-port)
  --starttls     plain connect, then STARTTLS (SMTP) and STLS (POP3); refuse servers without them
  --insecure     accept any server certificate (self-signed test setups only)
  --cafile FILE  also trust the CA certificate(s) in FILE (PEM)
  -h, --help     show this help
  -V, --version  show the version

With --tls or --starttls the server certificate is verified against the name <server_IP>, and
the SMTP server's AUTH is used with your user name and password when it offers it. Without
them, mail is sent as the assignment describes and AUTH is used only if the server demands it.

Environment:
  MAILCLIENT_TIMEOUT_MS  how long to wait for a server before giving up (default 30000)`;

interface Config {
  host: string;
  smtpPort: number;
  pop3Port: number;
  timeoutMs: number;
  tlsMode: TlsMode;
  tls: ClientTls;
}

interface Session extends Config {
  user: string;
  password: string;
}

/** End of input at any prompt: unwinds to main, which exits cleanly. */
class EndOfInput extends Error {}

/**
 * Input that ended at the login after a refused password, or a server that wants TLS first:
 * main says "Not logged in." and exits 1.
 */
class NotLoggedIn extends EndOfInput {}

/** The answer read; at the end of input (null) throws an `End`. */
async function ask(read: Promise<string | null>, End: typeof EndOfInput = EndOfInput): Promise<string> {
  const answer = await read;
  if (answer === null) throw new End();
  return answer;
}

function say(text = ""): void {
  // Made harmless here, once: messages quote server replies and error texts, which may hold
  // escape sequences as a mail can.
  process.stdout.write(sanitizeForTerminal(text) + "\n");
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function parsePort(text: string): number | null {
  if (!/^\d{1,5}$/.test(text)) return null;
  const port = Number(text);
  return port >= 1 && port <= 65535 ? port : null;
}

type Parsed = { config: Config } | { exit: number; out?: string; err?: string };

export function parseArgs(args: string[]): Parsed {
  if (args.includes("-h") || args.includes("--help")) return { exit: 0, out: HELP };
  if (args.includes("-V") || args.includes("--version")) return { exit: 0, out: `mailclient ${pkg.version}` };
  const bad = (why: string): Parsed => ({ exit: 2, err: `mailclient: ${why}\n${USAGE}` });
  let tlsMode: TlsMode = "none";
  let insecure = false;
  let ca: string | undefined;
  const rest: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === "--tls" || a === "--starttls") {
      const mode = a === "--tls" ? "implicit" : "starttls";
      if (tlsMode !== "none" && tlsMode !== mode) return bad("--tls and --starttls exclude each other");
      tlsMode = mode;
    } else if (a === "--insecure") insecure = true;
    else if (a === "--cafile") {
      const file = args[++i];
      if (file === undefined) return bad("--cafile needs a file");
      try {
        ca = readFileSync(file, "utf8");
      } catch (e) {
        return bad(`cannot read --cafile ${file}: ${errorText(e)}`);
      }
    } else rest.push(a);
  }
  args = rest;
  const option = args.find((a) => a.startsWith("-"));
  if (option !== undefined) return bad(`unknown option ${option}`);
  if (args.length < 1) return bad("missing server_IP");
  if (args.length > 3) return bad("too many arguments");
  const [host, smtp, pop3] = args as [string, string?, string?];
  if (host === "" || /\s/.test(host)) return bad(`bad server address ${JSON.stringify(host)}`);
  const smtpPort = smtp === undefined ? DEFAULT_SMTP_PORT : parsePort(smtp);
  if (smtpPort === null) return bad(`bad smtp_port ${JSON.stringify(smtp)}`);
  const pop3Port = pop3 === undefined ? DEFAULT_POP3_PORT : parsePort(pop3);
  if (pop3Port === null) return bad(`bad pop3_port ${JSON.stringify(pop3)}`);
  // A timer takes 1 ms to 2^31 - 1 ms; anything else (negative, huge, not a number) made Bun
  // warn on every request and wait 1 ms (helper-64): the default then.
  const wanted = Number(process.env.MAILCLIENT_TIMEOUT_MS);
  const timeoutMs = Number.isInteger(wanted) && wanted >= 1 && wanted < 2 ** 31 ? wanted : 30_000;
  return { config: { host, smtpPort, pop3Port, timeoutMs, tlsMode, tls: { serverName: host, insecure, ca } } };
}

async function openPop3(s: Session): Promise<Pop3Client> {
  const pop = await Pop3Client.connect(s.host, s.pop3Port, { timeoutMs: s.timeoutMs, tls: s.tlsMode === "implicit" ? s.tls : undefined });
  try {
    if (s.tlsMode === "starttls") await pop.stls(s.tls);
    await pop.login(s.user, s.password);
    return pop;
  } catch (err) {
    await pop.quit().catch(() => {});
    throw err;
  }
}

async function login(config: Config): Promise<Session> {
  // Once a password has been refused, input that ends leaves the user not logged in.
  let ended: typeof EndOfInput = EndOfInput;
  for (;;) {
    const user = (await ask(readLine("Username: "), ended)).trim();
    if (user === "" || /\s/.test(user)) {
      say("The username is one word; please try again.");
      continue;
    }
    const password = await ask(readPassword("Password: "), ended);
    const session = { ...config, user, password };
    // A server that does not answer costs the whole timeout (10 s and more): said, not silent.
    const slow = setTimeout(() => say(`Checking the password with the POP3 server at ${config.host} port ${config.pop3Port}...`), 1000);
    try {
      const pop = await openPop3(session);
      await pop.quit().catch(() => {});
      say(`Logged in as ${user}.`);
      return session;
    } catch (err) {
      // The password was right; the mailbox is open in another POP3 session just now.
      if (err instanceof Pop3Error && err.command === "PASS" && /^\[IN-USE\]/.test(err.text)) {
        say(`Logged in as ${user} (the mailbox is in use by another session right now: ${err.text}).`);
        return session;
      }
      if (err instanceof Pop3Error && config.tlsMode === "none" && /\bTLS\b|\bSTLS\b/.test(err.text)) {
        // Asking again would not help: the server wants TLS first (helper-27).
        say(`Cannot log in: the POP3 server requires TLS (it said: ${err.text}). Start mailclient with --starttls or --tls.`);
        throw new NotLoggedIn();
      }
      if (wrongPassword(err)) {
        ended = NotLoggedIn;
        say(`Login failed: wrong username or password (server said: ${err.text || "-ERR"}). Please try again.`);
        continue;
      }
      const why = errorText(err);
      say(
        err instanceof Pop3Error
          ? `Cannot check the password: ${err.command === "STLS" ? noStls(err) : `the POP3 server said -ERR ${err.text}`}; continuing.`
          : /\bTLS\b|certificate/i.test(why)
            ? `Cannot check the password: no trusted TLS connection to the POP3 server (${why}); continuing.`
            : `Cannot check the password: POP3 server unreachable (${why}); continuing. (Servers on other ports: mailclient <server_IP> <smtp_port> <pop3_port>)`,
      );
      return session;
    } finally {
      clearTimeout(slow);
    }
  }
}

/** --starttls against a POP3 server without STLS: said as such, not as "unknown command". */
function noStls(err: Pop3Error): string {
  return `the POP3 server does not offer STLS (it said: -ERR ${err.text})`;
}

/**
 * USER or PASS refused for the credentials: [AUTH], or no response code at all (RFC 2449). Not
 * [IN-USE] or [SYS/TEMP] / [SYS/PERM]: those come after a right password, from a mailbox that
 * cannot be opened (just now, or until an administrator steps in).
 */
function wrongPassword(err: unknown): err is Pop3Error {
  return err instanceof Pop3Error && (err.command === "USER" || err.command === "PASS") && (/^\[AUTH\]/i.test(err.text) || !/^\[/.test(err.text));
}

async function sendMailOption(s: Session): Promise<void> {
  say('Enter the mail: From:, To:, Subject: lines, then the body; end with a line holding only ".".');
  const lines: string[] = [];
  for (;;) {
    let line: string;
    try {
      line = await ask(readLine());
    } catch (err) {
      if (err instanceof EndOfInput && lines.length) say('Mail not sent: the input ended before the line with only ".".');
      throw err;
    }
    if (line === ".") break;
    lines.push(line);
  }
  const mail = parseComposedMail(lines);
  if (!mail.ok) {
    // The assignment's words on a line of their own; why, on the next.
    say("Incorrect format");
    say(`(${mail.reason})`);
    return;
  }
  try {
    const result = await sendMail({
      host: s.host,
      port: s.smtpPort,
      timeoutMs: s.timeoutMs,
      helo: hostname() || "localhost",
      from: mail.from,
      to: [mail.to],
      message: composeMessage(lines),
      tls: s.tlsMode === "implicit" ? s.tls : undefined,
      starttls: s.tlsMode === "starttls" ? s.tls : undefined,
      auth: { user: s.user, password: s.password },
    });
    say(result.ok ? "Mail sent successfully" : `Error in sending mail: ${formatReply(result.reply)}`);
  } catch (err) {
    say(`Error in sending mail: ${errorText(err)}`);
  }
}

interface Entry {
  /** The message number on the server; the displayed number is the position in the list. */
  msgNo: number;
  /** UIDL's unique-id, if the server has UIDL: finds the mail again in a later session. */
  uid: string | null;
  from: string;
  when: string;
  subject: string;
}

async function loadList(pop: Pop3Client): Promise<Entry[]> {
  let caps: string[] = [];
  let capa = true;
  try {
    caps = (await pop.capa()).map((c) => c.trim().toUpperCase());
  } catch (err) {
    if (!(err instanceof Pop3Error)) throw err;
    capa = false;
  }
  // An RFC 1939-only server (no CAPA) may still have TOP, its optional command: tried, and
  // RETR once it is refused, rather than every mail fetched whole for its header (helper-94).
  let tryTop = !capa || caps.includes("TOP");
  const topOrRetr = (n: number) =>
    pop.top(n, 0).catch((err) => {
      if (!(err instanceof Pop3Error)) throw err;
      if (!capa) tryTop = false;
      return pop.retr(n);
    });
  // A mail the server will not give (-ERR to TOP and RETR) is listed without its header lines
  // rather than stopping the list of all the others (helper-64); reading it shows the -ERR.
  const head = (n: number) => (tryTop ? topOrRetr(n) : pop.retr(n)).catch((err) => (err instanceof Pop3Error ? "" : Promise.reject(err)));
  // With PIPELINING (RFC 2449) a window of requests is in flight at once, so a long mailbox
  // costs a few round trips instead of one per mail; the window bounds what is buffered.
  const window = caps.includes("PIPELINING") ? 64 : 1;
  const listing = await pop.list();
  // UIDL is optional too: tried without CAPA, none if refused.
  const uids = !capa || caps.includes("UIDL")
    ? await pop.uidl().then(
        (list) => new Map(list.map((u) => [u.n, u.uid])),
        (err) => (err instanceof Pop3Error ? null : Promise.reject(err)),
      )
    : null;
  const entries: Entry[] = [];
  for (let i = 0; i < listing.length; i += window) {
    const batch = listing.slice(i, i + window);
    const heads = await Promise.all(batch.map(({ n }) => head(n)));
    batch.forEach(({ n }, j) => {
      const h = parseHeaders(heads[j]!);
      entries.push({ msgNo: n, uid: uids?.get(n) ?? null, from: senderAddress(h.from), when: receivedWhen(h), subject: decodeEncodedWords(h.subject) });
    });
  }
  return entries;
}

function showList(entries: Entry[]): void {
  say();
  if (entries.length === 0) {
    say("No mails.");
    return;
  }
  const rows = entries.map((e, i) => ({ no: i + 1, from: e.from, when: e.when, subject: e.subject }));
  // A terminal's width (a pipe has none): rows wrapped past it would break the columns.
  for (const line of formatMailList(rows, process.stdout.isTTY ? process.stdout.columns : undefined)) say(line);
}

/** Ask until the answer is -1 or a listed number; returns the index into entries, or -1. */
async function askMailNumber(count: number): Promise<number> {
  for (;;) {
    const answer = (await ask(readLine("Enter mail no. to see: ", true))).trim();
    if (answer === "") continue;
    if (!/^[-+]?\d+$/.test(answer)) {
      say("Please give a mail number, or -1 to go back.");
      continue;
    }
    const n = Number(answer);
    if (n === -1) return -1;
    if (n >= 1 && n <= count) return n - 1;
    say("Mail no. out of range, give again");
  }
}

/** A POP3 session for Manage Mail, or null after saying why not. */
async function openMailbox(s: Session): Promise<Pop3Client | null> {
  for (let asked = 0; ; asked++) {
    try {
      return await openPop3(s);
    } catch (err) {
      // A password that could not be checked at login (POP3 was down then) may be wrong.
      if (asked < 2 && wrongPassword(err)) {
        say(`Login failed: wrong username or password (server said: ${err.text || "-ERR"}).`);
        s.password = await ask(readPassword(`Password for ${s.user}: `));
        continue;
      }
      say(err instanceof Pop3Error ? `Cannot open the mailbox: ${err.command === "STLS" ? noStls(err) : err.text}` : `Cannot reach the POP3 server: ${errorText(err)}`);
      return null;
    }
  }
}

/**
 * Manage Mail, as the assignment has it: the list, a mail number (-1: back to the menu), the
 * mail, and a key: 'd' deletes it; the list again.
 */
async function manageMail(s: Session): Promise<void> {
  const pop = await openMailbox(s);
  if (!pop) return;
  const box = new MailboxView(s, pop);
  try {
    await box.list();
    for (;;) {
      showList(box.entries);
      const i = await askMailNumber(box.entries.length);
      if (i < 0) break;
      const entry = await showMail(box, i);
      if (!entry) continue;
      const key = await ask(readKey("Press d to delete this mail, any other key to return to the list: "));
      // False: the session ended without saying whether the mail was deleted; to the menu.
      if (key === "d" && !(await deleteMail(box, entry, i))) return;
    }
  } catch (err) {
    if (err instanceof EndOfInput) {
      await box.quitQuietly();
      throw err;
    }
    box.close();
    say(`Manage Mail stopped: ${errorText(err)}`);
    return;
  }
  await box.quitQuietly();
}

/** A mail found (its entry in the current list) and what the operation on it gave. */
interface Found<T> {
  entry: Entry;
  result: T;
}

/**
 * The mailbox as Manage Mail shows it: a POP3 session and the list of its mails. A deletion is
 * committed at once (DELE, then QUIT: POP3 deletes only at QUIT) and a new session lists the
 * mailbox again, so "deleted" on the screen is true of the file then, whatever happens to the
 * client afterwards.
 */
class MailboxView {
  /** The list shown, from the current session: entries[i] is shown as number i + 1. */
  entries: Entry[] = [];

  constructor(
    private readonly s: Session,
    private pop: Pop3Client,
  ) {}

  /** Lists the mailbox in the current session. */
  async list(): Promise<void> {
    this.entries = await loadList(this.pop);
  }

  /** A new session (the current one is over) and its list. */
  async reopen(): Promise<void> {
    this.pop = await openPop3(this.s);
    await this.list();
  }

  /**
   * Runs `op` on the mail, in a new session if the server ended this one: it may log out a
   * session left idle while the user reads (RFC 1939's autologout timer). The new session finds
   * the mail again by its UID, so a deletion never lands on another mail. Null: it is gone.
   */
  async withMail<T>(entry: Entry, op: (pop: Pop3Client, msgNo: number) => Promise<T>): Promise<Found<T> | null> {
    for (let retried = false; ; retried = true) {
      if (this.pop.closed) {
        await this.reopen();
        // Only a mail that is the one match: two with the same UID (a server that breaks RFC
        // 1939 7) could put a deletion on the wrong one (helper-64).
        const found = this.entries.filter((e) => sameMail(e, entry));
        if (found.length !== 1) return null;
        entry = found[0]!;
      }
      try {
        return { entry, result: await op(this.pop, entry.msgNo) };
      } catch (err) {
        // An -ERR may be the server's autologout that crossed the command on the wire, its
        // close not seen yet: a NOOP tells a session that is over (no +OK, only the close).
        if (!retried && !this.pop.closed && err instanceof Pop3Error) await this.pop.noop().catch(() => {});
        // Closed under the command (a DELE there was never committed): once more, anew.
        if (retried || !this.pop.closed) throw err;
      }
    }
  }

  /** QUIT, so the server deletes what DELE marked: rejects if it did not, or may not have. */
  async commitDeletion(): Promise<void> {
    await this.pop.quit();
  }

  /**
   * Ends the session with QUIT, whatever the server answers: nothing is marked for deletion by
   * now (each deletion was committed at once), so there is nothing to report.
   */
  async quitQuietly(): Promise<void> {
    await this.pop.quit().catch(() => {});
  }

  /** Drops the session without QUIT (after an error). */
  close(): void {
    this.pop.close();
  }
}

/**
 * Shows the mail listed at i: returns its entry (found again if the session was renewed), or
 * null after saying why it cannot.
 */
async function showMail(box: MailboxView, i: number): Promise<Entry | null> {
  let read: Found<string> | null;
  try {
    read = await box.withMail(box.entries[i]!, (pop, n) => pop.retr(n));
  } catch (err) {
    // The server will not give this mail (gone from under the session, a read error): it is
    // one mail, not the session. Say so and list again; a lost connection still stops.
    if (!(err instanceof Pop3Error && err.command === "RETR")) throw err;
    say(`Cannot read mail ${i + 1} (server said: ${err.text || "-ERR"}).`);
    return null;
  }
  if (!read) {
    say(`Mail ${i + 1} is no longer in the mailbox.`);
    return null;
  }
  say();
  process.stdout.write(sanitizeForTerminal(readableMail(read.result.replace(/\r\n/g, "\n"))));
  say();
  return read.entry;
}

/**
 * Deletes the mail shown as number i + 1 and lists the mailbox again in a new session. False:
 * the QUIT failed, so the session is over and the mail may or may not have been deleted.
 */
async function deleteMail(box: MailboxView, entry: Entry, i: number): Promise<boolean> {
  let marked: Found<string> | null;
  try {
    marked = await box.withMail(entry, (pop, n) => pop.dele(n));
  } catch (err) {
    // Refused (a server that will not delete it): nothing is marked, the session goes on.
    if (!(err instanceof Pop3Error && err.command === "DELE")) throw err;
    say(`Mail ${i + 1} was not deleted (server said: ${err.text || "-ERR"}).`);
    return true;
  }
  if (!marked) {
    say(`Mail ${i + 1} is no longer in the mailbox.`);
    return true;
  }
  try {
    await box.commitDeletion();
  } catch (err) {
    // -ERR: not deleted; a lost reply: maybe. The next list tells.
    say(`Mail ${i + 1} may not have been deleted: ${errorText(err)}`);
    return false;
  }
  say(`Mail ${i + 1} deleted.`);
  await box.reopen();
  return true;
}

/** The same mail in another session: by UID, or without UIDL by its number and its list line. */
function sameMail(a: Entry, b: Entry): boolean {
  if (a.uid !== null || b.uid !== null) return a.uid === b.uid;
  return a.msgNo === b.msgNo && a.from === b.from && a.when === b.when && a.subject === b.subject;
}

async function run(config: Config): Promise<void> {
  const session = await login(config);
  for (;;) {
    say();
    say("1. Manage Mail");
    say("2. Send Mail");
    say("3. Quit");
    const choice = (await ask(readLine("Enter option: "))).trim();
    if (choice === "1") await manageMail(session);
    else if (choice === "2") await sendMailOption(session);
    else if (choice === "3") return;
    else if (choice === "") continue; // an Enter typed after a one-key answer: ask again quietly
    else say("Please enter 1, 2 or 3.");
  }
}

async function main(): Promise<number> {
  const parsed = parseArgs(process.argv.slice(2));
  if (!("config" in parsed)) {
    if (parsed.out) say(parsed.out);
    if (parsed.err) process.stderr.write(parsed.err + "\n");
    return parsed.exit;
  }
  try {
    await run(parsed.config);
  } catch (err) {
    if (!(err instanceof EndOfInput)) throw err;
    say();
    if (err instanceof NotLoggedIn) {
      say("Not logged in.");
      return 1;
    }
  }
  say("Bye.");
  return 0;
}

if (import.meta.main) {
  // Whoever read our output has gone (`mailclient ... | head`): end as a C program would on
  // SIGPIPE, quietly, rather than with a stack trace.
  process.stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code !== "EPIPE") throw err;
    process.exit(141);
  });
  process.exitCode = await main().catch((err) => {
    // A bug must still end with one readable line, not a stack trace at the user.
    process.stderr.write(`mailclient: unexpected error: ${errorText(err)}\n`);
    return 1;
  });
}
