// kill -9 of popserver in the middle of a session and in the middle of the rewrite at QUIT
// (a mailbox of a few thousand messages, several kill delays), with smtpmail delivering to
// the same mailbox meanwhile. After a restart: the mailbox parses, login works (no stale
// lock), every message that was not deleted is there exactly once, and the deletions either
// all happened or none did.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { buildRecord } from "../lib/mailbox.ts";
import { scanBuffer } from "../lib/mailbox-scanner.ts";
import { mailboxPath, popLockPath } from "../lib/paths.ts";
import { makeRoot, removeRoot, startPop, startSmtp, type Running } from "./helpers/servers.ts";
import { popLogin, smtpSend, Wire } from "./helpers/wire.ts";

const MESSAGES = 3000;
const BODY = Array.from({ length: 24 }, (_, i) => `${i % 5 === 0 ? "." : ""}filler line ${i} ${"q".repeat(64)}`);

let root: string;
let smtp: Running;
const procs: Running[] = [];
const wires: Wire[] = [];
let master: Buffer;

function record(n: number): Buffer {
  const wire = [`From: bob@example.com`, `To: alice@example.com`, `Subject: crash ${n}`, "", ...BODY].map((l) => (l.startsWith(".") ? "." + l : l) + "\r\n").join("");
  return buildRecord(Buffer.from(wire), "Received: 2024-01-01 : 00 : 00");
}

beforeAll(async () => {
  root = makeRoot({ alice: "alicepw" });
  master = Buffer.concat(Array.from({ length: MESSAGES }, (_, i) => record(i)));
  smtp = await startSmtp(root, ["--quiet"]);
});
afterAll(async () => {
  for (const w of wires) w.destroy();
  const all = [smtp, ...procs].filter(Boolean);
  for (const r of all) r.proc.kill(9);
  await Promise.all(all.map((r) => r.proc.exited));
  removeRoot(root);
});

async function pop(): Promise<Running> {
  const p = await startPop(root, ["--quiet"]);
  procs.push(p);
  return p;
}

function present(): number[] {
  const file = readFileSync(mailboxPath(root, "alice"));
  const scan = scanBuffer(file);
  expect(scan.validEnd).toBe(file.length);
  return scan.messages.map((m) => Number(/Subject: crash (-?\d+)/.exec(file.subarray(m.offset, m.offset + m.length).toString())![1]));
}

/** After a crash: a fresh popserver accepts the login and sees a consistent mailbox. */
async function checkAfterRestart(expectCount: number): Promise<void> {
  const p = await pop();
  const w = await popLogin(p.port, "alice", "alicepw");
  wires.push(w);
  expect(await w.cmd("STAT")).toStartWith(`+OK ${expectCount} `);
  expect(await w.cmd(`LIST ${expectCount}`)).toStartWith(`+OK ${expectCount} `);
  expect(await w.cmd("QUIT")).toStartWith("+OK");
  await w.waitClosed();
  expect(await p.stop("SIGTERM")).toBe(0);
  const dir = readdirSync(join(root, "alice"));
  // The temp file of an interrupted rewrite is cleaned up at the next login; the POP3 lock is free.
  expect(dir.filter((n) => n.includes(".rewrite.") || n === "mymailbox.pop3.lock")).toEqual([]);
  // A write lock left by the killed rewrite may remain until the next writer breaks it, but
  // it must name a dead process (smtpmail must not wait for it). smtpmail's own lock is let
  // go a few milliseconds after its last delivery.
  if (dir.includes("mymailbox.lock")) {
    const pid = Number(readFileSync(join(root, "alice", "mymailbox.lock"), "utf8").split(/\s+/)[0]);
    expect(procs.some((r) => r.proc.pid === pid && r.proc.exitCode === null && r.proc.signalCode === null)).toBe(false);
  }
  // And SMTP delivery still works at once.
  const r = await smtpSend(smtp.port, "bob@example.com", "alice@example.com", ["From: bob@example.com", "To: alice@example.com", `Subject: crash ${--probe}`, "", "probe"]);
  expect(r).toStartWith("250");
  expect(present()).toContain(probe);
  for (let i = 0; i < 200 && existsSync(join(root, "alice", "mymailbox.lock")); i++) await Bun.sleep(5);
  expect(existsSync(join(root, "alice", "mymailbox.lock"))).toBe(false);
}
let probe = 0;

test("kill -9 during a session: nothing deleted, no stale lock", async () => {
  for (let trial = 0; trial < 3; trial++) {
    writeFileSync(mailboxPath(root, "alice"), master);
    const p = await pop();
    const w = await popLogin(p.port, "alice", "alicepw");
    wires.push(w);
    w.write(Array.from({ length: 500 }, (_, i) => `DELE ${i + 1}\r\n`).join("") + "RETR 1000\r\nLIST\r\n");
    await w.line();
    expect(existsSync(popLockPath(root, "alice"))).toBe(true);
    p.proc.kill(9);
    await p.proc.exited;
    w.destroy();
    expect(readFileSync(mailboxPath(root, "alice")).equals(master)).toBe(true);
    await checkAfterRestart(MESSAGES);
  }
});

