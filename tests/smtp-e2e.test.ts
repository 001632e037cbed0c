// End-to-end: the real smtpmail program as a child process, spoken to over TCP.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { seeded } from "./helpers/random.ts";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { scanBuffer } from "../lib/mailbox-scanner.ts";
import { unstuff } from "./helpers/unstuff.ts";
import { command, makeRoot, removeRoot, startSmtp, type Running } from "./helpers/servers.ts";
import { dataOf, sendOne, SmtpConn } from "./helpers/smtp-conn.ts";
import { halfClose } from "./helpers/wire.ts";

const running: Running[] = [];
const roots: string[] = [];
const conns: SmtpConn[] = [];
afterAll(async () => {
  for (const c of conns) c.destroy();
  for (const r of running) if (r.proc.exitCode === null && r.proc.signalCode === null) r.proc.kill(9);
  await Promise.all(running.map((r) => r.proc.exited));
  for (const r of roots) removeRoot(r);
});

function root(users: Record<string, string>): string {
  const r = makeRoot(users);
  roots.push(r);
  return r;
}
async function server(r: string, args: string[] = []): Promise<Running> {
  const s = await startSmtp(r, args);
  running.push(s);
  return s;
}

/** A connection that has been greeted and has said HELO. */
async function session(port: number): Promise<SmtpConn> {
  const c = await SmtpConn.open(port);
  conns.push(c);
  expect(await c.code()).toBe(220);
  expect(await c.cmd("HELO client.test")).toStartWith("250 ");
  return c;
}

function mailbox(r: string, user: string): Buffer {
  const p = join(r, user, "mymailbox");
  return existsSync(p) ? readFileSync(p) : Buffer.alloc(0);
}
/** The stored records of a mailbox, checking that it scans cleanly to the end. */
function records(r: string, user: string, whole = true): string[] {
  const file = mailbox(r, user);
  const s = scanBuffer(file);
  if (whole) expect(s.validEnd).toBe(file.length);
  return s.messages.map((m) => file.subarray(m.offset, m.offset + m.length).toString("utf8"));
}
/** One transaction whose text goes out as it is (no dot-stuffing, bare LFs kept), then "." CRLF; the final reply. */
async function sendRaw(c: SmtpConn, to: string, text: string): Promise<string> {
  expect(await c.cmd("MAIL FROM:<a@b>")).toStartWith("250 ");
  expect(await c.cmd(`RCPT TO:<${to}>`)).toStartWith("250 ");
  expect(await c.cmd("DATA")).toStartWith("354 ");
  c.send(text + ".\r\n");
  return c.reply();
}
const subjectOf = (rec: string) => /^Subject: (.*)\r?$/m.exec(rec)?.[1] ?? null;
const RECEIVED = /^Received: \d{4}-\d\d-\d\d : \d\d : \d\d\r$/m;

// Each test that checks a whole mailbox has its own user.
const USERS: Record<string, string> = { alice: "a", bob: "b", gb: "g", rand: "r", pipe: "p", smug: "s", smug2: "s", gone: "g", halfclose: "h", halfclose2: "h", dotlf: "d", biglf: "b", lfonly: "l", lfdot: "l" };
for (let i = 0; i < 100; i++) USERS[`u${i}`] = "p";

let main: Running;
let mainRoot: string;
beforeAll(async () => {
  mainRoot = root(USERS);
  main = await server(mainRoot, ["--domain", "iitkgp.edu"]);
});

describe("the assignment's dialogue", () => {
  test("replies word for word and the stored format", async () => {
    const c = await SmtpConn.open(main.port);
    conns.push(c);
    expect(await c.reply()).toBe("220 iitkgp.edu Service ready\r\n");
    expect(await c.cmd("HELO iitkgp.edu")).toBe("250 OK Hello iitkgp.edu\r\n");
    expect(await c.cmd("MAIL FROM: <ag@iitkgp.edu>")).toBe("250 <ag@iitkgp.edu>... Sender ok\r\n");
    expect(await c.cmd("RCPT TO: gb@iitkgp.edu")).toBe("250 gb... Recipient ok\r\n");
    expect(await c.cmd("DATA")).toBe('354 Start mail input; end with <CRLF>.<CRLF>\r\n');
    c.send("From: ag@iitkgp.edu\r\nTo: gb@iitkgp.edu\r\nSubject: Test mail\r\nThis is a test mail.\r\nHow are you doing?\r\n.\r\n");
    expect(await c.reply()).toBe("250 OK Message accepted for delivery\r\n");
    expect(await c.cmd("QUIT")).toBe("221 iitkgp.edu Service closing transmission channel\r\n");
    await c.untilClosed();
    const [rec, ...rest] = records(mainRoot, "gb");
    expect(rest).toEqual([]);
    const lines = rec!.split("\r\n");
    expect(lines.slice(0, 3)).toEqual(["From: ag@iitkgp.edu", "To: gb@iitkgp.edu", "Subject: Test mail"]);
    expect(lines[3]).toMatch(/^Received: \d{4}-\d\d-\d\d : \d\d : \d\d$/);
    expect(lines.slice(4)).toEqual(["This is a test mail.", "How are you doing?", ".", ""]);
  });
});

