// End-to-end: the real popserver (and smtpmail) as child processes, spoken to over TCP.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { appendFileSync, existsSync, mkdirSync, readFileSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { buildRecord } from "../lib/mailbox.ts";
import { mailboxPath, popLockPath } from "../lib/paths.ts";
import { command, makeRoot, removeRoot, startPop, startSmtp, type Running } from "./helpers/servers.ts";
import { halfClose, popLogin, smtpSend, unstuffBody, Wire } from "./helpers/wire.ts";

const USERS = { alice: "alicepw", bob: "bobpw", carol: "carolpw", dave: "davepw", erin: "erinpw", frank: "frankpw", gina: "ginapw", hank: "hankpw", ivy: "ivypw" };
let root: string;
let pop: Running;
let smtp: Running;
const extra: Running[] = [];
const wires: Wire[] = [];

beforeAll(async () => {
  root = makeRoot(USERS);
  [pop, smtp] = await Promise.all([startPop(root), startSmtp(root)]);
});
afterAll(async () => {
  for (const w of wires) w.destroy();
  for (const r of [pop, smtp, ...extra]) if (r) r.proc.kill(9);
  await Promise.all([pop, smtp, ...extra].filter(Boolean).map((r) => r.proc.exited));
  removeRoot(root);
});

const RECEIVED = "Received: 2024-05-06 : 07 : 08";

