// Unit tests of the sans-IO POP3 state machine (RFC 1939 + RFC 2449 CAPA, UIDL, TOP) over an
// in-memory PopStore and Maildrop: every command in every state, exact reply forms.
import { describe, expect, test } from "bun:test";
import { CAPABILITIES, Pop3Session, type PopResult, type PopStore } from "../lib/pop3-session.ts";
import { collectBody, MaildropBusy, MaildropChanged, MaildropUnavailable, MaildropUpdateFailed, type Maildrop } from "../lib/maildrop.ts";
import { formatPopReply } from "../lib/reply.ts";
import { LoginThrottle } from "../lib/auth.ts";

const wire = (msg: string) => Buffer.from(msg.split("\r\n").slice(0, -1).map((l) => (l.startsWith(".") ? "." + l : l) + "\r\n").join("") + ".\r\n");

class MemDrop implements Maildrop {
  commits: number[][] = [];
  released = 0;
  constructor(readonly msgs: string[]) {}
  get count() {
    return this.msgs.length;
  }
  size(i: number) {
    return Buffer.byteLength(this.msgs[i]!);
  }
  uid(i: number) {
    return `uid-${i + 1}`;
  }
  async read(i: number) {
    return wire(this.msgs[i]!);
  }
  async top(i: number, n: number) {
    const m = this.msgs[i]!;
    const sep = m.indexOf("\r\n\r\n");
    const head = m.slice(0, sep + 4);
    const body = m.slice(sep + 4).split("\r\n").slice(0, -1).slice(0, n);
    return wire(head + body.map((l) => l + "\r\n").join(""));
  }
  async commit(deleted: ReadonlySet<number>) {
    this.commits.push([...deleted].sort((a, b) => a - b));
    this.release();
  }
  release() {
    this.released++;
  }
}

const M1 = "From: a@x\r\nSubject: one\r\n\r\nhello\r\n.\r\n..dots\r\n"; // 46 octets
const M2 = "From: b@x\r\nSubject: two\r\n\r\nline1\r\nline2\r\nline3\r\n";

interface Env {
  store: PopStore;
  drop: MemDrop;
  opens: number;
}

function env(opts: { msgs?: string[]; openError?: Error; openDelay?: number; passDelay?: number } = {}): Env {
  const drop = new MemDrop(opts.msgs ?? [M1, M2]);
  const e: Env = {
    drop,
    opens: 0,
    store: {
      findUser: (n) => (n === "alice" ? "alice" : null),
      checkPassword: async (u, p) => {
        if (opts.passDelay) await Bun.sleep(opts.passDelay);
        return u === "alice" && p === "secret pw";
      },
      open: async () => {
        e.opens++;
        if (opts.openDelay) await Bun.sleep(opts.openDelay);
        if (opts.openError) throw opts.openError;
        return drop;
      },
    },
  };
  return e;
}

async function run(s: Pop3Session, line: string): Promise<PopResult> {
  return await s.handleLine(line);
}
const status = (r: PopResult) => formatPopReply(r.reply).replace(/\r\n$/, "");
async function bodyText(r: PopResult): Promise<string> {
  if (!r.body) throw new Error("no body");
  return (await collectBody(r.body)).toString("utf8");
}

async function loggedIn(e = env()): Promise<[Pop3Session, Env]> {
  const s = new Pop3Session(e.store, "test");
  expect(status(await run(s, "USER alice"))).toStartWith("+OK");
  expect(status(await run(s, "PASS secret pw"))).toStartWith("+OK");
  expect(s.state).toBe("transaction");
  return [s, e];
}

const S1 = Buffer.byteLength(M1);
const S2 = Buffer.byteLength(M2);