describe("commands", () => {
  test("EHLO advertises PIPELINING, SIZE and 8BITMIME", async () => {
    const c = await SmtpConn.open(main.port);
    conns.push(c);
    await c.reply();
    const r = await c.cmd("EHLO me.test");
    const lines = r.trimEnd().split("\r\n");
    expect(lines[0]).toBe("250-iitkgp.edu Hello me.test");
    const ext = lines.slice(1).map((l) => l.slice(4));
    expect(ext).toContain("PIPELINING");
    expect(ext).toContain("SIZE 10485760");
    expect(ext).toContain("8BITMIME");
    expect(lines.at(-1)).toMatch(/^250 /);
    c.close();
  });

  test("case-insensitive commands; MAIL FROM with and without brackets and spaces; null sender", async () => {
    const c = await session(main.port);
    for (const from of ["mail from:<x@y.z>", "MAIL FROM: <x@y.z>", "Mail From:x@y.z", "MAIL FROM: x@y.z"]) {
      expect(await c.cmd(from)).toBe("250 <x@y.z>... Sender ok\r\n");
      expect(await c.cmd("rset")).toStartWith("250 ");
    }
    expect(await c.cmd("MAIL FROM:<>")).toBe("250 <>... Sender ok\r\n");
    expect(await c.cmd("rcpt to: bob@iitkgp.edu")).toBe("250 bob... Recipient ok\r\n");
    expect(await c.cmd("Rcpt To:<BOB@iitkgp.edu>")).toBe("250 bob... Recipient ok\r\n");
    expect(await c.cmd("data")).toStartWith("354 ");
    c.send(dataOf("Subject: bounce-like\r\n\r\nnull sender\r\n"));
    expect(await c.code()).toBe(250);
    expect(await c.cmd("noop")).toStartWith("250 ");
    expect(await c.cmd("vrfy bob")).toStartWith("252 ");
    expect(await c.cmd("quit")).toStartWith("221 ");
    expect(records(mainRoot, "bob").filter((r) => subjectOf(r) === "bounce-like").length).toBe(1);
  });

  test("500, 501, 503 and 552 cases", async () => {
    const c = await SmtpConn.open(main.port);
    conns.push(c);
    await c.reply();
    expect(await c.cmd("BOGUS")).toStartWith("500 ");
    expect(await c.cmd("MAIL FROM:<a@b>")).toStartWith("503 ");
    expect(await c.cmd("HELO")).toStartWith("501 ");
    expect(await c.cmd("HELO x")).toStartWith("250 ");
    expect(await c.cmd("RCPT TO:<alice@x>")).toStartWith("503 ");
    expect(await c.cmd("DATA")).toStartWith("503 ");
    expect(await c.cmd("MAIL FROM:<a@b")).toStartWith("501 ");
    expect(await c.cmd("MAIL FROM:<a@b> SIZE=99999999999")).toStartWith("552 ");
    expect(await c.cmd("MAIL FROM:<a@b>")).toStartWith("250 ");
    expect(await c.cmd("MAIL FROM:<a@b>")).toStartWith("503 ");
    expect(await c.cmd("DATA")).toStartWith("503 ");
    expect(await c.cmd("RCPT TO:")).toStartWith("501 ");
    expect(await c.cmd("DATA extra")).toStartWith("501 ");
    expect(await c.cmd("QUIT")).toStartWith("221 ");
  });

  test("an over-long command line gets 500 and the session continues; MAIL may use the room SIZE= and AUTH= add (RFC 1870, RFC 4954)", async () => {
    const c = await session(main.port);
    // 512 octets, plus 26 for SIZE= and 500 for AUTH=: 1038 with the CRLF.
    const sender = `${"s".repeat(64)}@${"d".repeat(200)}`;
    const mail = `MAIL FROM:<${sender}> SIZE=1000 BODY=8BITMIME AUTH=<${sender}>`;
    expect(mail.length + 2).toBeGreaterThan(512);
    expect(await c.cmd(mail)).toStartWith("250 ");
    expect(await c.cmd("RSET")).toStartWith("250 ");
    expect(await c.cmd("NOOP " + "x".repeat(1031))).toStartWith("250 "); // 1038 octets
    expect(await c.cmd("NOOP " + "x".repeat(1032))).toStartWith("500 ");
    expect(await c.cmd("MAIL FROM:<" + "a".repeat(1100) + "@b>")).toStartWith("500 ");
    expect(await c.cmd("NOOP")).toStartWith("250 ");
    c.close();
  });

  test("a 100 KB line without a newline: 500, memory stays bounded, then the session goes on", async () => {
    const c = await session(main.port);
    c.send("A".repeat(100 * 1024));
    expect(await c.reply()).toStartWith("500 ");
    c.send("AAAA\r\n");
    expect(await c.cmd("NOOP")).toStartWith("250 ");
    c.close();
  });

  test("random bytes get error replies or a close; the server keeps serving others", async () => {
    const next = seeded(12345);
    const rnd = () => next(256);
    for (let round = 0; round < 5; round++) {
      const c = await SmtpConn.open(main.port);
      conns.push(c);
      await c.reply();
      c.send(Buffer.from(Array.from({ length: 20_000 }, rnd)));
      c.send("\r\nNOOP\r\n");
      // every reply is well-formed; the last one answers NOOP (or the server closed)
      let last = "";
      for (let i = 0; i < 500 && !last.startsWith("250 OK\r\n"); i++) {
        try {
          last = await c.reply(5000);
        } catch {
          break;
        }
        expect(last).toMatch(/^[2-5]\d\d[ -]/);
      }
      c.destroy();
    }
    const ok = await session(main.port);
    expect(await sendOne(ok, "a@b", ["rand@x"], "Subject: after-random\r\n\r\nfine\r\n")).toStartWith("250 ");
    ok.close();
    expect(records(mainRoot, "rand").map(subjectOf)).toContain("after-random");
  });

  test("pipelining: many commands in one write get their replies in order", async () => {
    const c = await SmtpConn.open(main.port);
    conns.push(c);
    await c.reply();
    const n = 30;
    let batch = "EHLO pipe.test\r\n";
    for (let i = 0; i < n; i++) batch += `MAIL FROM:<p@q>\r\nRCPT TO:<pipe@x>\r\nRCPT TO:<nobody@x>\r\nDATA\r\n${dataOf(`Subject: pipe-${i}\r\n\r\nbody ${i}\r\n`)}`;
    batch += "QUIT\r\n";
    c.send(batch);
    expect(await c.reply()).toStartWith("250-");
    for (let i = 0; i < n; i++) {
      expect(await c.code()).toBe(250);
      expect(await c.code()).toBe(250);
      expect(await c.code()).toBe(550);
      expect(await c.code()).toBe(354);
      expect(await c.code()).toBe(250);
    }
    expect(await c.code()).toBe(221);
    await c.untilClosed();
    expect(records(mainRoot, "pipe").map(subjectOf)).toEqual(Array.from({ length: n }, (_, i) => `pipe-${i}`));
  });
});

