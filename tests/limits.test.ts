// Abuse limits on the real servers: failed logins slowed and cut off, per-address and
// messages-per-connection limits, AUTH without TLS (--allow-plain-auth), --hash-password.
// The point throughout: a hostile client never slows down a well-behaved one.
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { command, makeRoot, removeRoot, startPop, startSmtp, type Running } from "./helpers/servers.ts";
import { SmtpConn, sendOne } from "./helpers/smtp-conn.ts";
import { connectionRoom } from "../lib/descriptors.ts";
import { popLogin, Wire } from "./helpers/wire.ts";

/** No answer for this long is a client left silent (generous: CI machines are loaded). */
const SILENT_MS = 4000;

const running: Running[] = [];
const roots: string[] = [];
const wires: { destroy(): void }[] = [];
afterAll(async () => {
  for (const w of wires) w.destroy();
  for (const r of running) if (r.proc.exitCode === null && r.proc.signalCode === null) r.proc.kill(9);
  await Promise.all(running.map((r) => r.proc.exited));
  for (const r of roots) removeRoot(r);
});
function root(users: Record<string, string> = { alice: "alicepw", bob: "bobpw" }): string {
  const r = makeRoot(users);
  roots.push(r);
  return r;
}
async function track<T extends Running>(p: Promise<T>): Promise<T> {
  const r = await p;
  running.push(r);
  return r;
}
const b64 = (s: string) => Buffer.from(s).toString("base64");
/** CPU time a process spends over the next `ms`, in clock ticks (1/100 s): user + system. */
async function cpuTicksOver(pid: number, ms: number): Promise<number> {
  const ticks = () => readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ").slice(11, 13).reduce((a, b) => a + Number(b), 0);
  const before = ticks();
  await Bun.sleep(ms);
  return ticks() - before;
}

describe("failed logins", () => {
  test("POP3: 50 connections guessing passwords from one address; a real user is still served at once", async () => {
    const pop = await track(startPop(root(), ["--login-delay", "500", "--max-login-delay", "2000"]));
    const hostile = await Promise.all(Array.from({ length: 50 }, () => Wire.open(pop.port)));
    wires.push(...hostile);
    await Promise.all(hostile.map((w) => w.line()));
    // Each sends three wrong passwords at once; replies are held back by growing delays.
    for (const w of hostile) w.write("USER alice\r\nPASS guess1\r\nUSER alice\r\nPASS guess2\r\nUSER alice\r\nPASS guess3\r\n");
    await Bun.sleep(200);
    const good = await popLogin(pop.port, "alice", "alicepw");
    wires.push(good);
    expect(await good.cmd("STAT")).toMatch(/^\+OK \d+ \d+$/);
    expect(await good.cmd("QUIT")).toStartWith("+OK");
    // No clock: the guessers are still waiting for their answers while the real user is already done.
    const finished = hostile.filter((w) => w.closed).length;
    expect(finished).toBeLessThan(hostile.length);
    // ... and each is eventually refused and disconnected after its third failure.
    const w = hostile[0]!;
    const replies: string[] = [];
    for (let i = 0; i < 6; i++) replies.push(await w.line(30_000));
    expect(replies.filter((r) => r === "-ERR [AUTH] invalid user name or password").length).toBe(2);
    expect(replies.at(-1)).toBe("-ERR [AUTH] invalid user name or password; too many failures, closing");
    expect(await w.waitClosed(30_000)).toBe(true);
  }, 120_000);

  test("SMTP AUTH with --allow-plain-auth: advertised without TLS, 535 slowed, 421 and close after the third failure", async () => {
    const smtp = await track(startSmtp(root(), ["--allow-plain-auth", "--login-delay", "50"]));
    const c = await SmtpConn.open(smtp.port);
    wires.push(c);
    expect(await c.code()).toBe(220);
    expect(await c.cmd("EHLO x")).toContain("250-AUTH PLAIN LOGIN\r\n");
    expect(await c.cmd("AUTH PLAIN " + b64("\0alice\0nope"))).toBe("535 Authentication credentials invalid\r\n");
    expect(await c.cmd("AUTH LOGIN")).toBe("334 VXNlcm5hbWU6\r\n");
    expect(await c.cmd(b64("alice"))).toBe("334 UGFzc3dvcmQ6\r\n");
    expect(await c.cmd("*")).toBe("501 Authentication cancelled\r\n");
    expect(await c.cmd("AUTH PLAIN !!!")).toBe("501 Cannot decode the response (base64 expected)\r\n");
    expect(await c.cmd("AUTH PLAIN " + b64("\0alice\0nope2"))).toBe("535 Authentication credentials invalid\r\n");
    c.send("AUTH PLAIN " + b64("\0bob\0nope3") + "\r\n");
    expect(await c.reply()).toBe("535 Authentication credentials invalid\r\n");
    expect(await c.reply()).toStartWith("421 ");
    await c.untilClosed();
    // A correct login from the same address is answered without delay.
    const d = await SmtpConn.open(smtp.port);
    wires.push(d);
    await d.code();
    await d.cmd("EHLO x");
    expect(await d.cmd("AUTH PLAIN " + b64("\0alice\0alicepw"))).toBe("235 Authentication successful\r\n");
    expect(await d.cmd("AUTH PLAIN " + b64("\0alice\0alicepw"))).toStartWith("503 ");
    expect(await sendOne(d, "alice@x", ["bob@x"], "Subject: a\r\n\r\nb\r\n")).toBe("250 OK Message accepted for delivery\r\n");
  });
});

