import { describe, expect, test } from "bun:test";
import type { MessageEvent } from "../lib/lines.ts";
import type { MailStore } from "../lib/mail-store.ts";
import { formatSmtpReply } from "../lib/reply.ts";
import { parsePath, SmtpSession, type Directory, type SmtpResult } from "../lib/smtp-session.ts";

class MemoryStore implements MailStore {
  readonly boxes = new Map<string, Buffer[]>();
  fail = false;
  async deliver(users: readonly string[], record: Buffer): Promise<void> {
    if (this.fail) throw new Error("disk full");
    for (const u of users) this.boxes.set(u, [...(this.boxes.get(u) ?? []), record]);
  }
  count(): number {
    return [...this.boxes.values()].reduce((n, l) => n + l.length, 0);
  }
}

class MemoryDirectory implements Directory {
  constructor(public names: string[]) {}
  resolve(local: string): string | null {
    if (this.names.includes(local)) return local;
    if (local.toLowerCase() === "postmaster") return this.names[0] ?? null;
    return null;
  }
}

const NOW = new Date(2024, 0, 2, 3, 4);
function setup(opts: { users?: string[]; maxMessageSize?: number; maxRecipients?: number } = {}) {
  const store = new MemoryStore();
  const dir = new MemoryDirectory(opts.users ?? ["alice", "bob"]);
  const s = new SmtpSession(
    { domain: "mx.test", maxMessageSize: opts.maxMessageSize ?? 1000, maxRecipients: opts.maxRecipients ?? 100, now: () => NOW },
    dir,
    store,
    "127.0.0.1",
  );
  const say = (line: string) => wire(s.handleLine(line));
  return { s, store, dir, say };
}
const wire = (r: SmtpResult) => r.replies.map(formatSmtpReply).join("");
const code = (r: string) => Number(r.slice(0, 3));
const msg = (text: string, tooBig = false, noRoom = false): MessageEvent => ({ kind: "message", bytes: Buffer.from(text), tooBig, noRoom, charged: 0, received: text.length });

describe("SmtpSession: the assignment's dialogue", () => {
  test("word for word", async () => {
    const { s, store, say } = setup({ users: ["gb"] });
    expect(formatSmtpReply(s.greeting())).toBe("220 mx.test Service ready\r\n");
    expect(say("HELO iitkgp.edu")).toBe("250 OK Hello iitkgp.edu\r\n");
    expect(say("MAIL FROM: <ag@iitkgp.edu>")).toBe("250 <ag@iitkgp.edu>... Sender ok\r\n");
    expect(say("RCPT TO: gb@iitkgp.edu")).toBe("250 gb... Recipient ok\r\n");
    expect(say("DATA")).toBe("354 Start mail input; end with <CRLF>.<CRLF>\r\n");
    expect(s.expectingData).toBe(true);
    const r = await s.handleMessage(msg("From: ag@iitkgp.edu\r\nTo: gb@iitkgp.edu\r\nSubject: Test mail\r\nThis is a test mail.\r\nHow are you doing?\r\n"));
    expect(wire(r)).toBe("250 OK Message accepted for delivery\r\n");
    expect(r.log).toContain("to=gb");
    expect(s.expectingData).toBe(false);
    expect(store.boxes.get("gb")![0]!.toString()).toBe(
      "From: ag@iitkgp.edu\r\nTo: gb@iitkgp.edu\r\nSubject: Test mail\r\nReceived: 2024-01-02 : 03 : 04\r\nThis is a test mail.\r\nHow are you doing?\r\n.\r\n",
    );
    const q = s.handleLine("QUIT");
    expect(wire(q)).toBe("221 mx.test Service closing transmission channel\r\n");
    expect(q.close).toBe(true);
  });
});

