// Every SMTP reply and POP3 response the servers send is built here, so the wording
// (fixed word for word by the assignment) lives in one place.

export interface SmtpReply {
  readonly code: number;
  readonly lines: readonly string[];
}

export function smtpReply(code: number, ...lines: string[]): SmtpReply {
  return { code, lines: lines.length ? lines : [""] };
}

/** Reply text is printable ASCII (RFC 5321 4.2, RFC 1939 3): what a client sent is echoed with anything else as "?". */
const printable = (text: string) => text.replace(/[^\x20-\x7e\t]/g, "?");

/** What a client sent, shortened for echoing: a reply line stays within 512 octets (RFC 5321 4.5.3.1.5, RFC 1939 3). */
const echo = (text: string) => (text.length > 100 ? `${text.slice(0, 97)}...` : text);

/** Wire form: "250-first\r\n250 last\r\n". */
export function formatSmtpReply(r: SmtpReply): string {
  let out = "";
  r.lines.forEach((text, i) => {
    const sep = i === r.lines.length - 1 ? " " : "-";
    out += `${r.code}${sep}${printable(text)}\r\n`;
  });
  return out;
}

export const Smtp = {
  greeting: (domain: string) => smtpReply(220, `${domain} Service ready`),
  helo: (host: string) => smtpReply(250, `OK Hello ${echo(host)}`),
  ehlo: (domain: string, host: string, extensions: string[]) =>
    smtpReply(250, `${domain} Hello ${echo(host)}`, ...extensions),
  senderOk: (addr: string) => smtpReply(250, `<${addr}>... Sender ok`),
  recipientOk: (user: string) => smtpReply(250, `${user}... Recipient ok`),
  startData: () => smtpReply(354, "Start mail input; end with <CRLF>.<CRLF>"),
  accepted: () => smtpReply(250, "OK Message accepted for delivery"),
  resetOk: () => smtpReply(250, "OK Reset state"),
  noop: () => smtpReply(250, "OK"),
  cannotVerify: () => smtpReply(252, "Cannot VRFY user, but will accept message and attempt delivery"),
  help: () => smtpReply(214, "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT"),
  closing: (domain: string) => smtpReply(221, `${domain} Service closing transmission channel`),
  shuttingDown: (domain: string) => smtpReply(421, `${domain} Service not available, closing transmission channel`),
  timeout: (domain: string) => smtpReply(421, `${domain} Timeout exceeded, closing transmission channel`),
  tooManyConnections: (domain: string) => smtpReply(421, `${domain} Too many connections, try again later`),
  localError: () => smtpReply(451, "Requested action aborted: local error in processing"),
  storageFull: () => smtpReply(452, "Requested action not taken: insufficient system storage"),
  tooManyRecipients: () => smtpReply(452, "Too many recipients"),
  unknownCommand: () => smtpReply(500, "Syntax error, command unrecognized"),
  lineTooLong: () => smtpReply(500, "Line too long"),
  syntax: (detail: string) => smtpReply(501, `Syntax error in parameters or arguments: ${echo(detail)}`),
  notImplemented: () => smtpReply(502, "Command not implemented"),
  badSequence: (detail: string) => smtpReply(503, `Bad sequence of commands: ${detail}`),
  paramNotImplemented: (p: string) => smtpReply(555, `Parameter not recognized or not implemented: ${echo(p)}`),
  noSuchUser: () => smtpReply(550, "No such user"),
  relayDenied: (addr: string) => smtpReply(550, `<${addr}>... Relay access denied (not a domain of this server)`),
  mailboxUnavailable: (user: string) => smtpReply(450, `${user}... Requested mail action not taken: mailbox unavailable, try again later`),
  tooBig: () => smtpReply(552, "Message size exceeds fixed maximum message size"),
  noValidRecipients: () => smtpReply(554, "No valid recipients"),
  // STARTTLS (RFC 3207) and AUTH (RFC 4954)
  readyForTls: () => smtpReply(220, "Ready to start TLS"),
  tlsNotAvailable: () => smtpReply(502, "STARTTLS not available (no certificate configured)"),
  tlsActive: () => smtpReply(503, "Bad sequence of commands: TLS already active"),
  tlsRequired: () => smtpReply(530, "Must issue a STARTTLS command first"),
  authRequired: () => smtpReply(530, "Authentication required"),
  encryptionRequired: () => smtpReply(538, "Encryption required for requested authentication mechanism"),
  authNotAvailable: () => smtpReply(502, "AUTH not available"),
  authMechanism: () => smtpReply(504, "Unrecognized authentication type"),
  /** A SASL challenge: base64 text, "" for an empty one. */
  authChallenge: (base64: string) => smtpReply(334, base64),
  authCancelled: () => smtpReply(501, "Authentication cancelled"),
  authBadBase64: () => smtpReply(501, "Cannot decode the response (base64 expected)"),
  authOk: () => smtpReply(235, "Authentication successful"),
  authFailed: () => smtpReply(535, "Authentication credentials invalid"),
  tooManyFailures: (domain: string) => smtpReply(421, `${domain} Too many failed logins, closing transmission channel`),
  utf8Required: () => smtpReply(553, "Non-ASCII address, and MAIL did not declare SMTPUTF8"),
  senderNotOwned: (addr: string) => smtpReply(553, `<${addr}>... Sender address not owned by the authenticated user`),
  tooManyMessages: (domain: string) => smtpReply(421, `${domain} Too many messages on this connection, closing transmission channel`),
  tooManyFromAddress: (domain: string) => smtpReply(421, `${domain} Too many connections from your address, try again later`),
};