describe("SASL response lines", () => {
  test("a response longer than a command line is read whole (RFC 4954: up to 12288 octets); a longer one ends the exchange", async () => {
    const long = "long-".repeat(240); // 1200 characters: 1600 in base64, over a command line's 1038
    const smtp = await track(startSmtp(root({ alice: long, bob: "bobpw" }), ["--allow-plain-auth"]));
    const c = await SmtpConn.open(smtp.port);
    wires.push(c);
    await c.code();
    await c.cmd("EHLO x");
    expect(await c.cmd("AUTH LOGIN")).toBe("334 VXNlcm5hbWU6\r\n");
    expect(await c.cmd(b64("alice"))).toBe("334 UGFzc3dvcmQ6\r\n");
    expect(await c.cmd(b64(long))).toBe("235 Authentication successful\r\n");
    // Commands are still held to their limit, and a response past 12288 is refused, not buffered.
    expect(await c.cmd("NOOP " + "x".repeat(1100))).toStartWith("500 ");
    const d = await SmtpConn.open(smtp.port);
    wires.push(d);
    await d.code();
    await d.cmd("EHLO x");
    expect(await d.cmd("AUTH PLAIN")).toBe("334 \r\n");
    expect(await d.cmd("A".repeat(13_000))).toStartWith("500 ");
    expect(await d.cmd("NOOP")).toStartWith("250 ");
  });
});