describe("AUTHORIZATION state", () => {
  test("greeting is +OK", () => {
    const s = new Pop3Session(env().store);
    expect(formatPopReply(s.greeting())).toBe("+OK POP3 server ready\r\n");
  });

  test("transaction commands are refused before login, and the session goes on", async () => {
    const s = new Pop3Session(env().store);
    for (const c of ["STAT", "LIST", "LIST 1", "RETR 1", "DELE 1", "RSET", "NOOP", "UIDL", "UIDL 1", "TOP 1 0"]) {
      const r = await run(s, c);
      expect(status(r)).toStartWith("-ERR");
      expect(r.close).toBeFalsy();
      expect(r.body).toBeUndefined();
    }
    expect(s.state).toBe("authorization");
    expect(status(await run(s, "USER alice"))).toStartWith("+OK");
    expect(status(await run(s, "PASS secret pw"))).toStartWith("+OK");
  });

  test("unknown commands and empty lines get -ERR", async () => {
    const s = new Pop3Session(env().store);
    for (const c of ["HELO x", "", "   ", "XYZZY", "\u0000\u00ff\u0001"]) expect(status(await run(s, c))).toStartWith("-ERR");
    expect(s.state).toBe("authorization");
  });

  test("only ASCII space and tab are trimmed or separate: a no-break space is part of the word (RFC 1939 3)", async () => {
    const s = new Pop3Session(env().store);
    expect(status(await run(s, "USER\u00a0alice"))).toStartWith("-ERR");
    expect(status(await run(s, "USER alice"))).toStartWith("+OK");
    expect(status(await run(s, "PASS secret pw\u00a0"))).toStartWith("-ERR");
    expect(status(await run(s, "USER alice"))).toStartWith("+OK");
    expect(status(await run(s, "PASS\tsecret pw "))).toStartWith("+OK");
    expect(status(await run(s, "STAT\u3000"))).toStartWith("-ERR");
    expect(status(await run(s, "\tLIST  1\t"))).toBe(`+OK 1 ${S1}`);
  });

  test("login reply counts messages and octets; commands are case-insensitive", async () => {
    const e = env();
    const s = new Pop3Session(e.store);
    expect(status(await run(s, "user alice"))).toStartWith("+OK");
    const r = await run(s, "pass secret pw");
    expect(status(r)).toBe(`+OK maildrop locked and ready, 2 messages (${S1 + S2} octets)`);
    expect(e.opens).toBe(1);
  });

  test("USER argument errors (missing, extra, too long) get -ERR; an unknown or path-like name is refused only at PASS, like a wrong password", async () => {
    const s = new Pop3Session(env().store);
    for (const c of ["USER", "USER alice bob", "USER " + "a".repeat(65)]) {
      const r = await run(s, c);
      expect(status(r)).toStartWith("-ERR");
      expect(r.close).toBeFalsy();
    }
    // None of them set a pending user: PASS now asks for USER.
    expect(status(await run(s, "PASS secret pw"))).toBe("-ERR send USER first");
    // Which names exist does not show at USER (as Dovecot): the same +OK, then [AUTH] at PASS.
    for (const name of ["../x", "../alice", "alice/..", "/etc/passwd", "ALICE", "nobody"]) {
      // The password is still checked (against no one): as slow as a wrong one.
      expect(status(await run(s, `USER ${name}`))).toBe(`+OK send PASS for ${name}`);
      expect(status(await run(s, "PASS secret pw"))).toBe("-ERR [AUTH] invalid user name or password");
      expect(s.state).toBe("authorization");
    }
  });

  test("PASS without USER, wrong password, then a correct retry", async () => {
    const e = env();
    const s = new Pop3Session(e.store);
    expect(status(await run(s, "PASS secret pw"))).toStartWith("-ERR");
    expect(status(await run(s, "USER alice"))).toStartWith("+OK");
    const bad = await run(s, "PASS wrong");
    expect(status(bad)).toStartWith("-ERR");
    expect(bad.close).toBeFalsy();
    expect(e.opens).toBe(0);
    // The failed PASS consumed the USER: PASS alone is refused now.
    expect(status(await run(s, "PASS secret pw"))).toStartWith("-ERR");
    expect(status(await run(s, "USER alice"))).toStartWith("+OK");
    expect(status(await run(s, "PASS secret pw"))).toStartWith("+OK");
    expect(s.state).toBe("transaction");
    expect(e.opens).toBe(1);
  });

  test("PASS keeps spaces inside the password; empty password is refused", async () => {
    const s = new Pop3Session(env().store);
    await run(s, "USER alice");
    expect(status(await run(s, "PASS secret"))).toStartWith("-ERR");
    await run(s, "USER alice");
    expect(status(await run(s, "PASS"))).toStartWith("-ERR");
    await run(s, "USER alice");
    expect(status(await run(s, "PASS secret pw"))).toStartWith("+OK");
  });

  test("spaces before the password are not part of it, as spaces after it are not (helper-112)", async () => {
    const s = new Pop3Session(env().store);
    await run(s, "USER alice");
    expect(status(await run(s, "PASS  \tsecret pw  "))).toStartWith("+OK");
  });

  test("QUIT in AUTHORIZATION: +OK, close, nothing opened or committed", async () => {
    const e = env();
    const s = new Pop3Session(e.store);
    await run(s, "USER alice");
    const r = await run(s, "QUIT");
    expect(status(r)).toStartWith("+OK");
    expect(r.close).toBe(true);
    expect(e.opens).toBe(0);
    expect(e.drop.commits).toEqual([]);
  });

  test("mailbox busy: -ERR [IN-USE] and the connection closes", async () => {
    const s = new Pop3Session(env({ openError: new MaildropBusy("busy") }).store);
    await run(s, "USER alice");
    const r = await run(s, "PASS secret pw");
    expect(status(r)).toStartWith("-ERR [IN-USE]");
    expect(r.close).toBe(true);
  });

  test("mailbox cannot be opened: -ERR and the connection closes", async () => {
    const s = new Pop3Session(env({ openError: new Error("EACCES: permission denied") }).store);
    await run(s, "USER alice");
    const r = await run(s, "PASS secret pw");
    expect(status(r)).toBe("-ERR [SYS/TEMP] cannot open mailbox: internal error");
    expect(r.close).toBe(true);
  });

  test("MaildropUnavailable: its reason, SYS/PERM when permanent, the message (with paths) only in the log", async () => {
    for (const [permanent, code] of [[true, "PERM"], [false, "TEMP"]] as const) {
      const s = new Pop3Session(env({ openError: new MaildropUnavailable("/srv/mail/alice/mymailbox is not a regular file", "not a regular file", permanent) }).store);
      await run(s, "USER alice");
      const r = await run(s, "PASS secret pw");
      expect(status(r)).toBe(`-ERR [SYS/${code}] cannot open mailbox: not a regular file`);
      expect(r.close).toBe(true);
      expect(r.log).toContain("/srv/mail/alice/mymailbox");
    }
  });

  test("commands after the session closed get -ERR, not an exception", async () => {
    const s = new Pop3Session(env({ openError: new MaildropBusy("busy") }).store);
    await run(s, "USER alice");
    await run(s, "PASS secret pw");
    for (const c of ["STAT", "LIST", "RETR 1", "DELE 1", "UIDL", "TOP 1 1", "RSET", "NOOP", "USER alice", "PASS x"]) {
      let r: PopResult | undefined;
      let err: unknown;
      try {
        r = await run(s, c);
      } catch (e) {
        err = e;
      }
      expect(err).toBeUndefined();
      expect(status(r!)).toStartWith("-ERR");
    }
  });
});