describe("recipients", () => {
  test("100 recipients each get one copy", async () => {
    const c = await session(main.port);
    expect(await c.cmd("MAIL FROM:<many@x>")).toStartWith("250 ");
    for (let i = 0; i < 100; i++) expect(await c.cmd(`RCPT TO:<u${i}@iitkgp.edu>`)).toBe(`250 u${i}... Recipient ok\r\n`);
    expect(await c.cmd("DATA")).toStartWith("354 ");
    c.send(dataOf("Subject: to-hundred\r\n\r\nhello all\r\n"));
    expect(await c.code()).toBe(250);
    c.close();
    for (let i = 0; i < 100; i++) expect(records(mainRoot, `u${i}`).filter((r) => subjectOf(r) === "to-hundred").length).toBe(1);
  });

  test("a recipient whose mailbox cannot be written gets 450 alone; the others get the message once, on every retry", async () => {
    const r = root({ ok: "o", broken: "b" });
    mkdirSync(join(r, "broken", "mymailbox"), { recursive: true }); // a directory where the file should be
    const s = await server(r);
    for (let attempt = 0; attempt < 2; attempt++) {
      const c = await session(s.port);
      expect(await c.cmd("MAIL FROM:<a@b>")).toStartWith("250 ");
      expect(await c.cmd("RCPT TO:<ok@x>")).toStartWith("250 ");
      expect(await c.cmd("RCPT TO:<broken@x>")).toStartWith("450 ");
      expect(await c.cmd("DATA")).toStartWith("354 ");
      c.send(dataOf(`Subject: attempt-${attempt}\r\n\r\nx\r\n`));
      expect(await c.code()).toBe(250);
      c.close();
    }
    expect(records(r, "ok").map(subjectOf)).toEqual(["attempt-0", "attempt-1"]);
    for (let i = 0; i < 100 && !s.log().includes("deferred"); i++) await Bun.sleep(20);
    expect(s.log()).toContain("recipient broken deferred (450)");
  });

  test("a copy that fails after DATA while the others are stored is deferred: 250, the others get it once, it arrives once its mailbox is fixed", async () => {
    const r = root({ ok: "o", later: "l" });
    const s = await server(r);
    const c = await session(s.port);
    expect(await c.cmd("MAIL FROM:<a@b>")).toStartWith("250 ");
    expect(await c.cmd("RCPT TO:<ok@x>")).toStartWith("250 ");
    expect(await c.cmd("RCPT TO:<later@x>")).toStartWith("250 ");
    // Broken between RCPT and the end of DATA: a directory where the file should be.
    mkdirSync(join(r, "later", "mymailbox"), { recursive: true });
    expect(await c.cmd("DATA")).toStartWith("354 ");
    c.send(dataOf(`Subject: once\r\n\r\nx\r\n`));
    // Was 451 for the whole message, after ok's copy was stored: every retry gave ok another.
    expect(await c.code()).toBe(250);
    c.close();
    expect(records(r, "ok").map(subjectOf)).toEqual(["once"]);
    for (let i = 0; i < 100 && !s.log().includes("deferred"); i++) await Bun.sleep(20);
    expect(s.log()).toContain("delivery to later deferred");
    rmSync(join(r, "later", "mymailbox"), { recursive: true });
    for (let i = 0; i < 400 && !existsSync(join(r, "later", "mymailbox")); i++) await Bun.sleep(25);
    for (let i = 0; i < 100 && records(r, "later").length === 0; i++) await Bun.sleep(20);
    expect(records(r, "later").map(subjectOf)).toEqual(["once"]);
    expect(records(r, "ok").map(subjectOf)).toEqual(["once"]);
  });

  test("--local-domains: other domains get 550 relay denied; listed ones (any case, trailing dot) and bare names are local", async () => {
    const s = await server(root({ bob: "b" }), ["--local-domains", "iitkgp.edu, Mail.Test"]);
    const c = await session(s.port);
    expect(await c.cmd("MAIL FROM:<a@b>")).toStartWith("250 ");
    expect(await c.cmd("RCPT TO:<bob@gmail.com>")).toBe("550 <bob@gmail.com>... Relay access denied (not a domain of this server)\r\n");
    for (const ok of ["<bob@iitkgp.edu>", "<bob@IITKGP.EDU.>", "<bob@mail.test>", "<bob>", "<postmaster>"]) expect(await c.cmd("RCPT TO:" + ok)).toStartWith("250 ");
    c.close();
    // Without the option any domain is local, as the assignment's user@<server IP> needs.
    const d = await session(main.port);
    expect(await d.cmd("MAIL FROM:<a@b>")).toStartWith("250 ");
    expect(await d.cmd("RCPT TO:<bob@10.5.21.32>")).toStartWith("250 ");
    d.close();
  });

  test("postmaster (any case) is delivered to the first user", async () => {
    const c = await session(main.port);
    expect(await c.cmd("MAIL FROM:<>")).toStartWith("250 ");
    expect(await c.cmd("RCPT TO:<PostMaster>")).toBe("250 alice... Recipient ok\r\n");
    expect(await c.cmd("DATA")).toStartWith("354 ");
    c.send(dataOf("Subject: for-postmaster\r\n\r\nhi\r\n"));
    expect(await c.code()).toBe(250);
    c.close();
    expect(records(mainRoot, "alice").map(subjectOf)).toContain("for-postmaster");
  });

  test("../x, /, NUL and unknown names get 550 and never become a path", async () => {
    const c = await session(main.port);
    expect(await c.cmd("MAIL FROM:<a@b>")).toStartWith("250 ");
    for (const bad of ["<../x@iitkgp.edu>", "<../alice@x>", "</@x>", "</>", "<../../etc/passwd>", "<al\x00ice@x>", "<nobody@x>", "<..@x>"])
      expect(await c.cmd("RCPT TO:" + bad)).toBe("550 No such user\r\n");
    expect(await c.cmd("DATA")).toStartWith("554 ");
    c.close();
    // only the listed users' directories exist (the server's own dot-directories aside,
    // such as the delivery journal: no user name can start with ".")
    const dirs = readdirSync(mainRoot, { withFileTypes: true }).filter((d) => d.isDirectory() && !d.name.startsWith(".")).map((d) => d.name).sort();
    expect(dirs).toEqual(Object.keys(USERS).sort());
    expect(existsSync(join(mainRoot, "..", "x"))).toBe(false);
  });

  test("user.txt edited while running takes effect", async () => {
    const r = root({ alice: "a" });
    const s = await server(r);
    const c = await session(s.port);
    expect(await c.cmd("MAIL FROM:<a@b>")).toStartWith("250 ");
    expect(await c.cmd("RCPT TO:<newbie@x>")).toStartWith("550 ");
    writeFileSync(join(r, "user.txt"), "alice a\nnewbie n\n");
    expect(await c.cmd("RCPT TO:<newbie@x>")).toBe("250 newbie... Recipient ok\r\n");
    expect(await c.cmd("DATA")).toStartWith("354 ");
    c.send(dataOf("Subject: welcome\r\n\r\nhi\r\n"));
    expect(await c.code()).toBe(250);
    // the directory is created for a listed user
    expect(records(r, "newbie").map(subjectOf)).toEqual(["welcome"]);
    writeFileSync(join(r, "user.txt"), "newbie n\n");
    expect(await c.cmd("MAIL FROM:<a@b>")).toStartWith("250 ");
    // Just removed: maybe a half-written file, so "try later" (450), never a bounce at once;
    // a user never listed is 550 at once; two seconds on, the removal is final (550).
    expect(await c.cmd("RCPT TO:<alice@x>")).toStartWith("450 ");
    expect(await c.cmd("RCPT TO:<stranger@x>")).toStartWith("550 ");
    await Bun.sleep(2100);
    expect(await c.cmd("RCPT TO:<alice@x>")).toStartWith("550 ");
    c.close();
  });
});

