// `npm run bench [scenario...]`: each scenario against freshly started servers on
// loopback, bounded in count and time, printing one figure per line. Scenarios: fsync,
// smtp, smtp-users, trace, smtp-source, pop, pop-logins, pop-large, mixed, conns, client (default: all but
// pop-large, which writes 1 GiB).
import { join } from "node:path";
import { existsSync, rmSync, statSync } from "node:fs";
import { cpus } from "node:os";
import { figure, makeRoot, startChild, cpuOf, memoryOf, percentile, threadCpuOf, PROJECT } from "./lib.ts";
import { traceSyncs } from "./fsync-trace.ts";
import { PopConn, writeMailbox } from "./pop-load.ts";
import { idleConnections } from "./conns.ts";
import { clientListTime } from "./client.ts";
import { fsyncFloor } from "./fsync-floor.ts";
import { smtpLoad } from "./smtp-load.ts";
import { mixedLoad } from "./mixed.ts";

const wanted = new Set(process.argv.slice(2));
const all = wanted.size === 0;
const want = (s: string) => wanted.has(s) || (all && s !== "pop-large");
const USERS = ["u1", "u2", "u3", "u4"];

console.log(`# machine: ${cpus().length} cores, ${cpus()[0]?.model ?? "?"}, bun ${Bun.version}`);

let fsyncMs = 0;
if (want("fsync") || want("smtp")) {
  const root = makeRoot([]);
  const f = await fsyncFloor(root);
  fsyncMs = f.msEach;
  figure("fsync floor: 1 KiB append+fsync", f.perSecond, "fsyncs/s");
  figure("fsync floor: time per fsync", f.msEach, "ms");
  figure("fsync floor: p99 of one append+fsync", f.p99ms, "ms");
  rmSync(root, { recursive: true, force: true });
}

