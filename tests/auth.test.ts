// Unit tests of lib/auth.ts and of the TLS/AUTH states of the two sans-IO sessions.
import { describe, expect, test } from "bun:test";
import { decodeBase64, LoginThrottle, maskAuth, parsePlain, SaslExchange } from "../lib/auth.ts";
import { Pop3Session } from "../lib/pop3-session.ts";
import { formatSmtpReply } from "../lib/reply.ts";
import { SmtpSession, type SmtpResult } from "../lib/smtp-session.ts";

describe("SASL decoding", () => {
  test("base64: '=' is empty, invalid text is null", () => {
    expect(decodeBase64("=")).toBe("");
    expect(decodeBase64("YWxpY2U=")).toBe("alice");
    expect(decodeBase64("not base64!")).toBeNull();
    expect(decodeBase64("YWxpY2U")).toBeNull();
    expect(decodeBase64(Buffer.from("pässwörd").toString("base64"))).toBe("pässwörd");
    // Bytes that are not UTF-8 would all become U+FFFD, so different passwords would compare equal.
    expect(decodeBase64(Buffer.from([0, 0x61, 0, 0xff, 0xfe]).toString("base64"))).toBeNull();
  });
  test("log masking hides everything after AUTH <mechanism>, and whole SASL responses", () => {
    expect(maskAuth("AUTH PLAIN AGFsaWNlAHB3", false)).toBe("AUTH PLAIN ********");
    expect(maskAuth("auth plain a b c", false)).toBe("auth plain ********");
    expect(maskAuth("AUTH LOGIN", false)).toBe("AUTH LOGIN");
    expect(maskAuth("MAIL FROM:<a@b>", false)).toBe("MAIL FROM:<a@b>");
    expect(maskAuth("cGFzc3dvcmQ=", true)).toBe("********");
  });
  test("PLAIN: authzid empty or equal to the user; anything else refused", () => {
    expect(parsePlain("\0alice\0pw")).toEqual({ user: "alice", password: "pw" });
    expect(parsePlain("alice\0alice\0p w")).toEqual({ user: "alice", password: "p w" });
    expect(parsePlain("bob\0alice\0pw")).toBeNull();
    expect(parsePlain("alice\0pw")).toBeNull();
    expect(parsePlain("\0\0pw")).toBeNull();
  });
});

describe("SaslExchange", () => {
  const b64 = (s: string) => Buffer.from(s).toString("base64");
  test("PLAIN with and without an initial response; a malformed one gives null credentials", () => {
    expect(SaslExchange.start("plain", b64("\0alice\0pw")).step).toEqual({ kind: "creds", creds: { user: "alice", password: "pw" } });
    const { exchange, step } = SaslExchange.start("PLAIN", undefined);
    expect(step).toEqual({ kind: "challenge", base64: "" });
    expect(exchange!.respond(b64("alice\0pw"))).toEqual({ kind: "creds", creds: null });
  });
  test("LOGIN: Username: then Password: challenges, the initial response being the user name", () => {
    const { exchange, step } = SaslExchange.start("LOGIN", undefined);
    expect(step).toEqual({ kind: "challenge", base64: b64("Username:") });
    expect(exchange!.respond(b64("alice"))).toEqual({ kind: "challenge", base64: b64("Password:") });
    expect(exchange!.respond(b64("p w"))).toEqual({ kind: "creds", creds: { user: "alice", password: "p w" } });
    const ir = SaslExchange.start("login", b64("bob"));
    expect(ir.step).toEqual({ kind: "challenge", base64: b64("Password:") });
    expect(ir.exchange!.respond("=")).toEqual({ kind: "creds", creds: { user: "bob", password: "" } });
  });
  test("'*' cancels, text that is not base64 ends it, an unknown mechanism has no exchange", () => {
    expect(SaslExchange.start("LOGIN", undefined).exchange!.respond(" * ")).toEqual({ kind: "cancelled" });
    expect(SaslExchange.start("PLAIN", "not base64!").step).toEqual({ kind: "badBase64" });
    expect(SaslExchange.start("CRAM-MD5", undefined)).toEqual({ exchange: null, step: { kind: "unknownMech" } });
  });
});

describe("LoginThrottle", () => {
  test("delay doubles per failure from one address, capped, independent per address, forgotten after a while", () => {
    let now = 0;
    const t = new LoginThrottle({ baseDelayMs: 100, maxDelayMs: 1000, maxFailuresPerConnection: 3, forgetAfterMs: 60_000 }, () => now);
    expect([1, 2, 3, 4, 5, 6].map(() => t.failed("10.0.0.1"))).toEqual([100, 200, 400, 800, 1000, 1000]);
    expect(t.failed("10.0.0.2")).toBe(100);
    now += 60_001;
    expect(t.count("10.0.0.1")).toBe(0);
    expect(t.failed("10.0.0.1")).toBe(100);
  });
});

const NOW = new Date(2024, 0, 2, 3, 4);
function smtp(opts: { tls?: boolean; secure?: boolean; requireTls?: boolean; requireAuth?: boolean; allowPlainAuth?: boolean } = {}) {
  const store = { deliver: async () => {} };
  const dir = { resolve: (l: string) => (["alice", "bob"].includes(l.toLowerCase()) ? l.toLowerCase() : null) };
  const auth = { check: async (u: string, p: string) => (p === `${u}pw` ? u : null), throttle: new LoginThrottle({ baseDelayMs: 10, maxDelayMs: 100, maxFailuresPerConnection: 2, forgetAfterMs: 1000 }) };
  const s = new SmtpSession({ domain: "mx.test", maxMessageSize: 1000, maxRecipients: 10, now: () => NOW, ...opts }, dir, store, "1.2.3.4", auth, opts.secure);
  const say = (line: string) => s.handleLine(line);
  const text = (r: SmtpResult) => r.replies.map(formatSmtpReply).join("");
  return { s, say, text };
}