describe("CAPA", () => {
  test("lists the RFC 2449 capabilities in both states", async () => {
    for (const loggedInState of [false, true]) {
      const s = loggedInState ? (await loggedIn())[0] : new Pop3Session(env().store);
      const r = await run(s, "CAPA");
      expect(status(r)).toStartWith("+OK");
      const text = await bodyText(r);
      expect(text.endsWith("\r\n.\r\n")).toBe(true);
      const caps = text.slice(0, -5).split("\r\n");
      for (const c of ["TOP", "UIDL", "USER", "PIPELINING", "RESP-CODES"]) expect(caps).toContain(c);
      expect(caps.some((c) => /^IMPLEMENTATION \S/.test(c))).toBe(true);
      expect(caps).toEqual(CAPABILITIES);
    }
  });
});

describe("AUTH (RFC 5034)", () => {
  const b64 = (t: string) => Buffer.from(t).toString("base64");
  const plain = (user: string, pw: string, authz = "") => b64(`${authz}\0${user}\0${pw}`);

  test("CAPA names the mechanisms; AUTH alone lists them", async () => {
    const s = new Pop3Session(env().store);
    expect((await bodyText(await run(s, "CAPA"))).split("\r\n")).toContain("SASL PLAIN LOGIN");
    const r = await run(s, "AUTH");
    expect(status(r)).toStartWith("+OK");
    expect(await bodyText(r)).toBe("PLAIN\r\nLOGIN\r\n.\r\n");
    expect(s.state).toBe("authorization");
  });

  test("PLAIN with an initial response opens the maildrop, as PASS does", async () => {
    const e = env();
    const s = new Pop3Session(e.store, "test");
    const r = await run(s, `AUTH PLAIN ${plain("alice", "secret pw")}`);
    expect(status(r)).toBe(`+OK maildrop locked and ready, 2 messages (${S1 + S2} octets)`);
    expect(s.state).toBe("transaction");
    expect(e.opens).toBe(1);
    expect(status(await run(s, "STAT"))).toBe(`+OK 2 ${S1 + S2}`);
  });

  test("PLAIN after an empty challenge, with the user itself as authzid", async () => {
    const s = new Pop3Session(env().store);
    const c = await run(s, "auth plain");
    expect(formatPopReply(c.reply)).toBe("+ \r\n");
    expect(s.expectingAuthResponse).toBe(true);
    expect(status(await run(s, plain("alice", "secret pw", "alice")))).toStartWith("+OK maildrop locked");
    expect(s.expectingAuthResponse).toBe(false);
  });

  test("LOGIN asks for the user name, then the password", async () => {
    const s = new Pop3Session(env().store);
    expect(formatPopReply((await run(s, "AUTH LOGIN")).reply)).toBe(`+ ${b64("Username:")}\r\n`);
    expect(formatPopReply((await run(s, b64("alice"))).reply)).toBe(`+ ${b64("Password:")}\r\n`);
    expect(status(await run(s, b64("secret pw")))).toStartWith("+OK maildrop locked");
    expect(s.state).toBe("transaction");
  });

  test("wrong password, unknown user, other authzid, malformed PLAIN: the same -ERR [AUTH], nothing opened", async () => {
    const e = env();
    const s = new Pop3Session(e.store);
    for (const resp of [plain("alice", "wrong"), plain("mallory", "secret pw"), plain("alice", "secret pw", "bob"), b64("alice secret pw")]) {
      const r = await run(s, `AUTH PLAIN ${resp}`);
      expect(status(r)).toBe("-ERR [AUTH] invalid user name or password");
      expect(s.state).toBe("authorization");
    }
    expect(e.opens).toBe(0);
    // Still usable afterwards.
    expect(status(await run(s, `AUTH PLAIN ${plain("alice", "secret pw")}`))).toStartWith("+OK");
  });

  test("failures are slowed by the throttle and the connection closes after the limit", async () => {
    const throttle = new LoginThrottle({ baseDelayMs: 10, maxDelayMs: 100, maxFailuresPerConnection: 2, forgetAfterMs: 60_000 });
    const s = new Pop3Session(env().store, "10.0.0.9", { throttle });
    const first = await run(s, `AUTH PLAIN ${plain("alice", "nope")}`);
    expect(first.delayMs).toBe(10);
    expect(first.close).toBeUndefined();
    const second = await run(s, `AUTH PLAIN ${plain("mallory", "nope")}`);
    expect(second.delayMs).toBe(20);
    expect(second.close).toBe(true);
    expect(second.log).toContain('"mallory"');
    expect(throttle.count("10.0.0.9")).toBe(2);
  });

  test('"*" cancels, bad base64 and unknown mechanisms are refused; the next line is a command again', async () => {
    const s = new Pop3Session(env().store);
    await run(s, "AUTH LOGIN");
    expect(status(await run(s, "*"))).toBe("-ERR authentication cancelled");
    await run(s, "AUTH PLAIN");
    expect(status(await run(s, "not base64!"))).toBe("-ERR cannot decode the response (base64 expected)");
    expect(status(await run(s, "AUTH CRAM-MD5"))).toBe("-ERR unsupported SASL mechanism (PLAIN and LOGIN are)");
    expect(status(await run(s, "AUTH PLAIN a b"))).toStartWith("-ERR syntax error");
    await run(s, "AUTH PLAIN");
    expect(status(s.lineTooLong())).toBe("-ERR line too long");
    expect(s.expectingAuthResponse).toBe(false);
    expect(status(await run(s, "NOOP"))).toBe("-ERR command not valid in this state");
  });

  test("AUTH after login is refused; with --require-tls it waits for STLS and CAPA hides SASL", async () => {
    const [s] = await loggedIn();
    expect(status(await run(s, `AUTH PLAIN ${plain("alice", "secret pw")}`))).toBe("-ERR command not valid in this state");
    const t = new Pop3Session(env().store, "p", { tls: true, requireTls: true });
    expect((await bodyText(await run(t, "CAPA"))).split("\r\n").some((c) => c.startsWith("SASL"))).toBe(false);
    expect(status(await run(t, `AUTH PLAIN ${plain("alice", "secret pw")}`))).toBe("-ERR TLS required: send STLS first");
    t.tlsStarted();
    expect((await bodyText(await run(t, "CAPA"))).split("\r\n")).toContain("SASL PLAIN LOGIN");
    expect(status(await run(t, `AUTH PLAIN ${plain("alice", "secret pw")}`))).toStartWith("+OK");
  });
});