describe("SmtpSession: commands", () => {
  test("EHLO lists PIPELINING, SIZE and 8BITMIME as a multi-line reply", () => {
    const { say } = setup();
    const r = say("EHLO client.example");
    const lines = r.split("\r\n").slice(0, -1);
    expect(lines[0]).toBe("250-mx.test Hello client.example");
    expect(lines.slice(1, -1).every((l) => l.startsWith("250-"))).toBe(true);
    expect(lines.at(-1)!.startsWith("250 ")).toBe(true);
    const ext = lines.slice(1).map((l) => l.slice(4));
    expect(ext).toContain("PIPELINING");
    expect(ext).toContain("SIZE 1000");
    expect(ext).toContain("8BITMIME");
  });

  test("commands are case-insensitive", () => {
    const { say } = setup();
    expect(code(say("hElO x"))).toBe(250);
    expect(code(say("mail from:<a@b>"))).toBe(250);
    expect(code(say("rcpt to:<alice@x>"))).toBe(250);
    expect(code(say("noop"))).toBe(250);
    expect(code(say("Rset"))).toBe(250);
    expect(code(say("vrfy alice"))).toBe(252);
  });

  test("MAIL FROM variants: brackets, space, no brackets, null sender, SIZE and BODY", () => {
    for (const arg of ["FROM:<a@b.c>", "FROM: <a@b.c>", "FROM:a@b.c", "FROM: a@b.c", "FROM:<@r1,@r2:a@b.c>", "FROM:<a@b.c> SIZE=10 BODY=8BITMIME"]) {
      const { say } = setup();
      say("HELO x");
      expect(say("MAIL " + arg)).toBe("250 <a@b.c>... Sender ok\r\n");
    }
    const { say } = setup();
    say("HELO x");
    expect(say("MAIL FROM:<>")).toBe("250 <>... Sender ok\r\n");
  });

  test("501 for bad parameters, 555 for unknown ones, 552 for a SIZE over the limit", () => {
    const { say } = setup();
    say("HELO x");
    expect(code(say("MAIL"))).toBe(501);
    expect(code(say("MAIL TO:<a@b>"))).toBe(501);
    expect(code(say("MAIL FROM:<a@b"))).toBe(501);
    expect(code(say("MAIL FROM:<not an address>"))).toBe(501);
    expect(code(say("MAIL FROM:<a@b> SIZE=abc"))).toBe(501);
    expect(code(say("MAIL FROM:<a@b> SIZE=10=20"))).toBe(501);
    expect(code(say("MAIL FROM:<a@b> SIZE=5 size=6"))).toBe(501);
    expect(code(say("MAIL FROM:<a@b> FOO=1"))).toBe(555);
    expect(code(say("MAIL FROM:<a@b> SIZE=1001"))).toBe(552);
    expect(code(say("MAIL FROM:<a@b> SIZE=1000"))).toBe(250);
    expect(code(say("RCPT"))).toBe(501);
    expect(code(say("RCPT TO:"))).toBe(501);
    expect(code(say("RCPT TO:<>"))).toBe(501);
    expect(code(say("DATA now"))).toBe(501);
    expect(code(say("RSET now"))).toBe(501);
    expect(code(say("VRFY"))).toBe(501);
    expect(code(say("HELO"))).toBe(501);
    expect(code(say("EHLO a b"))).toBe(501);
  });

  test("503 for commands out of sequence", () => {
    const { say } = setup();
    expect(code(say("MAIL FROM:<a@b>"))).toBe(503);
    expect(code(say("RCPT TO:<alice@b>"))).toBe(503);
    expect(code(say("DATA"))).toBe(503);
    say("HELO x");
    expect(code(say("RCPT TO:<alice@b>"))).toBe(503);
    expect(code(say("DATA"))).toBe(503);
    say("MAIL FROM:<a@b>");
    expect(code(say("MAIL FROM:<a@b>"))).toBe(503);
    expect(code(say("DATA"))).toBe(503);
    expect(code(say("RCPT TO:<nobody@b>"))).toBe(550);
    expect(code(say("DATA"))).toBe(554); // recipients tried, none valid
  });

  test("500 for unknown commands, garbage and a too-long line; the session goes on", () => {
    const { s, say } = setup();
    expect(code(say("FOO bar"))).toBe(500);
    expect(code(say(""))).toBe(500);
    expect(code(say("\x00\x01\xff"))).toBe(500);
    expect(wire(s.lineTooLong())).toStartWith("500 ");
    expect(code(say("HELO x"))).toBe(250);
  });

  test("RSET and a new HELO forget the transaction", () => {
    const { say } = setup();
    say("HELO x");
    say("MAIL FROM:<a@b>");
    say("RCPT TO:<alice@b>");
    expect(say("RSET")).toBe("250 OK Reset state\r\n");
    expect(code(say("DATA"))).toBe(503);
    say("MAIL FROM:<a@b>");
    say("HELO y");
    expect(code(say("RCPT TO:<alice@b>"))).toBe(503);
  });
});