/** A POP3 status line; multi-line bodies are streamed separately by the adapter. */
export interface PopReply {
  readonly ok: boolean;
  readonly text: string;
  /** A SASL challenge ("+ " and base64, RFC 5034), not a status line. */
  readonly challenge?: boolean;
}

export function formatPopReply(r: PopReply): string {
  if (r.challenge) return `+ ${r.text}\r\n`;
  return (r.ok ? "+OK" : "-ERR") + (r.text ? " " + printable(r.text) : "") + "\r\n";
}

const ok = (text: string): PopReply => ({ ok: true, text });
const err = (text: string): PopReply => ({ ok: false, text });
/** What a client learns of a failure that is no error code: a bug, say. */
const INTERNAL = "internal error";
const updateFailed = (why: string) => err(`[SYS/TEMP] some deleted messages not removed (${why}); goodbye, POP3 server signing off`);

export const Pop = {
  greeting: () => ok("POP3 server ready"),
  capabilities: () => ok("Capability list follows"),
  userOk: (name: string) => ok(`send PASS for ${echo(name)}`),
  loggedIn: (count: number, octets: number) => ok(`maildrop locked and ready, ${count} messages (${octets} octets)`),
  badLogin: () => err("[AUTH] invalid user name or password"),
  needUser: () => err("send USER first"),
  locked: () => err("[IN-USE] mailbox is already in use by another POP3 session"),
  /** RFC 3206: SYS/PERM when it takes an administrator (a directory or a link where the file goes), else SYS/TEMP. */
  cannotOpen: (why = INTERNAL, permanent = false) => err(`[SYS/${permanent ? "PERM" : "TEMP"}] cannot open mailbox: ${why}`),
  stat: (count: number, octets: number) => ok(`${count} ${octets}`),
  noop: () => ok(""),
  /** RSET: the maildrop's totals with nothing marked deleted. */
  reset: (count: number, octets: number) => ok(`maildrop has ${count} messages (${octets} octets)`),
  /** LIST or UIDL of the whole maildrop: its rows follow. */
  listing: (count: number, octets: number) => ok(`${count} messages (${octets} octets)`),
  /** LIST or UIDL of one message: its number and its size or unique id. */
  scanLine: (n: number, value: string | number) => ok(`${n} ${value}`),
  retrOk: (octets: number) => ok(`${octets} octets`),
  topOk: () => ok("top of message follows"),
  deleOk: (n: number) => ok(`message ${n} deleted`),
  noSuchMessage: () => err("no such message"),
  mailboxChanged: () => err("[SYS/TEMP] the mailbox was changed by another program; log in again"),
  deleted: () => err("message already deleted"),
  unknownCommand: () => err("unknown command"),
  wrongState: () => err("command not valid in this state"),
  lineTooLong: () => err("line too long"),
  syntax: (detail: string) => err(`syntax error: ${echo(detail)}`),
  goodbye: (user: string | null) => ok(user ? `goodbye ${user}, POP3 server signing off` : "goodbye, POP3 server signing off"),
  // RFC 1939 QUIT: -ERR when not every marked message was removed, and still a goodbye.
  updateFailed: (why = INTERNAL) => updateFailed(why),
  /** QUIT found the mailbox changed under the session, so removed nothing. */
  changedBeforeUpdate: () => updateFailed("the mailbox was changed by another program"),
  shuttingDown: () => err("server shutting down"),
  /** The client went away while its login was being checked. */
  connectionClosed: () => err("connection closed"),
  /** An exception in the server: the connection closes. */
  internalError: () => err(INTERNAL),
  timeout: () => err("autologout: idle for too long"),
  tooManyConnections: () => err("[SYS/TEMP] too many connections, try again later"),
  tooManyFromAddress: () => err("[SYS/TEMP] too many connections from your address, try again later"),
  // STLS (RFC 2595)
  beginTls: () => ok("Begin TLS negotiation"),
  tlsActive: () => err("TLS already active"),
  tlsRequired: () => err("TLS required: send STLS first"),
  tooManyFailures: () => err("[AUTH] invalid user name or password; too many failures, closing"),
  // AUTH (RFC 5034)
  mechanisms: () => ok("SASL mechanisms follow"),
  /** Base64 text, "" for an empty challenge. */
  authChallenge: (base64: string): PopReply => ({ ok: true, text: base64, challenge: true }),
  authMechanism: () => err("unsupported SASL mechanism (PLAIN and LOGIN are)"),
  authCancelled: () => err("authentication cancelled"),
  authBadBase64: () => err("cannot decode the response (base64 expected)"),
};