describe("message content", () => {
  test('lines ".", "..", ".x", UTF-8 and an empty body round-trip byte for byte into mymailbox', async () => {
    const c = await session(main.port);
    const body = ".\r\n..\r\n.x\r\n...\r\nnaïve – ünïcødé ✓ 日本語\r\n\r\n \r\nend\r\n";
    const headers = "From: a@b\r\nTo: bob@x\r\nSubject: roundtrip\r\n";
    expect(await sendOne(c, "a@b", ["bob@x"], headers + body)).toStartWith("250 ");
    expect(await sendOne(c, "a@b", ["bob@x"], "From: a@b\r\nTo: bob@x\r\nSubject: empty-body\r\n")).toStartWith("250 ");
    expect(await sendOne(c, "a@b", ["bob@x"], "")).toStartWith("250 ");
    c.close();
    const recs = records(mainRoot, "bob");
    const rt = recs.find((r) => subjectOf(r) === "roundtrip")!;
    const stuffed = body.split("\r\n").slice(0, -1).map((l) => (l.startsWith(".") ? "." + l : l) + "\r\n").join("");
    expect(rt).toMatch(RECEIVED);
    expect(rt.replace(RECEIVED, "RCV\r")).toBe(headers + "RCV\r\n" + stuffed + ".\r\n");
    const empty = recs.find((r) => subjectOf(r) === "empty-body")!;
    expect(empty.replace(RECEIVED, "RCV\r")).toBe("From: a@b\r\nTo: bob@x\r\nSubject: empty-body\r\nRCV\r\n.\r\n");
    // An empty message gets From and To from the envelope.
    expect(recs.at(-1)!.replace(RECEIVED, "RCV\r")).toBe("From: a@b\r\nTo: bob@x\r\nRCV\r\n.\r\n");
  });

  test("SMTP smuggling: <LF>.<CR><LF> and <CR><LF>.<LF> never end DATA; bytes after the real end are the next command", async () => {
    const c = await session(main.port);
    c.send(
      "MAIL FROM:<a@b>\r\nRCPT TO:<smug@x>\r\nDATA\r\n" +
        "Subject: smuggle-1\r\n\r\nA\n.\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<smug2@x>\r\nDATA\r\nSubject: evil-1\r\n\r\nB\r\n" +
        ".\nMAIL FROM:<evil@x>\r\nRCPT TO:<smug2@x>\r\nDATA\r\nSubject: evil-2\r\n\r\nC\r\n" +
        "\r\n.\r\nNOOP\r\n",
    );
    expect(await c.code()).toBe(250);
    expect(await c.code()).toBe(250);
    expect(await c.code()).toBe(354);
    expect(await c.reply()).toBe("250 OK Message accepted for delivery\r\n");
    expect(await c.reply()).toBe("250 OK\r\n");
    // the real end followed by a real command in the same write
    c.send("MAIL FROM:<a@b>\r\nRCPT TO:<smug2@x>\r\nDATA\r\nSubject: legit\r\n\r\nD\r\n.\r\nMAIL FROM:<c@d>\r\n");
    expect(await c.code()).toBe(250);
    expect(await c.code()).toBe(250);
    expect(await c.code()).toBe(354);
    expect(await c.code()).toBe(250);
    expect(await c.reply()).toBe("250 <c@d>... Sender ok\r\n");
    c.close();
    const smug = records(mainRoot, "smug");
    expect(smug.length).toBe(1);
    expect(smug[0]).toContain("evil-2");
    expect(records(mainRoot, "smug2").map(subjectOf)).toEqual(["legit"]);
  });

  test("a client sending bare LF everywhere (plain nc): <LF>.<LF> ends its DATA, stored with CRLF and its dot lines kept; not after a CRLF DATA", async () => {
    const c = await session(main.port);
    c.send("MAIL FROM:<nc@x>\nRCPT TO:<lfonly@x>\nDATA\nSubject: typed in nc\n\nhi\n.x\n.\nNOOP\n");
    expect(await c.code()).toBe(250);
    expect(await c.code()).toBe(250);
    expect(await c.code()).toBe(354);
    expect(await c.reply()).toBe("250 OK Message accepted for delivery\r\n");
    expect(await c.reply()).toBe("250 OK\r\n");
    // The same text after a DATA sent with CRLF (as any MTA sends it): not an end.
    c.send("MAIL FROM:<nc@x>\r\nRCPT TO:<lfonly@x>\r\nDATA\r\nSubject: relayed\n\nhi\n.\nNOOP\n\r\n.\r\n");
    expect(await c.code()).toBe(250);
    expect(await c.code()).toBe(250);
    expect(await c.code()).toBe(354);
    expect(await c.reply()).toBe("250 OK Message accepted for delivery\r\n");
    c.close();
    const stored = records(mainRoot, "lfonly");
    expect(stored.map(subjectOf)).toEqual(["typed in nc", "relayed"]);
    expect(stored[0]).toEndWith("\r\n\r\nhi\r\n..x\r\n.\r\n");
    expect(stored[1]).toEndWith("\r\n\r\nhi\r\n..\r\nNOOP\r\n\r\n.\r\n");
  });

  test("plain nc: a first body line starting with '.' keeps its dot, as a POP3 client reads it back", async () => {
    const c = await session(main.port);
    c.send("MAIL FROM:<nc@x>\nRCPT TO:<lfdot@x>\nDATA\n.first line typed\nsecond\n.\n");
    for (const code of [250, 250, 354, 250]) expect(await c.code()).toBe(code);
    c.close();
    const stored = records(mainRoot, "lfdot");
    expect(stored.length).toBe(1);
    expect(unstuff(Buffer.from(stored[0]!.slice(0, -3))).toString()).toEndWith("\r\n\r\n.first line typed\r\nsecond\r\n");
  });

  test("bare-LF lines of lone dots are stored whole: the message keeps its end and the next one stays apart", async () => {
    // ".<LF>.<CRLF>" grows by three bytes when stored (a CR and two stuffing dots). Sized for
    // two, the stored copy lost its last bytes after the 250 and swallowed the next message
    // (helper-21).
    const c = await session(main.port);
    const first = "Subject: dots-lf\r\n\r\nhello\r\n" + ".\n.\r\n".repeat(8) + "LAST LINE OF ONE\r\n";
    for (const body of [first, "Subject: after-dots\r\n\r\nsecond\r\n"]) expect(await sendRaw(c, "dotlf@x", body)).toBe("250 OK Message accepted for delivery\r\n");
    c.close();
    const stored = records(mainRoot, "dotlf");
    expect(stored.map(subjectOf)).toEqual(["dots-lf", "after-dots"]);
    expect(stored[0]).toContain("\r\n..\r\n..\r\nLAST LINE OF ONE\r\n.\r\n");
  });

  test("a large bare-LF message (converted a slice at a time) is stored whole and exact, and the next one stays apart", async () => {
    const c = await session(main.port);
    // ~1.2 MB: past the 256 KiB slices, with lone dots and '.' line starts across them.
    const big = "Subject: big-lf\n\n" + Array.from({ length: 40_000 }, (_, i) => (i % 97 === 0 ? "." : i % 89 === 0 ? ".dot" : `line ${i} ${"q".repeat(i % 40)}`)).join("\n") + "\nEND OF BIG\r\n";
    for (const body of [big, "Subject: after-big\r\n\r\nsecond\r\n"]) expect(await sendRaw(c, "biglf@x", body)).toBe("250 OK Message accepted for delivery\r\n");
    c.close();
    const stored = records(mainRoot, "biglf");
    expect(stored.map(subjectOf)).toEqual(["big-lf", "after-big"]);
    // Every line with CRLF; a '.' line start after a bare LF stuffed (its dot kept).
    const lines = stored[0]!.split("\r\n");
    expect(lines.length).toBe(5 + 40_000 + 3); // From and To (from the envelope), Subject, Received, blank; the lines; END, "." and ""
    expect(lines.filter((l) => l === "..").length).toBe(Math.ceil(40_000 / 97));
    expect(lines).toContain("..dot");
    expect(stored[0]).not.toMatch(/[^\r]\n/);
    expect(stored[0]!.endsWith("END OF BIG\r\n.\r\n")).toBe(true);
  });

  test("a client vanishing mid-DATA stores nothing; the server keeps serving", async () => {
    const c = await session(main.port);
    expect(await c.cmd("MAIL FROM:<a@b>")).toStartWith("250 ");
    expect(await c.cmd("RCPT TO:<gone@x>")).toStartWith("250 ");
    expect(await c.cmd("DATA")).toStartWith("354 ");
    c.send("Subject: vanished\r\n\r\nhalf a message\r\n.");
    await Bun.sleep(100);
    c.destroy();
    await Bun.sleep(200);
    const d = await session(main.port);
    expect(await sendOne(d, "a@b", ["gone@x"], "Subject: survivor\r\n\r\nx\r\n")).toStartWith("250 ");
    d.close();
    expect(records(mainRoot, "gone").map(subjectOf)).toEqual(["survivor"]);
  });
});