describe("SmtpSession: recipients", () => {
  test("unknown users, path tricks and control characters get 550", () => {
    const { say } = setup();
    say("HELO x");
    say("MAIL FROM:<a@b>");
    for (const rcpt of ["<nobody@x>", "<../alice@x>", "<../x>", "</@x>", "</etc/passwd@x>", "<alice/..@x>", "<ali\x00ce@x>", "<.@x>", "<..@x>", "<alice\x00@x>"])
      expect(say("RCPT TO:" + rcpt)).toBe("550 No such user\r\n");
  });

  test("postmaster in any case, with or without a domain, goes to the postmaster user", () => {
    const { say } = setup();
    say("HELO x");
    say("MAIL FROM:<>");
    expect(say("RCPT TO:<postmaster>")).toBe("250 alice... Recipient ok\r\n");
    expect(say("RCPT TO:<PostMaster@mx.test>")).toBe("250 alice... Recipient ok\r\n");
  });

  test("several recipients each get one copy; duplicates only one", async () => {
    const users = Array.from({ length: 100 }, (_, i) => `u${i}`);
    const { s, store, say } = setup({ users, maxRecipients: 200 });
    say("EHLO x");
    say("MAIL FROM:<a@b>");
    for (const u of users) expect(code(say(`RCPT TO:<${u}@mx.test>`))).toBe(250);
    expect(code(say("RCPT TO:<u0@mx.test>"))).toBe(250);
    say("DATA");
    await s.handleMessage(msg("Subject: hi\r\n\r\nx\r\n"));
    expect(store.boxes.size).toBe(100);
    for (const u of users) expect(store.boxes.get(u)!.length).toBe(1);
  });

  test("over maxRecipients: 452", () => {
    const { say } = setup({ maxRecipients: 2 });
    say("HELO x");
    say("MAIL FROM:<a@b>");
    expect(code(say("RCPT TO:<alice@x>"))).toBe(250);
    expect(code(say("RCPT TO:<bob@x>"))).toBe(250);
    expect(code(say("RCPT TO:<alice@x>"))).toBe(452);
  });

  test("the directory is asked each time: a user added later is accepted", () => {
    const { say, dir } = setup();
    say("HELO x");
    say("MAIL FROM:<a@b>");
    expect(code(say("RCPT TO:<carol@x>"))).toBe(550);
    dir.names.push("carol");
    expect(code(say("RCPT TO:<carol@x>"))).toBe(250);
  });
});

describe("SmtpSession: message", () => {
  async function send(text: string, tooBig = false, fail = false) {
    const t = setup();
    t.store.fail = fail;
    t.say("HELO x");
    t.say("MAIL FROM:<a@b>");
    t.say("RCPT TO:<alice@x>");
    expect(code(t.say("DATA"))).toBe(354);
    const r = await t.s.handleMessage(msg(text, tooBig));
    return { ...t, r: wire(r) };
  }

  test("too big: 552 and nothing stored; the session is back to commands", async () => {
    const { r, store, say } = await send("", true);
    expect(r).toBe("552 Message size exceeds fixed maximum message size\r\n");
    expect(store.count()).toBe(0);
    expect(code(say("NOOP"))).toBe(250);
    expect(code(say("DATA"))).toBe(503);
  });

  test("a store failure is 451, never 250", async () => {
    const { r, store } = await send("x\r\n", false, true);
    expect(code(r)).toBe(451);
    expect(store.count()).toBe(0);
  });

  test("after a message the transaction is reset and a second one works", async () => {
    const { s, r, store, say } = await send("Subject: 1\r\n\r\n");
    expect(code(r)).toBe(250);
    expect(code(say("RCPT TO:<alice@x>"))).toBe(503);
    say("MAIL FROM:<a@b>");
    say("RCPT TO:<bob@x>");
    say("DATA");
    expect(code(wire(await s.handleMessage(msg("Subject: 2\r\n\r\n"))))).toBe(250);
    expect(store.boxes.get("alice")!.length).toBe(1);
    expect(store.boxes.get("bob")!.length).toBe(1);
  });

  test("handleMessage outside DATA throws", async () => {
    const { s } = setup();
    expect(s.handleMessage(msg("x"))).rejects.toThrow();
  });
});

