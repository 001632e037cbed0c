// The lost-mail race: SMTP deliveries to one mailbox at full speed while POP3 sessions (on
// two popserver processes) log in, delete some messages and QUIT, which rewrites the file.
// At the end every message that got 250 and was not deleted is there exactly once, and no
// deleted message came back.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { scanBuffer } from "../lib/mailbox-scanner.ts";
import { mailboxPath } from "../lib/paths.ts";
import { makeRoot, removeRoot, startPop, startSmtp, type Running } from "./helpers/servers.ts";
import { Wire } from "./helpers/wire.ts";

const ROUNDS = 20;
const SENDERS = 4;
const PER_SENDER = 6;

let root: string;
let smtp: Running;
let pops: Running[] = [];
const wires: Wire[] = [];

beforeAll(async () => {
  root = makeRoot({ alice: "alicepw" });
  const started = await Promise.all([startSmtp(root, ["--quiet"]), startPop(root, ["--quiet"]), startPop(root, ["--quiet"])]);
  smtp = started[0];
  pops = started.slice(1);
});
afterAll(async () => {
  for (const w of wires) w.destroy();
  const all = [smtp, ...pops].filter(Boolean);
  for (const r of all) r.proc.kill(9);
  await Promise.all(all.map((r) => r.proc.exited));
  removeRoot(root);
});

async function reply(w: Wire): Promise<string> {
  let l = await w.line();
  while (/^\d{3}-/.test(l)) l = await w.line();
  return l;
}

/** One SMTP connection delivering the given numbers; returns those that got 250. */
async function sender(numbers: number[]): Promise<number[]> {
  const ok: number[] = [];
  const w = await Wire.open(smtp.port);
  wires.push(w);
  try {
    expect(await reply(w)).toStartWith("220");
    w.write("HELO racer\r\n");
    expect(await reply(w)).toStartWith("250");
    for (const n of numbers) {
      w.write(`MAIL FROM:<bob@example.com>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n`);
      expect(await reply(w)).toStartWith("250");
      expect(await reply(w)).toStartWith("250");
      expect(await reply(w)).toStartWith("354");
      w.write(`From: bob@example.com\r\nTo: alice@example.com\r\nSubject: race ${n}\r\n\r\nmessage number ${n}\r\n..\r\n...\r\n.\r\n`);
      const r = await reply(w);
      if (r.startsWith("250")) ok.push(n);
    }
    w.write("QUIT\r\n");
  } finally {
    w.destroy();
  }
  return ok;
}

/** One POP3 session: read every Subject, delete the even-numbered ones, QUIT. Returns deleted numbers, or null if the mailbox was busy. */
async function popSession(port: number): Promise<number[] | null> {
  const w = await Wire.open(port);
  wires.push(w);
  try {
    expect(await w.line()).toStartWith("+OK");
    expect(await w.cmd("USER alice")).toStartWith("+OK");
    const pass = await w.cmd("PASS alicepw");
    if (pass.startsWith("-ERR")) {
      expect(pass).toMatch(/IN-USE/);
      return null;
    }
    const count = Number((await w.cmd("STAT")).split(" ")[1]);
    w.write(Array.from({ length: count }, (_, i) => `TOP ${i + 1} 0\r\n`).join(""));
    const toDelete: number[] = [];
    const nums: number[] = [];
    for (let i = 1; i <= count; i++) {
      expect(await w.line()).toStartWith("+OK");
      const head = (await w.multi()).toString();
      const n = Number(/Subject: race (\d+)/.exec(head)![1]);
      nums.push(n);
      if (n % 2 === 0) toDelete.push(i);
    }
    w.write(toDelete.map((i) => `DELE ${i}\r\n`).join(""));
    for (const _ of toDelete) expect(await w.line()).toStartWith("+OK");
    const quit = await w.cmd("QUIT");
    expect(quit).toStartWith("+OK");
    return toDelete.map((i) => nums[i - 1]!);
  } finally {
    w.destroy();
  }
}

test(`${ROUNDS} rounds of SMTP deliveries racing POP3 deletions lose nothing and duplicate nothing`, async () => {
  const delivered: number[] = [];
  const deleted: number[] = [];
  let next = 1;
  let sessions = 0;
  for (let round = 0; round < ROUNDS; round++) {
    let sending = true;
    const batches = Array.from({ length: SENDERS }, () => Array.from({ length: PER_SENDER }, () => next++));
    const senders = Promise.all(batches.map(sender)).then((r) => {
      sending = false;
      return r;
    });
    // Two POP3 clients, one per popserver process, loop while the deliveries run.
    const poppers = pops.map(async (p) => {
      for (let k = 0; k < 20 && (sending || k === 0); k++) {
        const d = await popSession(p.port);
        if (d) {
          sessions++;
          deleted.push(...d);
        }
      }
    });
    const [results] = await Promise.all([senders, ...poppers]);
    for (const r of results) delivered.push(...r);
  }
  expect(delivered.length).toBe(ROUNDS * SENDERS * PER_SENDER);
  expect(sessions).toBeGreaterThan(ROUNDS);
  expect(deleted.length).toBeGreaterThan(0);
  expect(new Set(deleted).size).toBe(deleted.length); // nothing deleted twice

  const file = readFileSync(mailboxPath(root, "alice"));
  const scan = scanBuffer(file);
  expect(scan.validEnd).toBe(file.length);
  const present = scan.messages.map((m) => {
    const text = file.subarray(m.offset, m.offset + m.length).toString();
    return Number(/Subject: race (\d+)/.exec(text)![1]);
  });
  const gone = new Set(deleted);
  const want = delivered.filter((n) => !gone.has(n)).sort((a, b) => a - b);
  expect(present.sort((a, b) => a - b)).toEqual(want);
  // Every message's body survived intact.
  for (const m of scan.messages) {
    const text = file.subarray(m.offset, m.offset + m.length).toString();
    const n = /Subject: race (\d+)/.exec(text)![1];
    expect(text.endsWith(`\r\nmessage number ${n}\r\n..\r\n...\r\n.\r\n`)).toBe(true);
  }
});