describe("half-closed connections", () => {
  test("a client that sends a whole session and shuts down its side still gets every reply, the 250 after DATA included", async () => {
    const got = await halfClose(main.port, "HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<halfclose@x>\r\nDATA\r\nSubject: half-closed\r\n\r\nx\r\n.\r\nQUIT\r\n");
    expect(got.split("\r\n").map((l) => l.slice(0, 4))).toEqual(["220 ", "250 ", "250 ", "250 ", "354 ", "250 ", "221 ", ""]);
    expect(records(mainRoot, "halfclose").map(subjectOf)).toEqual(["half-closed"]);
  });

  test("without QUIT: the replies, then the server closes; an unfinished message is not stored", async () => {
    const got = await halfClose(main.port, "HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<halfclose2@x>\r\nDATA\r\nSubject: whole\r\n\r\nx\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<halfclose2@x>\r\nDATA\r\nSubject: unfinished\r\n\r\nx\r\n");
    expect(got.split("\r\n").map((l) => l.slice(0, 4))).toEqual(["220 ", "250 ", "250 ", "250 ", "354 ", "250 ", "250 ", "250 ", "354 ", ""]);
    await Bun.sleep(100);
    expect(records(mainRoot, "halfclose2").map(subjectOf)).toEqual(["whole"]);
  });
});