test("kill -9 during the rewrite at QUIT, at several delays, while SMTP delivers", async () => {
  const delays = [0, 3, 10, 30, 60, 100, 200, 800];
  const outcomes: string[] = [];
  let extraN = 100_000;
  for (const delay of delays) {
    writeFileSync(mailboxPath(root, "alice"), master);
    const p = await pop();
    const w = await popLogin(p.port, "alice", "alicepw");
    wires.push(w);
    const marked = Array.from({ length: MESSAGES }, (_, i) => i).filter((i) => i % 3 !== 1);
    w.write(marked.map((i) => `DELE ${i + 1}\r\n`).join(""));
    for (const _ of marked) expect(await w.line()).toStartWith("+OK");
    // Deliveries racing the rewrite and the crash.
    const nums = [extraN++, extraN++, extraN++];
    const sending = Promise.all(
      nums.map((n) => smtpSend(smtp.port, "bob@example.com", "alice@example.com", [`From: bob@example.com`, `To: alice@example.com`, `Subject: crash ${n}`, "", "late"]).then((r) => (r.startsWith("250") ? n : -1))),
    );
    w.write("QUIT\r\n");
    if (delay) await Bun.sleep(delay);
    p.proc.kill(9);
    await p.proc.exited;
    w.destroy();
    const leftover = readdirSync(join(root, "alice")).some((n) => n.includes(".rewrite."));
    const sent = (await sending).filter((n) => n >= 0);
    expect(sent.length).toBe(nums.length);
    const got = present().sort((a, b) => a - b);
    const kept = Array.from({ length: MESSAGES }, (_, i) => i).filter((i) => i % 3 === 1);
    const all = Array.from({ length: MESSAGES }, (_, i) => i);
    const done = got.length === kept.length + sent.length;
    // Either no deletion happened or all did; late mail is there in both cases, once.
    expect(got).toEqual([...(done ? kept : all), ...sent].sort((a, b) => a - b));
    outcomes.push(`${delay}ms:${done ? "committed" : "not committed"}${leftover ? "+temp" : ""}`);
    await checkAfterRestart(got.length);
  }
  console.log(`pop3-crash outcomes: ${outcomes.join(", ")}`);
});

test("rewrite temp files left by a killed popserver are removed when popserver starts, not only at that user's next login", async () => {
  const r = makeRoot({ carol: "c", dave: "d" });
  try {
    for (const u of ["carol", "dave"]) writeFileSync(`${mailboxPath(r, u)}.rewrite.999999.tmp`, "x".repeat(100_000));
    // dave's session is open in another popserver: his temp file waits for his next login.
    const other = await startPop(r, ["--quiet"]);
    procs.push(other);
    const w = await popLogin(other.port, "dave", "d");
    wires.push(w);
    const leftovers = (u: string) => readdirSync(join(r, u)).filter((n) => n.includes(".rewrite."));
    expect(leftovers("dave")).toEqual([]); // his login removed it, as before
    writeFileSync(`${mailboxPath(r, "dave")}.rewrite.999999.tmp`, "x");
    writeFileSync(`${mailboxPath(r, "carol")}.rewrite.999998.tmp`, "x");
    const p = await startPop(r, ["--quiet"]);
    procs.push(p);
    for (let i = 0; i < 100 && leftovers("carol").length; i++) await Bun.sleep(20);
    expect(leftovers("carol")).toEqual([]);
    expect(leftovers("dave")).toEqual([`mymailbox.rewrite.999999.tmp`]);
  } finally {
    removeRoot(r);
  }
});

test("a login as soon as popserver starts is never refused as 'in use' by its own clean-up of that user's leftovers", async () => {
  const r = makeRoot({ erin: "e" });
  try {
    for (let i = 0; i < 3; i++) {
      // Many leftovers, so that the clean-up holds erin's lock for a while after the start.
      for (let n = 0; n < 3000; n++) writeFileSync(`${mailboxPath(r, "erin")}.rewrite.${900000 + n}.tmp`, "x");
      const p = await startPop(r, ["--quiet"]);
      procs.push(p); // stopped by afterAll too, should the login fail
      const w = await popLogin(p.port, "erin", "e"); // throws on -ERR [IN-USE]
      expect(await w.cmd("QUIT")).toStartWith("+OK");
      w.destroy();
      expect(await p.stop()).toBe(0);
      expect(readdirSync(join(r, "erin")).filter((n) => n.includes(".rewrite."))).toEqual([]);
    }
  } finally {
    removeRoot(r);
  }
});