/** python3 -c: its stdout and stderr. Killed at 30 s (a client stuck on a server that never answers). */
async function python([script, ...args]: string[]): Promise<[string, string]> {
  const proc = Bun.spawn(["python3", "-c", script!, ...args], { stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => proc.kill(9), 30_000);
  try {
    const [out, err] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    return [out, err];
  } finally {
    clearTimeout(timer);
  }
}

function rec(n: number, body: string[] = [`body ${n}`]): Buffer {
  return buildRecord(Buffer.from([`From: x@y`, `To: u@z`, `Subject: msg ${n}`, "", ...body].map((l) => (l.startsWith(".") ? "." + l : l) + "\r\n").join("")), RECEIVED);
}
function plain(n: number, body: string[] = [`body ${n}`]): Buffer {
  return Buffer.from([`From: x@y`, `To: u@z`, `Subject: msg ${n}`, RECEIVED, "", ...body].map((l) => l + "\r\n").join(""));
}
function seed(user: string, ...records: Buffer[]): string {
  const p = mailboxPath(root, user);
  writeFileSync(p, Buffer.concat(records));
  return p;
}
async function login(user: keyof typeof USERS): Promise<Wire> {
  const w = await popLogin(pop.port, user, USERS[user]);
  wires.push(w);
  return w;
}
async function open(port = pop.port): Promise<Wire> {
  const w = await Wire.open(port);
  wires.push(w);
  return w;
}
async function waitGone(path: string, ms = 2000): Promise<boolean> {
  for (let i = 0; i < ms / 10; i++) {
    if (!existsSync(path)) return true;
    await Bun.sleep(10);
  }
  return false;
}

describe("popserver over TCP", () => {
  test("a whole session: greeting, login, STAT/LIST/UIDL/RETR/TOP/DELE/RSET/NOOP/QUIT", async () => {
    const p = seed("alice", rec(1), rec(2, [".", "..", ".x"]), rec(3));
    const sizes = [plain(1), plain(2, [".", "..", ".x"]), plain(3)].map((b) => b.length);
    const w = await open();
    expect(await w.line()).toBe("+OK POP3 server ready");
    expect(await w.cmd("USER alice")).toStartWith("+OK");
    expect(await w.cmd("PASS alicepw")).toBe(`+OK maildrop locked and ready, 3 messages (${sizes[0]! + sizes[1]! + sizes[2]!} octets)`);
    expect(await w.cmd("STAT")).toBe(`+OK 3 ${sizes[0]! + sizes[1]! + sizes[2]!}`);
    expect(await w.cmd("LIST")).toStartWith("+OK");
    expect((await w.multi()).toString()).toBe(`1 ${sizes[0]}\r\n2 ${sizes[1]}\r\n3 ${sizes[2]}\r\n.\r\n`);
    expect(await w.cmd("LIST 2")).toBe(`+OK 2 ${sizes[1]}`);
    expect(await w.cmd("UIDL")).toStartWith("+OK");
    const uidl = (await w.multi()).toString().split("\r\n").slice(0, 3);
    expect(uidl.map((l) => l.split(" ")[0])).toEqual(["1", "2", "3"]);
    expect(new Set(uidl.map((l) => l.split(" ")[1])).size).toBe(3);
    expect(await w.cmd("RETR 2")).toStartWith("+OK");
    const raw = await w.multi();
    expect(unstuffBody(raw).equals(plain(2, [".", "..", ".x"]))).toBe(true);
    expect(unstuffBody(raw).length).toBe(sizes[1]!);
    expect(await w.cmd("TOP 1 0")).toStartWith("+OK");
    expect((await w.multi()).toString()).toBe(`From: x@y\r\nTo: u@z\r\nSubject: msg 1\r\n${RECEIVED}\r\n\r\n.\r\n`);
    // A count covering every line is the whole message, byte for byte as RETR sends it.
    for (const count of [3, sizes[1]!, 1e12]) {
      expect(await w.cmd(`TOP 2 ${count}`)).toStartWith("+OK");
      expect((await w.multi()).equals(raw)).toBe(true);
    }
    expect(await w.cmd("DELE 1")).toStartWith("+OK");
    expect(await w.cmd("RETR 1")).toStartWith("-ERR");
    expect(await w.cmd("STAT")).toBe(`+OK 2 ${sizes[1]! + sizes[2]!}`);
    expect(await w.cmd("RSET")).toStartWith("+OK");
    expect(await w.cmd("STAT")).toBe(`+OK 3 ${sizes[0]! + sizes[1]! + sizes[2]!}`);
    expect(await w.cmd("NOOP")).toBe("+OK");
    expect(await w.cmd("DELE 3")).toStartWith("+OK");
    expect(await w.cmd("QUIT")).toStartWith("+OK");
    expect(await w.waitClosed()).toBe(true);
    expect(readFileSync(p).equals(Buffer.concat([rec(1), rec(2, [".", "..", ".x"])]))).toBe(true);
    expect(existsSync(popLockPath(root, "alice"))).toBe(false);
  });

  test("wrong password gets -ERR and the client may retry on the same connection", async () => {
    seed("bob", rec(1));
    const w = await open();
    await w.line();
    expect(await w.cmd("USER bob")).toStartWith("+OK");
    expect(await w.cmd("PASS nope")).toStartWith("-ERR");
    // An unknown name is refused at PASS, with a wrong password's reply: USER does not tell.
    expect(await w.cmd("USER nosuchuser")).toBe("+OK send PASS for nosuchuser");
    expect(await w.cmd("PASS nope")).toBe("-ERR [AUTH] invalid user name or password");
    expect(await w.cmd("USER ../bob")).toStartWith("+OK");
    expect(await w.cmd("USER bob")).toStartWith("+OK");
    expect(await w.cmd("PASS bobpw")).toStartWith("+OK");
    expect(await w.cmd("QUIT")).toStartWith("+OK");
  });

  test("a login name in another case opens that user's maildrop (as RCPT TO finds the user), under the same lock", async () => {
    seed("bob", rec(1), rec(2));
    const w = await open();
    await w.line();
    expect(await w.cmd("USER BOB")).toStartWith("+OK");
    expect(await w.cmd("PASS BOBPW")).toStartWith("-ERR"); // the password stays exact
    expect(await w.cmd("USER BOB")).toStartWith("+OK");
    expect(await w.cmd("PASS bobpw")).toBe(`+OK maildrop locked and ready, 2 messages (${plain(1).length + plain(2).length} octets)`);
    const other = await open();
    await other.line();
    expect(await other.cmd("USER bob")).toStartWith("+OK");
    expect(await other.cmd("PASS bobpw")).toStartWith("-ERR [IN-USE]");
    expect(await w.cmd("DELE 1")).toStartWith("+OK");
    expect(await w.cmd("QUIT")).toStartWith("+OK");
    expect(await w.waitClosed()).toBe(true);
    expect(readFileSync(mailboxPath(root, "bob")).equals(rec(2))).toBe(true);
  });

  test("a user name of 64 characters (as user.txt and SMTP allow) logs in with USER/PASS and AUTH PLAIN", async () => {
    const long = "l".repeat(64);
    const r = makeRoot({ [long]: "longpw" });
    try {
      const s = await startPop(r, ["--quiet"]);
      extra.push(s);
      const w = await open(s.port);
      await w.line();
      expect(await w.cmd(`USER ${long}`)).toStartWith("+OK");
      expect(await w.cmd("PASS longpw")).toStartWith("+OK maildrop locked");
      expect(await w.cmd("QUIT")).toStartWith("+OK");
      const a = await open(s.port);
      await a.line();
      expect(await a.cmd(`AUTH PLAIN ${Buffer.from(`\0${long}\0longpw`).toString("base64")}`)).toStartWith("+OK");
      expect(await a.cmd("QUIT")).toStartWith("+OK");
    } finally {
      removeRoot(r);
    }
  });

  test("user.txt changed between USER and PASS: a name found ignoring case is not taken for someone else", async () => {
    const r = makeRoot({ Alice: "alicepw" });
    try {
      const s = await startPop(r, ["--quiet"]);
      extra.push(s);
      const w = await open(s.port);
      await w.line();
      expect(await w.cmd("USER alice")).toStartWith("+OK"); // means Alice
      writeFileSync(join(r, "user.txt"), "alice otherpw\n"); // Alice gone, a different alice listed
      await Bun.sleep(20);
      expect(await w.cmd("PASS otherpw")).toStartWith("-ERR");
      expect(await w.cmd("USER alice")).toStartWith("+OK");
      expect(await w.cmd("PASS otherpw")).toStartWith("+OK"); // the new alice, found afresh
      expect(await w.cmd("QUIT")).toStartWith("+OK");
    } finally {
      removeRoot(r);
    }
  });

  test("pipelined commands in one write get their replies in order", async () => {
    seed("carol", rec(1), rec(2));
    const w = await open();
    await w.line();
    w.write("USER carol\r\nPASS carolpw\r\nSTAT\r\nLIST\r\nRETR 1\r\nDELE 2\r\nNOOP\r\nRSET\r\nUIDL 1\r\nQUIT\r\n");
    expect(await w.line()).toStartWith("+OK");
    expect(await w.line()).toStartWith("+OK maildrop locked");
    expect(await w.line()).toBe(`+OK 2 ${plain(1).length + plain(2).length}`);
    expect(await w.line()).toStartWith("+OK");
    expect((await w.multi()).toString()).toBe(`1 ${plain(1).length}\r\n2 ${plain(2).length}\r\n.\r\n`);
    expect(await w.line()).toStartWith("+OK");
    expect(unstuffBody(await w.multi()).equals(plain(1))).toBe(true);
    expect(await w.line()).toStartWith("+OK message 2 deleted");
    expect(await w.line()).toBe("+OK");
    expect(await w.line()).toStartWith("+OK");
    expect(await w.line()).toMatch(/^\+OK 1 \S+$/);
    expect(await w.line()).toStartWith("+OK");
    expect(await w.waitClosed()).toBe(true);
    expect(w.pending.length).toBe(0);
    expect(readFileSync(mailboxPath(root, "carol")).equals(Buffer.concat([rec(1), rec(2)]))).toBe(true);
  });

  test("an over-long line gets -ERR and the session goes on", async () => {
    seed("dave", rec(1));
    const w = await login("dave");
    expect(await w.cmd("NOOP " + "x".repeat(5000))).toStartWith("-ERR");
    expect(await w.cmd("STAT")).toBe(`+OK 1 ${plain(1).length}`);
    // Split across writes, too.
    w.write("LIST " + "9".repeat(3000));
    await Bun.sleep(20);
    w.write("9".repeat(3000) + "\r\n");
    expect(await w.line()).toStartWith("-ERR");
    expect(await w.cmd("LIST 1")).toBe(`+OK 1 ${plain(1).length}`);
    expect(await w.cmd("QUIT")).toStartWith("+OK");
  });

  test("binary garbage gets -ERR and the session goes on", async () => {
    seed("erin", rec(1));
    const w = await open();
    await w.line();
    w.write(Buffer.from([0x00, 0xff, 0xfe, 0x80, 0x0d, 0x0a]));
    expect(await w.line()).toStartWith("-ERR");
    w.write(Buffer.from([0x01, 0x02, 0x20, 0xc3, 0x28, 0x0a])); // bare LF, invalid UTF-8
    expect(await w.line()).toStartWith("-ERR");
    expect(await w.cmd("USER erin")).toStartWith("+OK");
    expect(await w.cmd("PASS erinpw")).toStartWith("+OK");
    w.write(Buffer.concat([Buffer.from("RETR "), Buffer.from([0xff, 0x00, 0x7f]), Buffer.from("\r\n")]));
    expect(await w.line()).toStartWith("-ERR");
    expect(await w.cmd("STAT")).toBe(`+OK 1 ${plain(1).length}`);
    expect(await w.cmd("QUIT")).toStartWith("+OK");
  });

  test("a second concurrent login to the same mailbox gets -ERR and is closed; the first goes on", async () => {
    seed("frank", rec(1), rec(2));
    const a = await login("frank");
    const b = await open();
    await b.line();
    expect(await b.cmd("USER frank")).toStartWith("+OK");
    expect(await b.cmd("PASS frankpw")).toStartWith("-ERR");
    expect(await b.waitClosed()).toBe(true);
    expect(await a.cmd("STAT")).toBe(`+OK 2 ${plain(1).length + plain(2).length}`);
    expect(await a.cmd("DELE 1")).toStartWith("+OK");
    expect(await a.cmd("QUIT")).toStartWith("+OK");
    expect(readFileSync(mailboxPath(root, "frank")).equals(rec(2))).toBe(true);
    // Now free again.
    const c = await login("frank");
    expect(await c.cmd("QUIT")).toStartWith("+OK");
  });

  test("a mailbox that cannot be opened: -ERR with the error code, never the server's paths; a new user's first login works", async () => {
    const r = makeRoot({ ivan: "ivanpw", judy: "judypw", kim: "kimpw" });
    const p = await startPop(r);
    extra.push(p);
    try {
      removeRoot(join(r, "ivan"));
      writeFileSync(join(r, "ivan"), "a file where the directory should be");
      const w = await popLogin(p.port, "ivan", "ivanpw").catch((e: Error) => e);
      // Permanent (RFC 3206): retrying will not help until an administrator steps in.
      expect(String(w)).toContain("-ERR [SYS/PERM] cannot open mailbox: ENOTDIR");
      expect(String(w)).not.toContain(r);
      mkdirSync(join(r, "kim", "mymailbox"), { recursive: true });
      expect(String(await popLogin(p.port, "kim", "kimpw").catch((e: Error) => e))).toContain("-ERR [SYS/PERM] cannot open mailbox: not a regular file");
      removeRoot(join(r, "judy")); // listed, no mail yet, so no directory
      const j = await popLogin(p.port, "judy", "judypw");
      wires.push(j);
      expect(await j.cmd("STAT")).toBe("+OK 0 0");
    } finally {
      removeRoot(r);
    }
  });

  test("a client that vanishes without QUIT deletes nothing and leaves no lock", async () => {
    const p = seed("gina", rec(1), rec(2));
    const before = readFileSync(p);
    for (let round = 0; round < 3; round++) {
      const w = await login("gina");
      expect(await w.cmd("DELE 1")).toStartWith("+OK");
      expect(await w.cmd("DELE 2")).toStartWith("+OK");
      w.destroy();
      expect(await waitGone(popLockPath(root, "gina"))).toBe(true);
      expect(readFileSync(p).equals(before)).toBe(true);
    }
    // Vanishing right after PASS, before the reply.
    for (let round = 0; round < 5; round++) {
      const w = await open();
      await w.line();
      w.write("USER gina\r\nPASS ginapw\r\n");
      w.destroy();
    }
    const w = await (async () => {
      for (let i = 0; i < 100; i++) {
        try {
          return await login("gina");
        } catch {
          await Bun.sleep(20);
        }
      }
      throw new Error("login never succeeded after vanished clients");
    })();
    expect(await w.cmd("STAT")).toStartWith("+OK 2 ");
    expect(await w.cmd("QUIT")).toStartWith("+OK");
    expect(readFileSync(p).equals(before)).toBe(true);
  });

  test("a client that pipelines DELE and QUIT and shuts down its side at once gets every reply, and the deletion is done", async () => {
    const p = seed("gina", rec(1), rec(2));
    const got = await halfClose(pop.port, "USER gina\r\nPASS ginapw\r\nDELE 1\r\nQUIT\r\n");
    expect(got.split("\r\n").map((l) => l.split(" ")[0])).toEqual(["+OK", "+OK", "+OK", "+OK", "+OK", ""]);
    expect(readFileSync(p).equals(rec(2))).toBe(true);
    expect(await waitGone(popLockPath(root, "gina"))).toBe(true);
  });

  test("a connection's pipelined flood takes turns: another client is answered long before the flood is done", async () => {
    // 20,000 messages all marked deleted make each LIST a scan that lists nothing: 3000 of
    // them in one write are seconds of work. Without turns, the other client (and every
    // reply to the flood itself, gathered in one write) waited for all of it.
    const count = 20_000;
    seed("frank", ...Array.from({ length: count }, (_, i) => rec(i)));
    const flood = await login("frank");
    flood.write(Array.from({ length: count }, (_, i) => `DELE ${i + 1}\r\n`).join(""));
    for (let i = 0; i < count; i++) expect(await flood.line()).toStartWith("+OK");
    const other = await login("erin");
    const lists = 3000;
    flood.write("LIST\r\n".repeat(lists));
    const ends = () => flood.pending.toString("latin1").split("\r\n.\r\n").length - 1;
    // The flood is under way: its first replies are out.
    for (let i = 0; i < 1000 && ends() === 0; i++) await Bun.sleep(2);
    expect(ends()).toBeGreaterThan(0);
    expect(await other.cmd("NOOP")).toStartWith("+OK");
    expect(ends()).toBeLessThan(lists);
    for (let i = 0; i < lists; i++) {
      expect(await flood.line()).toBe("+OK 0 messages (0 octets)");
      expect((await flood.multi()).toString()).toBe(".\r\n");
    }
    expect(await flood.cmd("RSET")).toStartWith(`+OK maildrop has ${count} messages`);
  });

  test("UIDs of identical messages persist across a deletion, and a deleted one's UID is not given to the next identical one (RFC 1939 7)", async () => {
    const p = seed("ivy", rec(1), rec(1), rec(2), rec(1));
    const uidl = async (dele: number[] = []) => {
      const w = await login("ivy");
      expect(await w.cmd("UIDL")).toStartWith("+OK");
      const uids = (await w.multi()).toString().split("\r\n").slice(0, -2).map((l) => l.split(" ")[1]!);
      for (const n of dele) expect(await w.cmd(`DELE ${n}`)).toStartWith("+OK");
      expect(await w.cmd("QUIT")).toStartWith("+OK");
      expect(await waitGone(popLockPath(root, "ivy"))).toBe(true);
      return uids;
    };
    const [a1, a2, b, a3] = (await uidl([1])) as [string, string, string, string];
    expect(new Set([a1, a2, b, a3]).size).toBe(4);
    // Counted afresh, the second copy would now take the first's UID.
    expect(await uidl()).toEqual([a2, b, a3]);
    // Another copy arrives (as smtpmail appends it): a UID none of them ever had.
    appendFileSync(p, rec(1));
    const a4 = (await uidl([1, 3, 4]))[3]!;
    expect([a1, a2, a3, b]).not.toContain(a4);
    expect(await uidl()).toEqual([b]);
    // The copies are all gone; a new one still gets a new UID, and so does a copy of a
    // message deleted without another copy.
    appendFileSync(p, rec(1));
    const a5 = (await uidl([1]))[1]!;
    expect([a1, a2, a3, a4, b]).not.toContain(a5);
    appendFileSync(p, rec(2));
    const b2 = (await uidl())[1]!;
    expect([a1, a2, a3, a4, a5, b]).not.toContain(b2);
    expect(await uidl()).toEqual([a5, b2]);
    // Even when the mailbox is left empty.
    expect(await uidl([1, 2])).toEqual([a5, b2]);
    expect(readFileSync(p).length).toBe(0);
    appendFileSync(p, rec(1));
    const a6 = (await uidl())[0]!;
    expect([a1, a2, a3, a4, a5]).not.toContain(a6);
  });

  test("a message sent with SMTP reads back byte for byte (lines '.', '..', '.x', UTF-8, empty body)", async () => {
    const cases: string[][] = [
      ["From: bob@example.com", "To: alice@example.com", "Subject: dots", "", ".", "..", ".x", "...", "end"],
      ["From: bob@example.com", "To: alice@example.com", "Subject: ünïcödé ✓ 日本", "", "héllo wörld ✓", "日本語のテキスト"],
      ["From: bob@example.com", "To: alice@example.com", "Subject: empty body"],
      ["From: bob@example.com", "To: alice@example.com", "Subject: blank lines", "", "", "", "x", ""],
    ];
    writeFileSync(mailboxPath(root, "alice"), "");
    for (const c of cases) expect(await smtpSend(smtp.port, "bob@example.com", "alice@example.com", c)).toStartWith("250");
    const w = await login("alice");
    expect(await w.cmd("STAT")).toStartWith(`+OK ${cases.length} `);
    for (let i = 0; i < cases.length; i++) {
      const size = Number((await w.cmd(`LIST ${i + 1}`)).split(" ")[2]);
      expect(await w.cmd(`RETR ${i + 1}`)).toStartWith("+OK");
      const got = unstuffBody(await w.multi());
      expect(got.length).toBe(size);
      const lines = got.toString("utf8").split("\r\n");
      expect(lines.pop()).toBe("");
      // The stored copy is the sent message with the Received line added after Subject.
      const at = lines.findIndex((l) => l.startsWith("Received: "));
      expect(at).toBe(3);
      expect(lines[at]).toMatch(/^Received: \d{4}-\d\d-\d\d : \d\d : \d\d$/);
      lines.splice(at, 1);
      expect(lines).toEqual(cases[i]!);
    }
    expect(await w.cmd("QUIT")).toStartWith("+OK");
  });

  test("a saved CRLF mail closed by a bare-LF '.' line (echo .), then an SMTP delivery: two mails, each whole and apart", async () => {
    // helper-23: the first was hidden (STAT 0), then glued to the next delivery, and a
    // DELE of the one mail the client could see removed the delivered one too.
    const saved = "From: boss@x\r\nSubject: saved.eml\r\n\r\nhello\r\n.dot line\r\n";
    const mixed = "From: tool@x\nSubject: mixed\r\n\nline\n";
    writeFileSync(mailboxPath(root, "gina"), saved.replace("\r\n.dot", "\r\n..dot") + ".\n" + mixed + ".\r\n");
    expect(await smtpSend(smtp.port, "bob@example.com", "gina@example.com", ["From: bob@example.com", "Subject: delivered", "", "by SMTP"])).toStartWith("250");
    const w = await login("gina");
    expect(await w.cmd("STAT")).toStartWith("+OK 3 ");
    const bodies: string[] = [];
    for (let i = 1; i <= 3; i++) {
      const size = Number((await w.cmd(`LIST ${i}`)).split(" ")[2]);
      expect(await w.cmd(`RETR ${i}`)).toStartWith("+OK");
      const got = unstuffBody(await w.multi());
      expect(got.length).toBe(size);
      bodies.push(got.toString("latin1"));
    }
    expect(bodies[0]).toBe(saved);
    expect(bodies[1]).toBe(mixed.replace(/\r?\n/g, "\r\n"));
    expect(bodies[2]).toContain("Subject: delivered\r\n");
    expect(bodies[2]).toEndWith("\r\nby SMTP\r\n");
    // The next command is answered in step: every RETR was ended where it should be.
    expect(await w.cmd("NOOP")).toStartWith("+OK");
    expect(await w.cmd("DELE 1")).toStartWith("+OK");
    expect(await w.cmd("QUIT")).toStartWith("+OK");
    const left = readFileSync(mailboxPath(root, "gina"), "latin1");
    expect(left).not.toContain("saved.eml");
    expect(left).toContain("Subject: mixed");
    expect(left).toContain("Subject: delivered");
  });

  test("a mailbox cut short under a session: RETR/TOP of a message past the cut get -ERR and the connection closes, never an unended reply", async () => {
    // helper-23: "+OK 20 octets", then nothing, and the client waited for ever.
    const p = seed("hank", rec(1), rec(2), rec(3));
    const w = await login("hank");
    truncateSync(p, rec(1).length + 5);
    expect(await w.cmd("RETR 1")).toStartWith("+OK");
    await w.multi();
    expect(await w.cmd("TOP 3 0")).toStartWith("-ERR [SYS/TEMP] the mailbox was changed");
    expect(await w.waitClosed()).toBe(true);
    // A new session sees what the file holds now.
    const again = await login("hank");
    expect(await again.cmd("STAT")).toStartWith("+OK 1 ");
    expect(await again.cmd("QUIT")).toStartWith("+OK");
  });

  test.skipIf(!Bun.which("python3"))("a large message cut while it is streamed: the reply ends with the connection, no error text inside the message", async () => {
    // helper-25: "-ERR internal error" was written into the middle of the message data.
    const big = rec(1, Array.from({ length: 100_000 }, (_, i) => `line ${i} ${"y".repeat(70)}`)); // ~8 MB
    const p = seed("hank", big);
    const script = `
import socket, sys, time, os
s = socket.create_connection(("127.0.0.1", ${pop.port}))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
f = s.makefile("rb")
def cmd(c):
    s.sendall(c + b"\\r\\n"); return f.readline()
f.readline(); cmd(b"USER hank"); cmd(b"PASS hankpw")
s.sendall(b"RETR 1\\r\\n")
time.sleep(0.5)  # the server fills the socket and waits for us
os.truncate(sys.argv[1], 1_000_000)
data = b""
while True:
    chunk = s.recv(1 << 20)
    if not chunk: break
    data += chunk
print(len(data), b"-ERR" in data, data.endswith(b"\\r\\n.\\r\\n"))
`;
    const [out, err] = await python([script, p]);
    expect(err).toBe("");
    const [len, hasErr, ended] = out.trim().split(" ");
    expect(Number(len)).toBeGreaterThan(0);
    expect(Number(len)).toBeLessThan(big.length);
    expect([hasErr, ended]).toEqual(["False", "False"]);
    await Bun.sleep(100);
    expect(pop.log()).toContain("reply cut short");
    const again = await login("hank"); // the lock was let go
    expect(await again.cmd("QUIT")).toStartWith("+OK");
  });

  test.skipIf(!Bun.which("python3"))("a client reading a large RETR slowly but steadily is not taken for one that stopped reading (--timeout 2)", async () => {
    // helper-38: progress showed only through drain events, which come after megabytes.
    const slow = await startPop(root, ["--timeout", "2"]);
    extra.push(slow);
    const big = rec(1, Array.from({ length: 100_000 }, (_, i) => `line ${i} ${"s".repeat(70)}`)); // ~8 MB, streamed
    seed("gina", big);
    const script = `
import socket, time
s = socket.create_connection(("127.0.0.1", ${slow.port}))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
def line():
    out = b""
    while not out.endswith(b"\\n"): out += s.recv(1)
    return out
line(); s.sendall(b"USER gina\\r\\n"); line(); s.sendall(b"PASS ginapw\\r\\n"); line()
s.sendall(b"RETR 1\\r\\n")
data = b""
started = time.time()
while b"\\r\\n.\\r\\n" not in data[-(1 << 16):]:
    chunk = s.recv(8192 if time.time() - started < 4 else 1 << 20)
    if not chunk: break
    data += chunk
    if time.time() - started < 4: time.sleep(0.05)  # 160 KB/s for 4 s, then as fast as it comes
print(len(data), data.find(b"\\r\\n.\\r\\n") + 5)
`;
    const [out, err] = await python([script]);
    expect(err).toBe("");
    const [, end] = out.trim().split(" ").map(Number);
    // The whole message came, after its +OK line.
    expect(end! - big.length).toBeGreaterThan(0);
    expect(end! - big.length).toBeLessThan(100);
    expect(slow.log()).not.toContain("stopped reading");
  });

  test("a multi-megabyte message is sent whole (write backpressure)", async () => {
    const body = Array.from({ length: 60_000 }, (_, i) => (i % 10 === 0 ? "." : "") + `line ${i} ${"z".repeat(70)}`);
    const p = seed("bob", rec(1), rec(2, body), rec(3));
    const w = await login("bob");
    const size = Number((await w.cmd("LIST 2")).split(" ")[2]);
    expect(size).toBeGreaterThan(4_000_000);
    w.write("RETR 2\r\nRETR 3\r\nQUIT\r\n");
    expect(await w.line()).toStartWith("+OK");
    const got = unstuffBody(await w.multi(30_000));
    expect(got.length).toBe(size);
    expect(got.equals(plain(2, body))).toBe(true);
    expect(await w.line()).toStartWith("+OK");
    expect(unstuffBody(await w.multi()).equals(plain(3))).toBe(true);
    expect(await w.line()).toStartWith("+OK");
    expect(readFileSync(p).length).toBeGreaterThan(size);
  });
});

describe("popserver process", () => {
  test("--timeout 1: an idle session is logged out, nothing deleted, lock released", async () => {
    const r = makeRoot({ ann: "annpw" });
    try {
      const p = join(r, "ann", "mymailbox");
      writeFileSync(p, Buffer.concat([rec(1), rec(2)]));
      const s = await startPop(r, ["--timeout", "1"]);
      extra.push(s);
      const w = await popLogin(s.port, "ann", "annpw");
      wires.push(w);
      expect(await w.cmd("DELE 1")).toStartWith("+OK");
      const l = await w.line(10_000);
      expect(l).toStartWith("-ERR");
      expect(l).toMatch(/autologout/i);
      expect(await w.waitClosed()).toBe(true);
      expect(await waitGone(popLockPath(r, "ann"))).toBe(true);
      expect(readFileSync(p).equals(Buffer.concat([rec(1), rec(2)]))).toBe(true);
      // An active session is not logged out while it keeps talking.
      const w2 = await popLogin(s.port, "ann", "annpw");
      wires.push(w2);
      // Pauses well under the timeout: a loaded machine may stretch them.
      for (let i = 0; i < 8; i++) {
        await Bun.sleep(200);
        expect(await w2.cmd("NOOP")).toBe("+OK");
      }
      expect(await w2.cmd("QUIT")).toStartWith("+OK");
      expect(await s.stop("SIGTERM")).toBe(0);
    } finally {
      removeRoot(r);
    }
  });

  // Was a bug: the idle sweeper skipped busy connections, so a client that stopped reading
  // kept the POP3 lock forever (fixed in lib/server.ts, ededee7).
  test("--timeout 1: a client that stops reading in the middle of a big RETR is logged out and the lock released", async () => {
    const r = makeRoot({ ann: "annpw" });
    try {
      const body = Array.from({ length: 400_000 }, (_, i) => `stalled line ${i} ${"s".repeat(60)}`);
      writeFileSync(join(r, "ann", "mymailbox"), rec(1, body));
      const s = await startPop(r, ["--timeout", "1"]);
      extra.push(s);
      const w = await popLogin(s.port, "ann", "annpw");
      wires.push(w);
      w.write("RETR 1\r\n");
      await w.line();
      w.sock.pause(); // stop reading: the server's writes back up
      // Well past the idle timeout, the session must be over and the mailbox free again.
      expect(await waitGone(popLockPath(r, "ann"), 5000)).toBe(true);
      w.destroy();
      const w2 = await popLogin(s.port, "ann", "annpw");
      wires.push(w2);
      expect(await w2.cmd("QUIT")).toStartWith("+OK");
      s.proc.kill(9);
      await s.proc.exited;
    } finally {
      removeRoot(r);
    }
  });

  test("SIGTERM: connected clients are told, the process exits 0, locks are released", async () => {
    const r = makeRoot({ ann: "annpw" });
    try {
      writeFileSync(join(r, "ann", "mymailbox"), rec(1));
      const s = await startPop(r);
      extra.push(s);
      const w = await popLogin(s.port, "ann", "annpw");
      wires.push(w);
      expect(await w.cmd("DELE 1")).toStartWith("+OK");
      const code = await s.stop("SIGTERM");
      expect(code).toBe(0);
      expect(await w.line()).toStartWith("-ERR");
      expect(await w.waitClosed()).toBe(true);
      expect(existsSync(popLockPath(r, "ann"))).toBe(false);
      expect(readFileSync(join(r, "ann", "mymailbox")).equals(rec(1))).toBe(true);
      expect(s.log()).toMatch(/SIGTERM/);
    } finally {
      removeRoot(r);
    }
  });

  async function runCli(args: string[], cwd: string): Promise<{ code: number; out: string; err: string }> {
    const proc = Bun.spawn(command("popserver", args), { cwd, stdout: "pipe", stderr: "pipe", stdin: "ignore" });
    const timer = setTimeout(() => proc.kill(9), 15_000);
    const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    clearTimeout(timer);
    return { code, out, err };
  }

  test("CLI errors: one line on stderr and a non-zero exit", async () => {
    const r = makeRoot({ ann: "annpw" });
    const empty = makeRoot({});
    try {
      const cases: [string[], string, RegExp][] = [
        [["abc", "--root", r], r, /port/],
        [["70000", "--root", r], r, /port/],
        [["0", "--bogus", "--root", r], r, /unknown option/],
        [["0", "1", "--root", r], r, /unexpected argument/],
        [["0", "--root", join(r, "nowhere")], r, /user\.txt/],
        [["0", "--root", empty, "--host", "127.0.0.1"], empty, /user\.txt/],
        [["0", "--root", r, "--timeout", "x"], r, /--timeout/],
        [["0", "--root", r, "--host", "127.0.0.1", "--max-connections", "1e3"], r, /--max-connections "1e3": expected a whole number/],
        [["0", "--root", r, "--host", "256.1.1.1"], r, /256\.1\.1\.1/],
        [[String(pop.port), "--root", r, "--host", "127.0.0.1"], r, /in use/],
      ];
      for (const [args, cwd, re] of cases) {
        const { code, out, err } = await runCli(args, cwd);
        expect([args.join(" "), code === 0]).toEqual([args.join(" "), false]);
        expect(err.trimEnd().split("\n")).toHaveLength(1);
        expect(err).toMatch(/^popserver: /);
        expect(err).toMatch(re);
        expect(err).not.toMatch(/\n\s+at /);
        expect(out).not.toMatch(/listening/);
      }
      const help = await runCli(["--help"], r);
      expect(help.code).toBe(0);
      expect(help.out).toMatch(/usage: popserver/);
      expect(help.out).toContain("enables STLS\n");
      expect(help.out).not.toMatch(/STARTTLS|465|SMTP/);
      expect((await runCli(["-V"], r)).out).toMatch(/^popserver \d+\.\d+\.\d+\n$/);
    } finally {
      removeRoot(r);
      removeRoot(empty);
    }
  });
});