describe("limits", () => {
  test("--timeout 1: an idle client gets 421 and is disconnected", async () => {
    const s = await server(root({ alice: "a" }), ["--timeout", "1"]);
    const c = await SmtpConn.open(s.port);
    conns.push(c);
    expect(await c.code()).toBe(220);
    expect(await c.cmd("HELO x")).toStartWith("250 ");
    const r = await c.reply(10_000);
    expect(r).toMatch(/^421 .*Timeout/);
    await c.untilClosed(10_000);
  });

  test("--timeout 1: a command dribbled a byte at a time is timed out all the same; message text dribbled after DATA is not", async () => {
    const r = root({ alice: "a" });
    const s = await server(r, ["--timeout", "1"]);
    const slow = await SmtpConn.open(s.port);
    conns.push(slow);
    expect(await slow.code()).toBe(220);
    const dribble = (async () => {
      for (const ch of "NOOP and more and more and more") {
        if (slow.closed) break;
        slow.send(ch);
        await Bun.sleep(300);
      }
    })();
    expect(await slow.reply(10_000)).toMatch(/^421 .*Timeout/);
    await slow.untilClosed(10_000);
    await dribble;
    // DATA text trickling in for 2.4 s (each piece within the timeout) is progress.
    const c = await SmtpConn.open(s.port);
    conns.push(c);
    expect(await c.code()).toBe(220);
    expect(await c.cmd("HELO x")).toStartWith("250 ");
    expect(await c.cmd("MAIL FROM:<a@b>")).toStartWith("250 ");
    expect(await c.cmd("RCPT TO:<alice@x>")).toStartWith("250 ");
    expect(await c.cmd("DATA")).toStartWith("354 ");
    for (const piece of ["Subject: slow\r\n", "\r\n", "line one\r\n", "line two\r\n", "line three\r\n", "line four\r\n", "line five\r\n", "line six\r\n"]) {
      c.send(piece);
      await Bun.sleep(300);
    }
    c.send(".\r\n");
    expect(await c.code()).toBe(250);
    c.close();
    expect(records(r, "alice").map(subjectOf)).toEqual(["slow"]);
  });

  test("--max-size 1K: 552 for a bigger message, nothing stored, the session goes on", async () => {
    const r = root({ alice: "a" });
    const s = await server(r, ["--max-size", "1K"]);
    const c = await session(s.port);
    expect(await c.cmd("EHLO x")).toContain("SIZE 1024");
    expect(await sendOne(c, "a@b", ["alice@x"], "Subject: big\r\n\r\n" + "0123456789\r\n".repeat(200))).toStartWith("552 ");
    expect(await c.cmd("MAIL FROM:<a@b> SIZE=2000")).toStartWith("552 ");
    expect(await sendOne(c, "a@b", ["alice@x"], "Subject: small\r\n\r\nok\r\n")).toStartWith("250 ");
    c.close();
    expect(records(r, "alice").map(subjectOf)).toEqual(["small"]);
  });

  test("--max-data-memory 64K: while unfinished messages hold it, another DATA gets 452 (nothing stored); it comes back when they finish or their clients leave", async () => {
    const r = root({ alice: "a" });
    const s = await server(r, ["--max-data-memory", "64K", "--max-size", "50K"]);
    const half = (tag: string) => `Subject: ${tag}\r\n\r\n` + "0123456789abcdef0123456789abcdef0123456789abcdef012345678901234\r\n".repeat(750); // ~48 KiB
    const a = await session(s.port);
    for (const cmd of ["MAIL FROM:<a@b>", "RCPT TO:<alice@x>", "DATA"]) await a.cmd(cmd);
    a.send(half("first"));
    await Bun.sleep(300); // for the server to take in a's bytes; no reply comes mid-DATA
    const b = await session(s.port);
    expect(await sendOne(b, "b@b", ["alice@x"], half("refused"))).toStartWith("452 ");
    a.send(".\r\n");
    expect(await a.reply()).toStartWith("250 ");
    expect(await sendOne(b, "b@b", ["alice@x"], half("second"))).toStartWith("250 ");
    // A client that leaves in the middle of DATA gives its share back.
    const c = await session(s.port);
    for (const cmd of ["MAIL FROM:<c@b>", "RCPT TO:<alice@x>", "DATA"]) await c.cmd(cmd);
    c.send(half("abandoned"));
    await Bun.sleep(300);
    c.destroy();
    let reply = "";
    for (let i = 0; i < 50 && !reply.startsWith("250"); i++) {
      reply = await sendOne(b, "b@b", ["alice@x"], half("third"));
      if (!reply.startsWith("250")) await Bun.sleep(50);
    }
    expect(reply).toStartWith("250 ");
    b.close();
    expect(records(r, "alice").map(subjectOf)).toEqual(["first", "second", "third"]);
  });

  test("--max-data-memory: a message waiting for a locked mailbox still counts until it is stored", async () => {
    const r = root({ alice: "a" });
    const s = await server(r, ["--max-data-memory", "64K", "--max-size", "50K"]);
    const half = (tag: string) => `Subject: ${tag}\r\n\r\n` + "0123456789abcdef0123456789abcdef0123456789abcdef012345678901234\r\n".repeat(750); // ~48 KiB
    // Another live process holds alice's write lock (as a POP3 rewrite would, for longer).
    const holder = Bun.spawn([process.execPath, "-e", `const { tryLock } = await import(${JSON.stringify(join(import.meta.dir, "../lib/lock.ts"))}); if (!tryLock(${JSON.stringify(join(r, "alice", "mymailbox.lock"))})) process.exit(3); console.log("held"); await Bun.sleep(60000);`], { stdout: "pipe" });
    try {
      const reader = holder.stdout.getReader();
      expect(new TextDecoder().decode((await reader.read()).value)).toContain("held");
      const a = await session(s.port);
      for (const cmd of ["MAIL FROM:<a@b>", "RCPT TO:<alice@x>", "DATA"]) await a.cmd(cmd);
      a.send(dataOf(half("waiting")));
      await Bun.sleep(300); // a's message is complete and queued behind the lock; no reply yet
      const b = await session(s.port);
      expect(await sendOne(b, "b@b", ["alice@x"], half("refused"))).toStartWith("452 ");
      holder.kill(9); // its lock is now stale and gets broken
      await holder.exited;
      expect(await a.reply()).toStartWith("250 ");
      expect(await sendOne(b, "b@b", ["alice@x"], half("later"))).toStartWith("250 ");
      b.close();
    } finally {
      holder.kill(9);
    }
    expect(records(r, "alice").map(subjectOf)).toEqual(["waiting", "later"]);
  });

  test("--max-data-memory: the stored copy of a bare-LF message (CRLF added: twice the size) counts too", async () => {
    const r = root({ alice: "a" });
    const s = await server(r, ["--max-data-memory", "64K", "--max-size", "50K"]);
    // 20,000 empty lines with bare LFs: 20 KB on the wire, 40 KB once stored with CRLF.
    const lf = (tag: string) => `Subject: ${tag}\n\n${"\n".repeat(20_000)}`;
    const a = await session(s.port);
    for (const cmd of ["MAIL FROM:<a@b>", "RCPT TO:<alice@x>", "DATA"]) await a.cmd(cmd);
    a.send(lf("first"));
    await Bun.sleep(300); // a holds 20 KB of the budget, unfinished
    const b = await session(s.port);
    // 20 KB more fit as they come, but not the 40 KB copy beside them.
    expect(await sendOne(b, "b@b", ["alice@x"], lf("refused"))).toStartWith("452 ");
    // Alone in the budget, a message always gets through, its copy included.
    a.send("\r\n.\r\n");
    expect(await a.reply()).toStartWith("250 ");
    expect(await sendOne(b, "b@b", ["alice@x"], lf("second"))).toStartWith("250 ");
    b.close();
    expect(records(r, "alice").map(subjectOf)).toEqual(["first", "second"]);
  });

  test("--max-connections 2: the third connection gets 421; a slot frees up after a close", async () => {
    const s = await server(root({ alice: "a" }), ["--max-connections", "2"]);
    const a = await SmtpConn.open(s.port);
    const b = await SmtpConn.open(s.port);
    conns.push(a, b);
    expect(await a.code()).toBe(220);
    expect(await b.code()).toBe(220);
    const c = await SmtpConn.open(s.port);
    conns.push(c);
    expect(await c.reply()).toMatch(/^421 /);
    await c.untilClosed();
    expect(await a.cmd("QUIT")).toStartWith("221 ");
    await a.untilClosed();
    // The server frees the slot when it sees the close, which may be after the client does.
    let code = 0;
    for (let i = 0; i < 50 && code !== 220; i++) {
      if (i) await Bun.sleep(50);
      const d = await SmtpConn.open(s.port);
      conns.push(d);
      code = await d.code();
    }
    expect(code).toBe(220);
  });
});