describe("SmtpSession: STARTTLS and AUTH", () => {
  test("STARTTLS only with a certificate, not inside a mail transaction; the handshake forgets HELO", () => {
    expect(smtp().text(smtp().say("STARTTLS"))).toBe("502 STARTTLS not available (no certificate configured)\r\n");
    const { s, say, text } = smtp({ tls: true });
    say("EHLO c");
    say("MAIL FROM:<a@x>");
    // As Postfix: 503 rather than silently dropping the transaction at the handshake.
    expect(text(say("STARTTLS"))).toBe("503 Bad sequence of commands: MAIL transaction in progress\r\n");
    say("RSET");
    const r = say("STARTTLS");
    expect(text(r)).toBe("220 Ready to start TLS\r\n");
    expect(r.startTls).toBe(true);
    s.tlsStarted();
    expect(text(say("RCPT TO:<bob@x>"))).toStartWith("503 ");
    expect(text(say("MAIL FROM:<a@x>"))).toStartWith("503 Bad sequence of commands: send HELO");
    expect(text(say("EHLO c"))).not.toContain("STARTTLS");
    expect(text(say("STARTTLS"))).toStartWith("503 ");
  });

  test("AUTH: LOGIN exchange, credentials handed to finishLogin, 235 then own address only", async () => {
    const { s, say, text } = smtp({ tls: true, secure: true });
    expect(text(say("EHLO c"))).toContain("250-AUTH PLAIN LOGIN\r\n");
    expect(text(say("AUTH LOGIN"))).toBe("334 VXNlcm5hbWU6\r\n");
    expect(s.expectingAuthResponse).toBe(true);
    expect(text(say("Ym9i"))).toBe("334 UGFzc3dvcmQ6\r\n");
    const r = say("Ym9icHc=");
    expect(r.login).toEqual({ user: "bob", password: "bobpw" });
    expect(text(await s.finishLogin(r.login!))).toBe("235 Authentication successful\r\n");
    expect(s.authenticated).toBe("bob");
    expect(text(say("MAIL FROM:<alice@x>"))).toStartWith("553 ");
    // The null sender (a bounce, a vacation reply, an MDN) is nobody's: allowed.
    expect(text(say("MAIL FROM:<>"))).toStartWith("250 ");
    say("RSET");
    expect(text(say("MAIL FROM:<BOB@x>"))).toStartWith("250 ");
    say("RSET");
    expect(text(say('MAIL FROM:<"bob"@x>'))).toStartWith("250 ");
  });

  test("failed logins are delayed, and the connection closes at the per-connection limit", async () => {
    const { s, say } = smtp({ tls: true, secure: true });
    say("EHLO c");
    const first = await s.finishLogin(say("AUTH PLAIN AGFsaWNlAHg=").login!);
    expect(first.delayMs).toBe(10);
    expect(first.close).toBeFalsy();
    const second = await s.finishLogin(say("AUTH PLAIN AGFsaWNlAHk=").login!);
    expect(second.delayMs).toBe(20);
    expect(second.replies.map((r) => r.code)).toEqual([535, 421]);
    expect(second.close).toBe(true);
  });

  test("without TLS: AUTH 538 when a certificate exists, 502 when not, offered with allowPlainAuth", () => {
    expect(smtp({ tls: true }).say("AUTH PLAIN").replies[0]!.code).toBe(538);
    expect(smtp().say("AUTH PLAIN").replies[0]!.code).toBe(502);
    const p = smtp({ allowPlainAuth: true });
    expect(p.text(p.say("EHLO c"))).toContain("AUTH PLAIN LOGIN");
    expect(p.text(p.say("AUTH PLAIN"))).toBe("334 \r\n");
    // An over-long response line ends the exchange: the next line is a command again.
    expect(p.text(p.s.lineTooLong())).toStartWith("500 ");
    expect(p.s.expectingAuthResponse).toBe(false);
    expect(p.text(p.say("NOOP"))).toStartWith("250 ");
  });

  test("--require-tls and --require-auth", () => {
    const t = smtp({ tls: true, requireTls: true, allowPlainAuth: true });
    t.say("EHLO c");
    expect(t.text(t.say("MAIL FROM:<a@x>"))).toBe("530 Must issue a STARTTLS command first\r\n");
    expect(t.text(t.say("AUTH PLAIN"))).toStartWith("538 ");
    const a = smtp({ tls: true, secure: true, requireAuth: true });
    a.say("EHLO c");
    expect(a.text(a.say("MAIL FROM:<a@x>"))).toBe("530 Authentication required\r\n");
  });
});

describe("Pop3Session: STLS", () => {
  const store = { findUser: (n: string) => (n === "alice" ? n : null), checkPassword: async () => false, open: async () => { throw new Error("no"); } };
  test("STLS only with a certificate, only once, forgets USER; --require-tls hides USER", async () => {
    expect((await new Pop3Session(store).handleLine("STLS")).reply.text).toBe("unknown command");
    const s = new Pop3Session(store, "p", { tls: true, requireTls: true });
    expect((await s.handleLine("USER alice")).reply.text).toBe("TLS required: send STLS first");
    const r = await s.handleLine("STLS");
    expect(r.startTls).toBe(true);
    s.tlsStarted();
    expect((await s.handleLine("PASS x")).reply.text).toBe("send USER first");
    expect((await s.handleLine("STLS")).reply.text).toBe("TLS already active");
    expect((await s.handleLine("USER alice")).reply.ok).toBe(true);
  });
});