if (want("smtp")) {
  const total = Number(process.env.BENCH_SMTP_MESSAGES ?? 10_000);
  const timeLimitMs = 60_000;
  // Not measured: the first thousands of messages also pay for compiling the hot paths.
  const WARMUP = Number(process.env.BENCH_SMTP_WARMUP ?? 3000);
  let ceiling = 0;
  {
    const root = makeRoot(USERS);
    const server = await startChild([join(PROJECT, "bench/null-smtp-server.ts"), "0", "--root", root, "--host", "127.0.0.1", "--quiet"]);
    await smtpLoad({ port: server.port, sessions: 20, total: WARMUP, users: USERS, messageBytes: 1024, timeLimitMs });
    const me0 = process.cpuUsage();
    const cpu0 = cpuOf(server.proc.pid);
    const r = await smtpLoad({ port: server.port, sessions: 20, total, users: USERS, messageBytes: 1024, timeLimitMs });
    const serverCpu = cpuOf(server.proc.pid) - cpu0;
    ceiling = r.messages / r.seconds;
    figure("smtp ceiling (no-op store), 20 sessions", ceiling, "msg/s");
    figure("smtp ceiling p50 latency", r.p50ms, "ms");
    // The protocol, the adapter and the load generator alone: a floor for the durable p99.
    figure("smtp ceiling p99 latency", r.p99ms, "ms");
    if (fsyncMs) figure("smtp ceiling p99 / fsync time", r.p99ms / fsyncMs, "x");
    const me = process.cpuUsage(me0);
    figure("smtp ceiling: load generator CPU share", ((me.user + me.system) / 1e6 / r.seconds) * 100, "% of one core");
    figure("smtp ceiling: server CPU", (serverCpu / r.seconds) * 100, "% of one core");
    figure("smtp ceiling: server CPU per message", Math.round((serverCpu / r.messages) * 1e6), "us");
    await server.stop();
    rmSync(root, { recursive: true, force: true });
  }
  for (const sessions of [1, 20, 200]) {
    const root = makeRoot(USERS);
    const server = await startChild([join(PROJECT, "smtpmail.ts"), "0", "--root", root, "--host", "127.0.0.1", "--quiet"]);
    await smtpLoad({ port: server.port, sessions, total: WARMUP, users: USERS, messageBytes: 1024, timeLimitMs });
    const me0 = process.cpuUsage();
    const cpu0 = cpuOf(server.proc.pid);
    const threads0 = threadCpuOf(server.proc.pid);
    const n = sessions === 1 ? Math.min(total, 2000) : total;
    const r = await smtpLoad({ port: server.port, sessions, total: n, users: USERS, messageBytes: 1024, timeLimitMs });
    const me = process.cpuUsage(me0);
    const serverCpu = cpuOf(server.proc.pid) - cpu0;
    const threads = threadCpuOf(server.proc.pid);
    await server.stop();
    const m = /stored (\d+) message copies with (\d+) fsyncs/.exec(server.stderr());
    const rate = r.messages / r.seconds;
    figure(`smtp durable, ${sessions} sessions: throughput`, rate, "msg/s");
    figure(`smtp durable, ${sessions} sessions: latency p50 (end of DATA to 250)`, r.p50ms, "ms");
    figure(`smtp durable, ${sessions} sessions: latency p99`, r.p99ms, "ms");
    if (m) figure(`smtp durable, ${sessions} sessions: fsyncs per message`, Number(m[2]) / Number(m[1]), "fsync/msg");
    if (sessions === 20) {
      figure("smtp durable, 20 sessions: throughput / ceiling", (rate / ceiling) * 100, "%");
      if (fsyncMs) figure("smtp durable, 20 sessions: p99 / fsync time", r.p99ms / fsyncMs, "x");
    }
    figure(`smtp durable, ${sessions} sessions: server CPU`, (serverCpu / r.seconds) * 100, "% of one core");
    figure(`smtp durable, ${sessions} sessions: server CPU per message`, Math.round((serverCpu / r.messages) * 1e6), "us");
    if (sessions === 20) {
      // Where the server's CPU goes: the event loop, the pool threads that run the fsyncs, the JIT.
      for (const [name, secs] of threads) {
        const used = secs - (threads0.get(name) ?? 0);
        // /proc counts 10 ms ticks: about 1 us per message over 10,000, so whole microseconds.
        if (used > 0) figure(`smtp durable, 20 sessions: ${name} CPU per message`, Math.round((used / r.messages) * 1e6), "us");
      }
      // From smtpmail's exit line: over its whole life, the warm-up messages included.
      const rounds = /a round took ([\d.]+) ms on average, ([\d.]+) ms of it the journal/.exec(server.stderr());
      if (rounds) {
        figure("smtp durable, 20 sessions: commit round, start to 250s (mean, with warm-up)", Number(rounds[1]), "ms");
        figure("smtp durable, 20 sessions: of which journal write+fsync (mean, with warm-up)", Number(rounds[2]), "ms");
      }
      if (m) figure("smtp durable, 20 sessions: messages per commit round (with warm-up)", Number(m[1]) / Number(/\((\d+) commit rounds/.exec(server.stderr())?.[1] ?? NaN), "msg");
    }
    figure(`smtp durable, ${sessions} sessions: load generator CPU`, ((me.user + me.system) / 1e6 / r.seconds) * 100, "% of one core");
    if (r.failures) figure(`smtp durable, ${sessions} sessions: failed replies`, r.failures, "replies");
    rmSync(root, { recursive: true, force: true });
  }
}

// The 20-session load spread over many mailboxes (the "smtp" scenario uses 4): each mailbox
// gets mail less often, so its lock and descriptor are kept less, and a checkpoint fsyncs more files.
if (want("smtp-users")) {
  const total = Number(process.env.BENCH_SMTP_MESSAGES ?? 10_000);
  for (const count of [100, 1000]) {
    const users = Array.from({ length: count }, (_, i) => `user${i}`);
    const root = makeRoot(users);
    const server = await startChild([join(PROJECT, "smtpmail.ts"), "0", "--root", root, "--host", "127.0.0.1", "--quiet"]);
    await smtpLoad({ port: server.port, sessions: 20, total: Number(process.env.BENCH_SMTP_WARMUP ?? 3000), users, messageBytes: 1024, timeLimitMs: 60_000 });
    const cpu0 = cpuOf(server.proc.pid);
    const r = await smtpLoad({ port: server.port, sessions: 20, total, users, messageBytes: 1024, timeLimitMs: 60_000 });
    const serverCpu = cpuOf(server.proc.pid) - cpu0;
    await server.stop();
    const m = /stored (\d+) message copies with (\d+) fsyncs \((\d+) commit rounds, mailbox locks taken (\d+) times/.exec(server.stderr());
    figure(`smtp durable, 20 sessions to ${count} users: throughput`, r.messages / r.seconds, "msg/s");
    figure(`smtp durable, 20 sessions to ${count} users: latency p99`, r.p99ms, "ms");
    if (m) {
      figure(`smtp durable, 20 sessions to ${count} users: fsyncs per message (with warm-up)`, Number(m[2]) / Number(m[1]), "fsync/msg");
      figure(`smtp durable, 20 sessions to ${count} users: locks taken per message (with warm-up)`, Number(m[4]) / Number(m[1]), "locks/msg");
    }
    figure(`smtp durable, 20 sessions to ${count} users: server CPU per message`, Math.round((serverCpu / r.messages) * 1e6), "us");
    if (r.failures) figure(`smtp durable, 20 sessions to ${count} users: failed replies`, r.failures, "replies");
    rmSync(root, { recursive: true, force: true });
  }
}

// Same load as "smtp durable, 20 sessions", with perf tracing every fdatasync/fsync inside
// smtpmail: how long the disk itself takes per flush under this load, apart from the time
// spent waiting around it. Skipped where perf is missing or not allowed.
if (want("trace")) {
  const root = makeRoot(USERS);
  const server = await startChild([join(PROJECT, "smtpmail.ts"), "0", "--root", root, "--host", "127.0.0.1", "--quiet"]);
  const load = (total: number) => smtpLoad({ port: server.port, sessions: 20, total, users: USERS, messageBytes: 1024, timeLimitMs: 60_000 });
  await load(Number(process.env.BENCH_SMTP_WARMUP ?? 3000));
  let r: Awaited<ReturnType<typeof load>> | null = null;
  const syncs = await traceSyncs(server.proc.pid, async () => (r = await load(Number(process.env.BENCH_SMTP_MESSAGES ?? 10_000))));
  await server.stop();
  rmSync(root, { recursive: true, force: true });
  if (!syncs || !r) console.log("# trace: skipped (perf trace is not installed or not allowed here)");
  else {
    const traced = r as Awaited<ReturnType<typeof load>>;
    figure("traced smtp durable, 20 sessions: throughput", traced.messages / traced.seconds, "msg/s");
    figure("traced smtp durable, 20 sessions: latency p99", traced.p99ms, "ms");
    for (const [kind, list] of syncs) {
      list.sort((a, b) => a - b);
      figure(`traced: ${kind} fdatasync calls`, list.length, "calls");
      figure(`traced: ${kind} fdatasync p50 (in the kernel)`, percentile(list, 50), "ms");
      figure(`traced: ${kind} fdatasync p99 (in the kernel)`, percentile(list, 99), "ms");
      figure(`traced: ${kind} fdatasync max`, list[list.length - 1]!, "ms");
    }
  }
}

// Postfix's load generator against smtpmail (durable), as MTAs are usually compared: no
// pipelining, one reply awaited per command. Run where SMTP_SOURCE names smtp-source (see
// .ci/run) or postfix is installed.
if (want("smtp-source")) {
  const bin = process.env.SMTP_SOURCE ?? (existsSync("/usr/sbin/smtp-source") ? "/usr/sbin/smtp-source" : null);
  if (!bin) console.log("# smtp-source: skipped (set SMTP_SOURCE to Postfix's smtp-source)");
  else {
    const root = makeRoot(USERS);
    const server = await startChild([join(PROJECT, "smtpmail.ts"), "0", "--root", root, "--host", "127.0.0.1", "--quiet"]);
    const env = { ...process.env, LD_LIBRARY_PATH: join(bin, "../../lib/postfix") };
    const source = async (args: string[]) => {
      const t = performance.now();
      const p = Bun.spawn([bin, ...args, "-l", "1024", "-f", "bench@load", "-t", "u1@localhost", `127.0.0.1:${server.port}`], { env, stdout: "ignore", stderr: "inherit" });
      const timer = setTimeout(() => p.kill(9), 120_000);
      const code = await p.exited;
      clearTimeout(timer);
      if (code !== 0) throw new Error(`smtp-source exited ${code}`);
      return (performance.now() - t) / 1000;
    };
    await source(["-d", "-s", "20", "-m", "3000"]); // warm-up, not measured
    for (const sessions of [1, 20, 200]) {
      const n = sessions === 1 ? 2000 : 10_000;
      figure(`smtp-source -d, ${sessions} sessions, 1 KiB`, n / (await source(["-d", "-s", String(sessions), "-m", String(n)])), "msg/s");
    }
    figure("smtp-source, 20 sessions, a connection per message", 5000 / (await source(["-s", "20", "-m", "5000"])), "msg/s");
    await server.stop();
    rmSync(root, { recursive: true, force: true });
  }
}

/**
 * Commands per second, one at a time, against a process that only says "+OK": a reference
 * for what the machine's wake-ups allow, not a bound. Where the scheduler places the two
 * processes (one vCPU or two) changes it 5-8 fold, and it can differ from where popserver
 * and this process land a moment later, so it is printed beside, not divided into, the
 * one-at-a-time figures.
 */
async function roundTripReference(): Promise<number> {
  const echo = await startChild([join(PROJECT, "bench/echo-server.ts")]);
  const c = await PopConn.open(echo.port);
  for (let i = 0; i < 500; i++) await c.send("NOOP"); // warm-up
  const rates: number[] = [];
  for (let run = 0; run < 5; run++) {
    const t = performance.now();
    for (let i = 0; i < 1000; i++) await c.send("NOOP");
    rates.push(1000 / ((performance.now() - t) / 1000));
  }
  c.close();
  await echo.stop();
  return rates.sort((a, b) => a - b)[2]!;
}

async function popScenario(label: string, count: number, bytes: number): Promise<void> {
  figure(`${label}: round-trip reference (echo process, one at a time, median of 5)`, await roundTripReference(), "commands/s");
  const root = makeRoot(["alice"]);
  const t0 = performance.now();
  const fileSize = writeMailbox(root, "alice", count, bytes);
  figure(`${label}: mailbox written (${count} messages)`, fileSize / 2 ** 20, "MiB");
  figure(`${label}: time to write mailbox`, (performance.now() - t0) / 1000, "s");
  const server = await startChild([join(PROJECT, "popserver.ts"), "0", "--root", root, "--host", "127.0.0.1", "--quiet"]);
  const pid = server.proc.pid;
  const rss0 = memoryOf(pid).rss;
  const login = async () => {
    const t = performance.now();
    const c = await PopConn.open(server.port);
    await c.send("USER alice");
    if (!(await c.send("PASS alicepw"))) throw new Error("login failed");
    await c.send("STAT");
    return { c, ms: performance.now() - t };
  };
  const loginTime = async () => {
    const { c, ms } = await login();
    c.close();
    await Bun.sleep(50);
    return ms;
  };
  // The first login indexes the whole file; later ones only what was appended since.
  figure(`${label}: login+STAT latency, first login`, await loginTime(), "ms");
  // Where the peak is set: the first login's indexing, the listings, or the RETR loops.
  figure(`${label}: popserver peak RSS after the first login`, memoryOf(pid).peak / 1024, "MiB");
  // A file written in the last second is checked (a small read per message: another write
  // within the clock's granularity could hide behind an unchanged mtime); an older one is
  // taken as indexed, without a read.
  const logins = [await loginTime(), await loginTime(), await loginTime()].sort((a, b) => a - b);
  figure(`${label}: login+STAT latency, again (median of 3)`, logins[1]!, "ms");
  await Bun.sleep(Math.max(0, 1100 - (Date.now() - statSync(join(root, "alice", "mymailbox")).mtimeMs)));
  await loginTime(); // the one that finds the file settled
  figure(`${label}: login+STAT latency, again, file a second old`, await loginTime(), "ms");
  writeMailbox(root, "alice", 100, bytes, true);
  figure(`${label}: login+STAT latency, 100 messages appended since`, await loginTime(), "ms");
  const { c } = await login();
  let t = performance.now();
  await c.send("LIST", true);
  figure(`${label}: LIST latency`, performance.now() - t, "ms");
  t = performance.now();
  await c.send("UIDL", true);
  figure(`${label}: UIDL latency`, performance.now() - t, "ms");
  figure(`${label}: popserver peak RSS after LIST and UIDL`, memoryOf(pid).peak / 1024, "MiB");
  const deadline = Date.now() + 60_000;
  // One command at a time.
  let n = 0;
  t = performance.now();
  const oneLimit = Math.min(count, 20_000);
  for (let i = 1; i <= oneLimit && Date.now() < deadline; i++, n++) await c.send(`RETR ${i}`, true);
  let secs = (performance.now() - t) / 1000;
  figure(`${label}: RETR one at a time`, n / secs, "msg/s");
  figure(`${label}: RETR one at a time`, (n * bytes) / secs / 1e6, "MB/s");
  figure(`${label}: popserver peak RSS after RETR one at a time`, memoryOf(pid).peak / 1024, "MiB");
  n = 0;
  t = performance.now();
  for (let i = 0; i < 5000 && Date.now() < deadline; i++, n++) await c.send("NOOP");
  figure(`${label}: NOOP one at a time`, n / ((performance.now() - t) / 1000), "commands/s");
  // Pipelined: a sliding window of 48-64 commands in flight, topped up 16 at a time (one
  // write per 16), so the server never waits for the client to start the next batch.
  n = 0;
  t = performance.now();
  {
    const window = 64;
    const refill = 16;
    let next = 1;
    let inFlight = 0;
    let done!: () => void;
    const finished = new Promise<void>((r) => (done = r));
    const top = () => {
      if (next > count || Date.now() >= deadline) {
        if (inFlight === 0) done();
        return;
      }
      const batch: string[] = [];
      while (inFlight + batch.length < window && next <= count) batch.push(`RETR ${next++}`);
      inFlight += batch.length;
      for (const p of c.sendMany(batch, true))
        void p.then(() => {
          n++;
          if (--inFlight <= window - refill || next > count) top();
        });
    };
    top();
    await finished;
  }
  secs = (performance.now() - t) / 1000;
  figure(`${label}: RETR pipelined (64 in flight)`, n / secs, "msg/s");
  figure(`${label}: RETR pipelined (64 in flight)`, (n * (fileSize / count)) / secs / 1e6, "MB/s");
  c.close();
  const mem = memoryOf(pid);
  figure(`${label}: popserver RSS idle before`, rss0 / 1024, "MiB");
  figure(`${label}: popserver peak RSS`, mem.peak / 1024, "MiB");
  figure(`${label}: peak RSS / mailbox size`, (mem.peak * 1024) / fileSize * 100, "%");
  await server.stop();
  rmSync(root, { recursive: true, force: true });
}

if (want("pop")) await popScenario("pop 10k", 10_000, 2400);

// A login-heavy load (mail clients polling): 20 clients, each on its own 1,000-message
// mailbox, log in, STAT and QUIT over and over for 3 s.
if (want("pop-logins")) {
  const users = Array.from({ length: 20 }, (_, i) => `user${i}`);
  const root = makeRoot(users);
  for (const u of users) writeMailbox(root, u, 1000, 2400);
  const server = await startChild([join(PROJECT, "popserver.ts"), "0", "--root", root, "--host", "127.0.0.1", "--quiet"]);
  let n = 0;
  const end = Date.now() + 3000;
  const cpu0 = cpuOf(server.proc.pid);
  const t = performance.now();
  await Promise.all(
    users.map(async (u) => {
      while (Date.now() < end) {
        const c = await PopConn.open(server.port);
        await c.send(`USER ${u}`);
        if (!(await c.send(`PASS ${u}pw`))) throw new Error("login failed");
        await c.send("STAT");
        await c.send("QUIT");
        c.close();
        n++;
      }
    }),
  );
  const secs = (performance.now() - t) / 1000;
  figure("pop logins, 20 clients, 1,000-message mailboxes", n / secs, "sessions/s");
  figure("pop logins: popserver CPU per session", ((cpuOf(server.proc.pid) - cpu0) / n) * 1e6, "us");
  await server.stop();
  rmSync(root, { recursive: true, force: true });
}
if (want("pop-large")) await popScenario("pop 100k", 100_000, 10_700);

// SMTP to 20 users while 20 POP3 clients read and delete those mailboxes (each QUIT rewrites
// one), for 8 s after 3000 warm-up messages: how the two servers share the mailboxes' locks.
if (want("mixed")) {
  const users = Array.from({ length: 20 }, (_, i) => `user${i}`);
  const root = makeRoot(users);
  const smtp = await startChild([join(PROJECT, "smtpmail.ts"), "0", "--root", root, "--host", "127.0.0.1", "--quiet"]);
  const pop = await startChild([join(PROJECT, "popserver.ts"), "0", "--root", root, "--host", "127.0.0.1", "--quiet"]);
  await smtpLoad({ port: smtp.port, sessions: 20, total: 3000, users, messageBytes: 1024, timeLimitMs: 60_000 });
  const r = await mixedLoad({ smtpPort: smtp.port, popPort: pop.port, users, popClients: 20, seconds: 8 });
  figure("mixed: smtp, 20 sessions beside POP3 deletions", r.smtp.messages / r.smtp.seconds, "msg/s");
  figure("mixed: smtp latency p50", r.smtp.p50ms, "ms");
  figure("mixed: smtp latency p99", r.smtp.p99ms, "ms");
  figure("mixed: pop3 sessions (RETR+DELE all, QUIT)", r.popSessions / r.popSeconds, "sessions/s");
  figure("mixed: pop3 messages retrieved and deleted", r.retrieved / r.popSeconds, "msg/s");
  figure("mixed: pop3 QUIT (mailbox rewrite) p50", r.quitP50, "ms");
  figure("mixed: pop3 QUIT p99", r.quitP99, "ms");
  if (r.smtp.failures || r.popErrors) figure("mixed: failed replies (smtp + pop3 QUIT)", r.smtp.failures + r.popErrors, "replies");
  await smtp.stop();
  await pop.stop();
  rmSync(root, { recursive: true, force: true });
}

if (want("conns")) {
  const count = Number(process.env.BENCH_CONNECTIONS ?? 10_000);
  for (const program of ["smtpmail", "popserver"]) {
    const root = makeRoot(["alice"]);
    const server = await startChild([join(PROJECT, `${program}.ts`), "0", "--root", root, "--host", "127.0.0.1", "--quiet"]);
    const r = await idleConnections(server.port, server.proc.pid, count, 120_000);
    figure(`${program}: idle connections opened`, r.opened, "connections");
    figure(`${program}: RSS before`, r.rssBeforeKiB / 1024, "MiB");
    figure(`${program}: RSS with all connections open`, r.rssPeakKiB / 1024, "MiB");
    figure(`${program}: memory per connection`, ((r.rssPeakKiB - r.rssBeforeKiB) * 1024) / Math.max(1, r.opened) / 1024, "KiB");
    figure(`${program}: new client greeted+NOOP while all idle`, r.probeMs, "ms");
    figure(`${program}: NOOP answered afterwards`, r.answered, `of ${r.opened}`);
    figure(`${program}: NOOP to all, answered within`, r.noopAllMs, "ms");
    await server.stop();
    rmSync(root, { recursive: true, force: true });
  }
}

if (want("client")) {
  const root = makeRoot(["alice"]);
  writeMailbox(root, "alice", 10_000, 2400);
  const pop = await startChild([join(PROJECT, "popserver.ts"), "0", "--root", root, "--host", "127.0.0.1", "--quiet"]);
  const smtp = await startChild([join(PROJECT, "smtpmail.ts"), "0", "--root", root, "--host", "127.0.0.1", "--quiet"]);
  const r = await clientListTime(smtp.port, pop.port, "alice", "alicepw", 120_000);
  figure("client: Manage Mail list of 10,000 mails, first screen", r.ms, "ms");
  figure("client: lines printed for the list", r.lines, "lines");
  await pop.stop();
  await smtp.stop();
  rmSync(root, { recursive: true, force: true });
}