describe("command line", () => {
  async function run(args: string[], cwd: string) {
    const p = Bun.spawn(command("smtpmail", args), { cwd, stdout: "pipe", stderr: "pipe", stdin: "ignore" });
    const timer = setTimeout(() => p.kill(9), 15_000);
    const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    clearTimeout(timer);
    return { out, err, code };
  }
  const oneLine = (s: string) => s.trimEnd().split("\n").length === 1;

  test("--help prints usage and exits 0", async () => {
    const { out, code } = await run(["--help"], mainRoot);
    expect(code).toBe(0);
    expect(out).toContain("usage: smtpmail");
    expect(out).toContain("--max-size");
    expect(out).toContain("enables STARTTLS\n");
    expect(out).not.toContain("STLS");
    expect((await run(["-V"], mainRoot)).out).toMatch(/^smtpmail \d+\.\d+\.\d+\n$/);
  });

  test("bad port, unknown option, missing user.txt, port in use: one line, a non-zero exit, no journal left behind", async () => {
    const empty = root({});
    const blocker = createServer();
    await new Promise<void>((r) => blocker.listen(0, "127.0.0.1", () => r()));
    const used = (blocker.address() as { port: number }).port;
    try {
      const cases = [
        [["abc", "--root", mainRoot], /invalid port/],
        [["70000", "--root", mainRoot], /invalid port/],
        [["0", "--bogus", "--root", mainRoot], /unknown option/],
        [["0", "--max-size", "lots", "--root", mainRoot], /max-size/],
        [["0", "--max-recipients", "1.5", "--host", "127.0.0.1", "--root", mainRoot], /--max-recipients "1\.5": expected a whole number/],
        [["0", "--max-login-failures", "2.5", "--host", "127.0.0.1", "--root", mainRoot], /--max-login-failures/],
        [["0", "--max-data-memory", "1M", "--max-size", "2M", "--root", mainRoot], /max-data-memory must be at least --max-size/],
        [["0", "--root", join(empty, "nowhere")], /user\.txt/],
        [[String(used), "--host", "127.0.0.1", "--root", mainRoot], /in use/],
      ] as const;
      for (const [args, why] of cases) {
        const { err, code } = await run([...args], empty);
        expect(code).not.toBe(0);
        expect(err).toMatch(why);
        expect(oneLine(err)).toBe(true);
        expect(err).not.toContain("    at ");
      }
      // A start that fails leaves the mail root as it found it: no journal of the failed process.
      const clean = root({ alice: "a" });
      for (const args of [[String(used), "--host", "127.0.0.1"], ["0", "--host", "256.1.1.1"], ["0", "--host", "127.0.0.1", "--require-auth"]]) {
        const { code } = await run([...args, "--root", clean], empty);
        expect(code).not.toBe(0);
        const journals = join(clean, ".smtpmail-journal");
        expect(existsSync(journals) ? readdirSync(journals) : []).toEqual([]);
      }
    } finally {
      blocker.close();
    }
  });
});