describe("logForm: the line as the log shows it", () => {
  test("PASS, AUTH's initial response and SASL responses are masked; other commands are not", async () => {
    const s = new Pop3Session(env().store);
    expect(s.logForm("USER alice")).toBe("USER alice");
    expect(s.logForm(" pass secret pw")).toBe("PASS ********");
    expect(s.logForm("AUTH PLAIN AGFsaWNlAHNlY3JldCBwdw==")).toBe("AUTH PLAIN ********");
    await run(s, "AUTH LOGIN");
    expect(s.logForm("YWxpY2U=")).toBe("********");
  });
});

describe("TRANSACTION state", () => {
  test("STAT gives '+OK n octets' exactly", async () => {
    const [s] = await loggedIn();
    expect(status(await run(s, "STAT"))).toBe(`+OK 2 ${S1 + S2}`);
    expect(status(await run(s, "STAT x"))).toStartWith("-ERR");
  });

  test("STAT of an empty maildrop is '+OK 0 0'; LIST is an empty listing", async () => {
    const [s] = await loggedIn(env({ msgs: [] }));
    expect(status(await run(s, "STAT"))).toBe("+OK 0 0");
    const r = await run(s, "LIST");
    expect(status(r)).toStartWith("+OK");
    expect(await bodyText(r)).toBe(".\r\n");
    expect(status(await run(s, "RETR 1"))).toStartWith("-ERR");
  });

  test("LIST: scan listings 'n size', single form '+OK n size'", async () => {
    const [s] = await loggedIn();
    const r = await run(s, "LIST");
    expect(status(r)).toStartWith("+OK");
    expect(await bodyText(r)).toBe(`1 ${S1}\r\n2 ${S2}\r\n.\r\n`);
    expect(status(await run(s, "LIST 2"))).toBe(`+OK 2 ${S2}`);
    expect(status(await run(s, "LIST 1"))).toBe(`+OK 1 ${S1}`);
  });

  test("UIDL: multi-line and single forms", async () => {
    const [s] = await loggedIn();
    const r = await run(s, "UIDL");
    expect(status(r)).toStartWith("+OK");
    expect(await bodyText(r)).toBe("1 uid-1\r\n2 uid-2\r\n.\r\n");
    expect(status(await run(s, "UIDL 2"))).toBe("+OK 2 uid-2");
  });

  test("RETR sends the message dot-stuffed with a final '.' line", async () => {
    const [s] = await loggedIn();
    const r = await run(s, "RETR 1");
    expect(status(r)).toStartWith("+OK");
    expect(await bodyText(r)).toBe("From: a@x\r\nSubject: one\r\n\r\nhello\r\n..\r\n...dots\r\n.\r\n");
    const r2 = await run(s, "RETR 2");
    expect(await bodyText(r2)).toBe(M2 + ".\r\n");
  });

  test("TOP n k: header plus k body lines; k = 0 is the header only", async () => {
    const [s] = await loggedIn();
    const r = await run(s, "TOP 2 1");
    expect(status(r)).toStartWith("+OK");
    expect(await bodyText(r)).toBe("From: b@x\r\nSubject: two\r\n\r\nline1\r\n.\r\n");
    expect(await bodyText(await run(s, "TOP 2 0"))).toBe("From: b@x\r\nSubject: two\r\n\r\n.\r\n");
    expect(await bodyText(await run(s, "TOP 2 99"))).toBe(M2 + ".\r\n");
  });

  test("NOOP is +OK", async () => {
    const [s] = await loggedIn();
    expect(status(await run(s, "NOOP"))).toBe("+OK");
    expect(status(await run(s, "NOOP 1"))).toStartWith("-ERR");
  });

  test("bad message-number arguments: missing, non-numeric, 0, out of range, extra, negative, too long", async () => {
    const [s, e] = await loggedIn();
    const bad = [
      "RETR", "RETR x", "RETR 0", "RETR 3", "RETR -1", "RETR 1 2", "RETR 1.0", "RETR +1", "RETR 0x1", "RETR 99999999999999999999",
      "DELE", "DELE a", "DELE 0", "DELE 3", "DELE 1 1",
      "LIST x", "LIST 0", "LIST 3", "LIST 1 2",
      "UIDL x", "UIDL 0", "UIDL 3", "UIDL 1 2",
      "TOP", "TOP 1", "TOP x 1", "TOP 1 x", "TOP 0 1", "TOP 3 1", "TOP 1 -1", "TOP 1 1 1",
      "RETR " + "1".repeat(41),
    ];
    for (const c of bad) {
      const r = await run(s, c);
      expect([c, status(r)]).toEqual([c, expect.stringMatching(/^-ERR/)]);
      expect(r.close).toBeFalsy();
      expect(r.body).toBeUndefined();
    }
    // Nothing was marked by any of them.
    expect(status(await run(s, "STAT"))).toBe(`+OK 2 ${S1 + S2}`);
    expect(status(await run(s, "QUIT"))).toStartWith("+OK");
    expect(e.drop.commits).toEqual([[]]);
  });

  test("USER and PASS are refused once logged in; unknown command -ERR", async () => {
    const [s] = await loggedIn();
    expect(status(await run(s, "USER alice"))).toStartWith("-ERR");
    expect(status(await run(s, "PASS secret pw"))).toStartWith("-ERR");
    expect(status(await run(s, "APOP alice 0123"))).toStartWith("-ERR");
    expect(s.state).toBe("transaction");
  });

  test("a deleted message keeps its number; LIST/RETR/DELE/TOP/UIDL of it give -ERR", async () => {
    const [s] = await loggedIn(env({ msgs: [M1, M2, M1] }));
    expect(status(await run(s, "DELE 2"))).toStartWith("+OK");
    for (const c of ["LIST 2", "RETR 2", "DELE 2", "TOP 2 0", "UIDL 2"]) expect(status(await run(s, c))).toStartWith("-ERR");
    expect(status(await run(s, "STAT"))).toBe(`+OK 2 ${2 * S1}`);
    expect(await bodyText(await run(s, "LIST"))).toBe(`1 ${S1}\r\n3 ${S1}\r\n.\r\n`);
    expect(await bodyText(await run(s, "UIDL"))).toBe("1 uid-1\r\n3 uid-3\r\n.\r\n");
    expect(status(await run(s, "LIST 3"))).toBe(`+OK 3 ${S1}`);
    expect(status(await run(s, "RETR 3"))).toStartWith("+OK");
  });

  test("RSET unmarks everything", async () => {
    const [s, e] = await loggedIn();
    await run(s, "DELE 1");
    await run(s, "DELE 2");
    expect(status(await run(s, "STAT"))).toBe("+OK 0 0");
    const r = await run(s, "RSET");
    expect(status(r)).toStartWith("+OK");
    expect(status(await run(s, "STAT"))).toBe(`+OK 2 ${S1 + S2}`);
    expect(status(await run(s, "RETR 1"))).toStartWith("+OK");
    expect(status(await run(s, "RSET 1"))).toStartWith("-ERR");
    await run(s, "QUIT");
    expect(e.drop.commits).toEqual([[]]);
  });

  test("QUIT commits exactly the marked messages (0-based) and closes", async () => {
    const [s, e] = await loggedIn(env({ msgs: [M1, M2, M1, M2] }));
    await run(s, "DELE 4");
    await run(s, "DELE 2");
    const r = await run(s, "QUIT");
    expect(status(r)).toStartWith("+OK");
    expect(r.close).toBe(true);
    expect(e.drop.commits).toEqual([[1, 3]]);
    expect(e.drop.released).toBe(1);
    // closed() after QUIT (the socket goes away) must not release or commit again.
    s.closed();
    expect(e.drop.released).toBe(1);
    expect(e.drop.commits.length).toBe(1);
  });

  test("QUIT when the update fails: -ERR with the error code and a goodbye, then close; the path only in the log", async () => {
    const e = env();
    e.drop.commit = async () => {
      e.drop.release();
      throw new MaildropUpdateFailed("ENOSPC: no space left on device, write '/srv/mail/alice/mymailbox.rewrite.1.tmp'", "ENOSPC");
    };
    const [s] = await loggedIn(e);
    await run(s, "DELE 1");
    const r = await run(s, "QUIT");
    expect(status(r)).toBe("-ERR [SYS/TEMP] some deleted messages not removed (ENOSPC); goodbye, POP3 server signing off");
    expect(r.close).toBe(true);
    expect(r.log).toContain("/srv/mail/alice/mymailbox.rewrite.1.tmp");
  });

  test("QUIT when the mailbox was changed under the session by another program: -ERR saying so, then close", async () => {
    const e = env();
    e.drop.commit = async () => {
      e.drop.release();
      throw new MaildropChanged("alice", "changed during the session");
    };
    const [s] = await loggedIn(e);
    await run(s, "DELE 1");
    const r = await run(s, "QUIT");
    expect(status(r)).toBe("-ERR [SYS/TEMP] some deleted messages not removed (the mailbox was changed by another program); goodbye, POP3 server signing off");
    expect(r.close).toBe(true);
    expect(r.log).toContain("alice's mailbox was changed during the session by another program");
  });

  test("connection drop (closed()) commits nothing and releases the maildrop", async () => {
    const [s, e] = await loggedIn();
    await run(s, "DELE 1");
    s.closed();
    expect(e.drop.commits).toEqual([]);
    expect(e.drop.released).toBe(1);
  });

  test("connection drop while PASS is opening the maildrop: the maildrop is released", async () => {
    const e = env({ openDelay: 30 });
    const s = new Pop3Session(e.store);
    await run(s, "USER alice");
    const pending = s.handleLine("PASS secret pw");
    for (let i = 0; i < 100 && e.opens === 0; i++) await Bun.sleep(1);
    expect(e.opens).toBe(1);
    s.closed(); // the client vanished while the maildrop was being opened
    expect(status(await pending)).toStartWith("-ERR");
    expect(e.drop.commits).toEqual([]);
    expect(e.drop.released).toBe(1);
  });

  test("connection drop while the password is being checked: nothing stays open", async () => {
    const e = env({ passDelay: 30 });
    const s = new Pop3Session(e.store);
    await run(s, "USER alice");
    const pending = s.handleLine("PASS secret pw");
    s.closed();
    await pending;
    expect(e.opens - e.drop.released).toBe(0);
  });
});

test("extra spaces between a command and its argument are tolerated", async () => {
  const [s] = await loggedIn();
  expect(status(await s.handleLine("LIST  1"))).toStartWith("+OK 1 ");
  const fresh = new Pop3Session(env().store);
  expect(status(await fresh.handleLine("USER  alice"))).toStartWith("+OK");
});

test("an unknown name at PASS or AUTH is checked like a known one (same work), then refused as a wrong password", async () => {
  const e = env();
  const checked: string[] = [];
  const check = e.store.checkPassword;
  e.store.checkPassword = (u, p) => (checked.push(u), check(u, p));
  const s = new Pop3Session(e.store);
  await run(s, "USER nobody");
  expect(status(await run(s, "PASS secret pw"))).toBe("-ERR [AUTH] invalid user name or password");
  expect(status(await run(s, "AUTH PLAIN " + Buffer.from("\0ghost\0secret pw").toString("base64")))).toBe("-ERR [AUTH] invalid user name or password");
  expect(checked).toEqual(["nobody", "ghost"]);
  expect(e.opens).toBe(0);
});
