// SMTP deliveries beside POP3 clients that read and delete the same mailboxes: each POP3
// QUIT that deleted something rewrites the mailbox under the write lock smtpmail keeps
// while busy, so the two servers take turns on it. Bounded by count and time.
import { percentile } from "./lib.ts";
import { PopConn } from "./pop-load.ts";
import { smtpLoad, type SmtpLoadResult } from "./smtp-load.ts";

export interface MixedResult {
  smtp: SmtpLoadResult;
  popSessions: number;
  retrieved: number;
  popSeconds: number;
  quitP50: number;
  quitP99: number;
  popErrors: number;
}

export async function mixedLoad(opt: { smtpPort: number; popPort: number; users: string[]; popClients: number; seconds: number }): Promise<MixedResult> {
  const deadline = performance.now() + opt.seconds * 1000;
  const quits: number[] = [];
  let sessions = 0;
  let retrieved = 0;
  let errors = 0;
  // Each client on one mailbox: log in, RETR and DELE every message one at a time, QUIT.
  const client = async (user: string) => {
    while (performance.now() < deadline) {
      const c = await PopConn.open(opt.popPort);
      if (!(await c.send(`USER ${user}`)) || !(await c.send(`PASS ${user}pw`))) {
        // In use by another client of the same mailbox: RFC 1939 allows the refusal.
        c.close();
        await Bun.sleep(2);
        continue;
      }
      let n = 0;
      while (n < 100_000 && performance.now() < deadline && (await c.send(`RETR ${n + 1}`, true))) {
        await c.send(`DELE ${++n}`);
      }
      retrieved += n;
      const t = performance.now();
      if (!(await c.send("QUIT"))) errors++;
      quits.push(performance.now() - t);
      sessions++;
      c.close();
      if (n === 0) await Bun.sleep(2);
    }
  };
  const t0 = performance.now();
  const pops = Promise.all(Array.from({ length: opt.popClients }, (_, i) => client(opt.users[i % opt.users.length]!)));
  const smtp = await smtpLoad({ port: opt.smtpPort, sessions: 20, total: 1_000_000, users: opt.users, messageBytes: 1024, timeLimitMs: opt.seconds * 1000 });
  await pops;
  quits.sort((a, b) => a - b);
  return { smtp, popSessions: sessions, retrieved, popSeconds: (performance.now() - t0) / 1000, quitP50: percentile(quits, 50), quitP99: percentile(quits, 99), popErrors: errors };
}