describe("connection limits", () => {
  test("--max-per-address: the extra connection gets 421 with a reason; a freed slot is usable again", async () => {
    const smtp = await track(startSmtp(root(), ["--max-per-address", "3"]));
    const conns = await Promise.all([1, 2, 3].map(() => SmtpConn.open(smtp.port)));
    wires.push(...conns);
    for (const c of conns) expect(await c.code()).toBe(220);
    const extra = await SmtpConn.open(smtp.port);
    wires.push(extra);
    expect(await extra.reply()).toMatch(/^421 .*Too many connections from your address/);
    await extra.untilClosed();
    conns[0]!.destroy();
    let ok = false;
    for (let i = 0; i < 50 && !ok; i++) {
      await Bun.sleep(50);
      const again = await SmtpConn.open(smtp.port);
      wires.push(again);
      ok = (await again.reply()).startsWith("220");
    }
    expect(ok).toBe(true);
  });

  test("a refused connection is closed outright, not kept reading: a flood of them that never close does not hold the slots of others (helper-102)", async () => {
    const smtp = await track(startSmtp(root(), ["--max-per-address", "1", "--max-connections", "4"]));
    const held = await SmtpConn.open(smtp.port);
    wires.push(held);
    expect(await held.code()).toBe(220);
    // Refused ones whose client neither reads on nor closes: each must be ended by the server at once.
    const flood: import("node:net").Socket[] = [];
    try {
      const replies = await Promise.all(
        Array.from({ length: 10 }, () =>
          new Promise<string>((resolve) => {
            const sock = connect({ port: smtp.port, host: "127.0.0.1", allowHalfOpen: true });
            flood.push(sock);
            sock.once("data", (d) => resolve(d.toString().slice(0, 3)));
            sock.on("error", () => {});
          }),
        ),
      );
      expect(replies).toEqual(Array(10).fill("421"));
      // Another address, well within --max-connections once the refused ones are gone.
      const other = await new Promise<string>((resolve) => {
        const sock = connect({ port: smtp.port, host: "127.0.0.1", localAddress: "127.0.0.2" });
        flood.push(sock);
        sock.once("data", (d) => resolve(d.toString().slice(0, 3)));
        sock.on("error", (e) => resolve(e.message));
      });
      expect(other).toBe("220");
    } finally {
      for (const sock of flood) sock.destroy();
    }
  });

  // Under a low open-file limit: sessions up to what the descriptors allow, then 421, then
  // sockets closed at once; never accept() failing, which Bun retried at 100 % CPU while new
  // clients hung without a word (helper-47).
  // At 64 the fixed reserves left one socket: clients served one at a time (helper-94).
  for (const limit of [256, 64])
  test.skipIf(!Bun.which("prlimit"))(`a low open-file limit (${limit}) bounds the connections: 220, then 421 (or closed); no silent hang, no spinning; served again after`, async () => {
    const r = root();
    const smtp = await track(startSmtp(r, [], ["prlimit", `--nofile=${limit}:${limit}`, "--"]));
    const open: import("node:net").Socket[] = [];
    const first = (): Promise<string> =>
      new Promise((resolve) => {
        const s = connect(smtp.port, "127.0.0.1");
        open.push(s);
        const done = (what: string) => {
          clearTimeout(timer);
          resolve(what);
        };
        const timer = setTimeout(() => done("silent"), SILENT_MS);
        s.once("data", (d) => done(d.toString().slice(0, 3)));
        s.once("close", () => done("closed"));
        s.on("error", () => {});
      });
    const seen: string[] = [];
    try {
      for (let i = 0; i < 300; i++) {
        const what = await first();
        seen.push(what);
        if (what === "silent") break;
      }
      const count = (w: string) => seen.filter((x) => x === w).length;
      const max = connectionRoom(limit).sessions;
      expect(max).toBeGreaterThanOrEqual(limit / 4);
      expect(count("220")).toBe(max);
      expect(smtp.log()).toContain(`warning: the open-file limit (${limit}, ulimit -n) allows only ${max} connections at once`);
      expect(smtp.log()).toContain(`refusing connections: ${max} connections at once is what the open-file limit (${limit}, ulimit -n) allows`);
      expect(count("silent")).toBe(0);
      expect(count("421") + count("closed")).toBe(300 - max);
      // Holding them all: the server is idle, not retrying accept().
      expect(await cpuTicksOver(smtp.proc.pid, 1000)).toBeLessThan(30); // clock ticks (1/100 s)
    } finally {
      for (const s of open) s.destroy();
    }
    let greeted = false;
    for (let i = 0; i < 50 && !greeted; i++) {
      await Bun.sleep(50);
      greeted = (await first()) === "220";
    }
    expect(greeted).toBe(true);
    for (const s of open) s.destroy();
    const c = await SmtpConn.open(smtp.port);
    wires.push(c);
    expect(await c.code()).toBe(220);
    await c.cmd("HELO x");
    expect(await sendOne(c, "a@x", ["alice@x"], "Subject: after\r\n\r\nhi\r\n")).toStartWith("250 ");
  });

  test.skipIf(!Bun.which("prlimit"))("POP3 under a low open-file limit: logged-in sessions' mailboxes count too; no client is left without an answer", async () => {
    const users = Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`p${i}`, `pw${i}`]));
    const r = root(users);
    for (const u of Object.keys(users)) writeFileSync(join(r, u, "mymailbox"), "Subject: s\r\n\r\nhi\r\n.\r\n");
    const pop = await track(startPop(r, [], ["prlimit", "--nofile=512:512", "--"]));
    const open: import("node:net").Socket[] = [];
    // Greeting, USER, PASS: the last line seen ("+OK", "-ERR...", "closed" or "silent").
    const login = (i: number): Promise<string> =>
      new Promise((resolve) => {
        const s = connect(pop.port, "127.0.0.1");
        open.push(s);
        let buf = "";
        let step = 0;
        const done = (what: string) => {
          clearTimeout(timer);
          resolve(what);
        };
        const timer = setTimeout(() => done("silent"), SILENT_MS);
        s.on("data", (d) => {
          buf += d.toString();
          while (buf.includes("\r\n")) {
            const line = buf.slice(0, buf.indexOf("\r\n"));
            buf = buf.slice(buf.indexOf("\r\n") + 2);
            if (!line.startsWith("+OK") || step === 2) return done(line.slice(0, 40));
            s.write(step++ === 0 ? `USER p${i}\r\n` : `PASS pw${i}\r\n`);
          }
        });
        s.once("close", () => done("closed"));
        s.on("error", () => {});
      });
    const seen: string[] = [];
    try {
      for (let i = 0; i < 260; i++) seen.push(await login(i));
      expect(seen.filter((w) => w === "silent").length).toBe(0);
      const loggedIn = seen.filter((w) => w.startsWith("+OK")).length;
      expect(loggedIn).toBeGreaterThan(100);
      expect(loggedIn).toBeLessThan(260);
      // What the warning says is what it held: a session logged in holds its mailbox too (helper-98).
      const { sockets, sessions } = connectionRoom(512);
      expect(loggedIn).toBeLessThanOrEqual(Math.floor(sockets / 2));
      expect(loggedIn).toBeGreaterThanOrEqual(Math.floor(sockets / 2) - 2);
      expect(pop.log()).toContain(`allows only ${sessions} connections, ${Math.floor(sockets / 2)} of them logged in at once`);
      expect(seen.filter((w) => !w.startsWith("+OK") && w !== "closed" && !w.startsWith("-ERR [SYS/TEMP]"))).toEqual([]);
      expect(await cpuTicksOver(pop.proc.pid, 1000)).toBeLessThan(30); // clock ticks (1/100 s): not retrying accept()
    } finally {
      for (const s of open) s.destroy();
    }
    let again = "";
    for (let i = 0; i < 50 && !again.startsWith("+OK"); i++) {
      await Bun.sleep(50);
      again = await login(0);
    }
    for (const s of open) s.destroy();
    expect(again).toStartWith("+OK");
  });

  test("POP3 --max-per-address: -ERR [SYS/TEMP] for the extra connection", async () => {
    const pop = await track(startPop(root(), ["--max-per-address", "1"]));
    const a = await Wire.open(pop.port);
    wires.push(a);
    expect(await a.line()).toStartWith("+OK");
    const b = await Wire.open(pop.port);
    wires.push(b);
    expect(await b.line()).toBe("-ERR [SYS/TEMP] too many connections from your address, try again later");
  });

  test("--max-messages: the next MAIL after the limit gets 421 and the connection closes", async () => {
    const smtp = await track(startSmtp(root(), ["--max-messages", "2"]));
    const c = await SmtpConn.open(smtp.port);
    wires.push(c);
    await c.code();
    await c.cmd("HELO x");
    for (let i = 0; i < 2; i++) expect(await sendOne(c, "a@x", ["bob@x"], `Subject: ${i}\r\n\r\nx\r\n`)).toStartWith("250 ");
    expect(await c.cmd("MAIL FROM:<a@x>")).toMatch(/^421 .*Too many messages on this connection/);
    await c.untilClosed();
  });
});

describe("--hash-password", () => {
  test("prints a Bun.password hash that works in user.txt, alone on stdout", async () => {
    const p = Bun.spawn(command("smtpmail", ["--hash-password"]), { stdin: new TextEncoder().encode("s3cret pw\n"), stdout: "pipe", stderr: "pipe" });
    const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    expect(code).toBe(0);
    // stdout is the hash alone, as `H=$(smtpmail --hash-password)` wants it; the prompt goes to stderr (helper-89).
    expect(out).toMatch(/^\$argon2id\$[^\n]+\n$/);
    expect(err).toBe("Password: ");
    const hash = out.trim();
    expect(await Bun.password.verify("s3cret pw", hash)).toBe(true);
    const r = root();
    writeFileSync(join(r, "user.txt"), `alice ${hash}\n`);
    const pop = await track(startPop(r));
    const w = await Wire.open(pop.port);
    wires.push(w);
    await w.line();
    await w.cmd("USER alice");
    // A space inside the password is kept; the hash is verified, not compared as text.
    expect(await w.cmd("PASS s3cret pw")).toStartWith("+OK");
  });
});