describe("parsePath", () => {
  test("brackets, bare addresses, params and too-long addresses", () => {
    expect(parsePath("<a@b> SIZE=1")).toEqual({ addr: "a@b", params: ["SIZE=1"] });
    expect(parsePath(" a@b ")).toEqual({ addr: "a@b", params: [] });
    expect(parsePath("<>")).toEqual({ addr: "", params: [] });
    expect("error" in parsePath("<a@b")).toBe(true);
    expect("error" in parsePath("<" + "a".repeat(400) + "@b>")).toBe(true);
  });
});

test("an empty MAIL FROM: is a syntax error, not the null sender (RFC 5321 4.1.2)", () => {
  const s = new SmtpSession({ domain: "d", maxMessageSize: 1000, maxRecipients: 10 }, { resolve: () => "alice" }, { deliver: async () => {} });
  s.handleLine("EHLO c");
  for (const line of ["MAIL FROM:", "MAIL FROM:   ", "MAIL FROM:\t"]) expect(s.handleLine(line).replies[0]!.code).toBe(501);
  expect(s.handleLine("MAIL FROM:<>").replies[0]!.code).toBe(250);
});

test("only ASCII space and tab separate words: Unicode spaces and a byte order mark are no separators (RFC 5321 2.4)", () => {
  const s = new SmtpSession({ domain: "d", maxMessageSize: 1000, maxRecipients: 10 }, { resolve: () => "alice" }, { deliver: async () => {} });
  for (const line of ["EHLO\u00a0x", "NOOP\u3000", "RSET\ufeff", "MAIL\u2003FROM:<a@b>"]) expect(s.handleLine(line).replies[0]!.code).toBe(500);
  expect(s.handleLine("EHLO x\u00a0y").replies[0]!.code).toBe(501);
  expect(s.handleLine("EHLO \u00e9t\u00e9.example").replies[0]!.code).toBe(501);
  expect(s.handleLine("EHLO x").replies[0]!.code).toBe(250);
  expect(s.handleLine("MAIL FROM:<a@b>\u00a0SIZE=10").replies[0]!.code).toBe(501);
  expect(s.handleLine("MAIL FROM:<a@b>\tSIZE=10").replies[0]!.code).toBe(250);
  expect(s.handleLine("RCPT TO:<alice@d>\u00a0").replies[0]!.code).toBe(501);
  expect(s.handleLine(" RCPT  TO:<alice@d>  ").replies[0]!.code).toBe(250);
});

test("MAIL FROM with RFC 4954's AUTH= parameter is accepted", () => {
  const s = new SmtpSession({ domain: "d", maxMessageSize: 1000, maxRecipients: 10 }, { resolve: () => "alice" }, { deliver: async () => {} });
  s.handleLine("EHLO c");
  expect(s.handleLine("MAIL FROM:<a@b> AUTH=<>").replies[0]!.code).toBe(250);
});

test("a recipient the store says cannot take mail now gets 450; the transaction goes on with the others", async () => {
  const delivered: string[][] = [];
  const store = { deliver: async (users: readonly string[]) => void delivered.push([...users]), unavailable: (u: string) => (u === "bob" ? "EISDIR" : null) };
  const s = new SmtpSession({ domain: "d", maxMessageSize: 1000, maxRecipients: 10 }, { resolve: (n) => n }, store);
  s.handleLine("HELO c");
  s.handleLine("MAIL FROM:<a@b>");
  const bob = s.handleLine("RCPT TO:<bob@d>");
  expect(bob.replies[0]!.code).toBe(450);
  expect(bob.log).toContain("EISDIR");
  expect(s.handleLine("RCPT TO:<alice@d>").replies[0]!.code).toBe(250);
  expect(s.handleLine("DATA").replies[0]!.code).toBe(354);
  const r = await s.handleMessage({ bytes: Buffer.from("Subject: x\r\n\r\nhi\r\n") } as Parameters<SmtpSession["handleMessage"]>[0]);
  expect(r.replies[0]!.code).toBe(250);
  expect(delivered).toEqual([["alice"]]);
});