describe("concurrency and crashes", () => {
  test("200 clients x 5 messages at once: exactly those 1000 messages, each once", async () => {
    const r = root({ alice: "a" });
    const s = await server(r, ["--quiet"]);
    const results = await Promise.all(
      Array.from({ length: 200 }, async (_, ci) => {
        const c = await SmtpConn.open(s.port);
        conns.push(c);
        await c.reply();
        await c.cmd(`EHLO c${ci}`);
        const codes: string[] = [];
        for (let m = 0; m < 5; m++) codes.push((await sendOne(c, `c${ci}@x`, ["alice@x"], `Subject: load-${ci}-${m}\r\n\r\nbody ${ci} ${m}\r\n`)).slice(0, 3));
        await c.cmd("QUIT");
        return codes;
      }),
    );
    expect(results.flat().filter((x) => x !== "250")).toEqual([]);
    const subjects = records(r, "alice").map(subjectOf);
    expect(subjects.length).toBe(1000);
    expect(new Set(subjects).size).toBe(1000);
    for (let ci = 0; ci < 200; ci++) for (let m = 0; m < 5; m++) expect(subjects.includes(`load-${ci}-${m}`)).toBe(true);
  });

  test("kill -9 during a delivery load: every acknowledged message is present, the mailbox parses, and the next server repairs it", async () => {
    const r = root({ alice: "a" });
    const s = await server(r, ["--quiet"]);
    const acked = new Set<string>();
    let stop = false;
    const clients = Array.from({ length: 20 }, async (_, ci) => {
      const c = await SmtpConn.open(s.port);
      conns.push(c);
      try {
        await c.reply();
        await c.cmd("HELO k");
        for (let m = 0; !stop && m < 500; m++) {
          const subj = `kill-${ci}-${m}`;
          const rep = await sendOne(c, "k@x", ["alice@x"], `Subject: ${subj}\r\n\r\n${"line of text\r\n".repeat(50)}`);
          if (rep.startsWith("250")) acked.add(subj);
        }
      } catch {
        // the server died under us
      }
    });
    const deadline = Date.now() + 20_000;
    while (acked.size < 150 && Date.now() < deadline) await Bun.sleep(10);
    expect(acked.size).toBeGreaterThan(0);
    s.proc.kill(9);
    await s.proc.exited;
    stop = true;
    await Promise.all(clients);

    const file = mailbox(r, "alice");
    const scan = scanBuffer(file);
    expect(scan.validEnd).toBeLessThanOrEqual(file.length);
    const stored = scan.messages.map((m) => subjectOf(file.subarray(m.offset, m.offset + m.length).toString()));
    expect(new Set(stored).size).toBe(stored.length);
    for (const subj of acked) expect(stored).toContain(subj);
    // every stored message is whole
    for (const m of scan.messages) expect(file.subarray(m.offset, m.offset + m.length).toString()).toContain("line of text\r\n".repeat(50) + ".\r\n");

    // a new server (stale lock, maybe a torn tail) delivers cleanly after the survivors
    const s2 = await server(r, ["--quiet"]);
    const c = await session(s2.port);
    expect(await sendOne(c, "a@b", ["alice@x"], "Subject: after-crash\r\n\r\nok\r\n")).toStartWith("250 ");
    c.close();
    const after = records(r, "alice").map(subjectOf);
    expect(after.slice(0, stored.length)).toEqual(stored);
    expect(after.at(-1)).toBe("after-crash");
  });

  test("SIGTERM: idle clients get 421, exit code 0, no lock files left", async () => {
    const r = root({ alice: "a", bob: "b" });
    const s = await server(r);
    const c = await session(s.port);
    expect(await sendOne(c, "a@b", ["alice@x", "bob@x"], "Subject: before-term\r\n\r\nx\r\n")).toStartWith("250 ");
    expect(await s.stop("SIGTERM")).toBe(0);
    expect(await c.reply()).toMatch(/^421 /);
    const leftovers = [r, join(r, "alice"), join(r, "bob")].flatMap((d) => readdirSync(d).filter((f) => /lock|\.tmp/.test(f)));
    expect(leftovers).toEqual([]);
    expect(records(r, "bob").map(subjectOf)).toEqual(["before-term"]);
  });
});