describe("SmtpSession: addresses and reply text as real clients send them", () => {
  test('a quoted local part: "bob"@x is bob; "john smith"@x is a valid sender', () => {
    const { say } = setup();
    say("EHLO c");
    expect(say('MAIL FROM:<"john smith"@example.org>')).toBe('250 <"john smith"@example.org>... Sender ok\r\n');
    expect(say('RCPT TO:<"bob"@mx.test>')).toBe("250 bob... Recipient ok\r\n");
    expect(say('RCPT TO:<"b\\ob"@mx.test>')).toBe("250 bob... Recipient ok\r\n");
    expect(code(say('RCPT TO:<"bob smith"@mx.test>'))).toBe(550);
    expect(code(say('MAIL FROM:<"unterminated@x>'))).toBe(503); // a sender is already given
  });

  test("a recipient without a domain is a local user; an unknown one is 550", () => {
    const { say } = setup();
    say("HELO c");
    say("MAIL FROM:<a@b>");
    expect(say("RCPT TO:<alice>")).toBe("250 alice... Recipient ok\r\n");
    expect(say("RCPT TO:bob")).toBe("250 bob... Recipient ok\r\n");
    expect(code(say("RCPT TO:<carol>"))).toBe(550);
    expect(code(say("RCPT TO:<../alice>"))).toBe(550);
  });

  test("a non-ASCII sender is refused without SMTPUTF8 (not altered); control bytes never reach a reply", () => {
    const { say } = setup();
    const helo = say("HELO a\x00b");
    expect(code(helo)).toBe(501);
    expect(helo).not.toMatch(/[^\x20-\x7e\r\n]/);
    expect(code(say("HELO a"))).toBe(250);
    // RFC 6531: a UTF-8 address needs SMTPUTF8 on MAIL; bytes that are not UTF-8 never make one.
    expect(say("MAIL FROM:<j\u00f6rg@b>")).toBe("553 Non-ASCII address, and MAIL did not declare SMTPUTF8\r\n");
    expect(code(say("MAIL FROM:<j\udfffrg@b> SMTPUTF8"))).toBe(501);
    expect(code(say("MAIL FROM:<a@b> SMTPUTF8=yes"))).toBe(501);
    const bad = say("MAIL FROM:<a\x01b@c>");
    expect(code(bad)).toBe(501);
    expect(bad).not.toMatch(/[^\x20-\x7e\r\n]/);
  });

  test("a non-ASCII recipient is refused too, before case folding could take the Kelvin sign for a k", () => {
    const s = new SmtpSession({ domain: "d", maxMessageSize: 1000, maxRecipients: 10 }, { resolve: (n) => (["kate"].includes(n.toLowerCase()) ? n.toLowerCase() : null) }, new MemoryStore());
    s.handleLine("HELO c");
    s.handleLine("MAIL FROM:<a@b>");
    expect(s.handleLine("RCPT TO:<\u212Aate@d>").replies[0]!.code).toBe(553);
    expect(s.handleLine("RCPT TO:<KATE@d>").replies[0]!.code).toBe(250);
    // Declared SMTPUTF8, it is a well-formed address, and no user of ours.
    s.handleLine("RSET");
    expect(s.handleLine("MAIL FROM:<j\u00f6rg@b> SMTPUTF8").replies[0]!.code).toBe(250);
    expect(s.handleLine("RCPT TO:<\u212Aate@d>").replies[0]!.code).toBe(550);
  });

  test("with SMTPUTF8, no case folding reaches a local domain or a user just removed (the Kelvin sign is no k)", () => {
    const users = { resolve: () => null, recentlyRemoved: (n: string) => n.toLowerCase() === "karl" };
    const s = new SmtpSession({ domain: "d", maxMessageSize: 1000, maxRecipients: 10, localDomains: ["kexample.org", "d"] }, users, new MemoryStore());
    s.handleLine("EHLO c");
    expect(s.handleLine("MAIL FROM:<a@b> SMTPUTF8").replies[0]!.code).toBe(250);
    expect(s.handleLine("RCPT TO:<kate@\u212Aexample.org>").replies[0]!.code).toBe(550);
    expect(s.handleLine("RCPT TO:<\u212Aarl@d>").replies[0]!.code).toBe(550);
    expect(s.handleLine("RCPT TO:<karl@d>").replies[0]!.code).toBe(450);
    // 320 octets at most, counted in UTF-8: 200 "ö" are 400.
    expect(s.handleLine(`RCPT TO:<${"\u00f6".repeat(200)}@d>`).replies[0]!.code).toBe(501);
  });

  test("address literals: [IPv6:...] and [IPv4] domains are accepted, a broken literal is not", () => {
    const { say } = setup();
    say("EHLO [IPv6:::1]");
    expect(say("MAIL FROM:<a@[IPv6:::1]>")).toBe("250 <a@[IPv6:::1]>... Sender ok\r\n");
    expect(say("RCPT TO:<alice@[IPv6:2001:db8::1]>")).toBe("250 alice... Recipient ok\r\n");
    expect(say("RCPT TO:<bob@[127.0.0.1]>")).toBe("250 bob... Recipient ok\r\n");
    expect(code(say("RCPT TO:<bob@[a[b]>"))).toBe(550);
    say("RSET");
    expect(code(say("MAIL FROM:<a@[IPv6:::1>"))).toBe(501);
    expect(code(say("MAIL FROM:<a@[x@y]>"))).toBe(501);
  });

  test("a quoted local part may hold '>'; text glued to the closing '>' is a syntax error, not a parameter", () => {
    const { say } = setup();
    say("EHLO c");
    expect(say('MAIL FROM:<"a>b"@example.org>')).toBe('250 <"a>b"@example.org>... Sender ok\r\n');
    expect(say("RCPT TO:<alice@x>junk")).toStartWith("501 ");
    expect(say("RCPT TO:<alice@x> junk")).toStartWith("555 ");
    say("RSET");
    expect(say("MAIL FROM:<a@b>SIZE=10")).toStartWith("501 ");
  });

  test("echoed client text is cut so that every reply line stays within 512 octets; a HELO domain over 255 octets is refused", () => {
    const { say } = setup();
    expect(code(say(`HELO ${"h".repeat(256)}`))).toBe(501);
    expect(code(say(`EHLO ${"\u00e9".repeat(200)}`))).toBe(501); // 400 octets
    const long = "h".repeat(255);
    for (const line of [`HELO ${long}`, `EHLO ${long}`, `MAIL FROM:<a@b> X-${"p".repeat(900)}`, `MAIL FROM:<a@b> ${"K".repeat(900)}=1 ${"K".repeat(900)}=1`, `MAIL FROM:<${"x".repeat(300)}@b(>`]) {
      const reply = say(line);
      for (const l of reply.split("\r\n").slice(0, -1)) expect(l.length + 2).toBeLessThanOrEqual(512);
      expect(reply).toMatch(/\.\.\.|Hello|given twice/);
      say("RSET");
    }
  });

  test("a message without any header line gets From and To from the envelope, the Received line, then a blank line", async () => {
    const { s, store, say } = setup();
    say("HELO c");
    say("MAIL FROM:<a@b>");
    say("RCPT TO:<alice@x>");
    say("DATA");
    await s.handleMessage(msg("just a body line\r\n"));
    expect(store.boxes.get("alice")![0]!.toString()).toBe("From: a@b\r\nTo: alice@x\r\nReceived: 2024-01-02 : 03 : 04\r\n\r\njust a body line\r\n.\r\n");
  });

  test("From and To are added only when missing (Cc or Bcc count as recipients); several recipients are not named, the null sender is MAILER-DAEMON", async () => {
    const { s, store, say } = setup();
    const send = async (from: string, rcpts: string[], text: string) => {
      say(`MAIL FROM:<${from}>`);
      for (const r of rcpts) say(`RCPT TO:<${r}>`);
      say("DATA");
      await s.handleMessage(msg(text));
    };
    say("EHLO c");
    await send("a@b", ["alice@x"], "From: Al <al@c>\r\nSubject: s\r\n\r\nbody\r\n");
    await send("a@b", ["alice@x"], "Subject: s\r\nBcc: hidden@x\r\n\r\nbody\r\n");
    await send("", ["alice@x", "bob@x", "ALICE@y"], "Subject: s\r\n\r\nbody\r\n");
    await send("a@b", ["alice@x"], "");
    expect(store.boxes.get("alice")!.map(String)).toEqual([
      "To: alice@x\r\nFrom: Al <al@c>\r\nSubject: s\r\nReceived: 2024-01-02 : 03 : 04\r\n\r\nbody\r\n.\r\n",
      "From: a@b\r\nSubject: s\r\nReceived: 2024-01-02 : 03 : 04\r\nBcc: hidden@x\r\n\r\nbody\r\n.\r\n",
      "From: MAILER-DAEMON\r\nTo: undisclosed-recipients:;\r\nSubject: s\r\nReceived: 2024-01-02 : 03 : 04\r\n\r\nbody\r\n.\r\n",
      "From: a@b\r\nTo: alice@x\r\nReceived: 2024-01-02 : 03 : 04\r\n.\r\n",
    ]);
  });
});
