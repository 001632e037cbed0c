// `npm run bench [scenario...]`: each scenario against freshly started servers on
// loopback, bounded in count and time, printing one figure per line. Scenarios: fsync,
// smtp, pop, pop-large, conns, client (default: all but pop-large, which writes 1 GiB).
import { join } from "node:path";
import { rmSync } from "node:fs";
import { cpus } from "node:os";
import { figure, makeRoot, startChild, cpuOf, PROJECT } from "./lib.ts";
import { fsyncFloor } from "./fsync-floor.ts";
import { smtpLoad } from "./smtp-load.ts";

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
  rmSync(root, { recursive: true, force: true });
}

if (want("smtp")) {
  const total = Number(process.env.BENCH_SMTP_MESSAGES ?? 10_000);
  const timeLimitMs = 60_000;
  let ceiling = 0;
  {
    const server = await startChild([join(PROJECT, "bench/null-smtp-server.ts"), USERS.join(",")]);
    const me0 = process.cpuUsage();
    const r = await smtpLoad({ port: server.port, sessions: 20, total, users: USERS, messageBytes: 1024, timeLimitMs });
    ceiling = r.messages / r.seconds;
    figure("smtp ceiling (no-op store), 20 sessions", ceiling, "msg/s");
    figure("smtp ceiling p50 latency", r.p50ms, "ms");
    const me = process.cpuUsage(me0);
    figure("smtp ceiling: load generator CPU share", ((me.user + me.system) / 1e6 / r.seconds) * 100, "% of one core");
    await server.stop();
  }
  for (const sessions of [1, 20, 200]) {
    const root = makeRoot(USERS);
    const server = await startChild([join(PROJECT, "smtpmail.ts"), "0", "--root", root, "--host", "127.0.0.1", "--quiet"]);
    const me0 = process.cpuUsage();
    const cpu0 = cpuOf(server.proc.pid);
    const n = sessions === 1 ? Math.min(total, 2000) : total;
    const r = await smtpLoad({ port: server.port, sessions, total: n, users: USERS, messageBytes: 1024, timeLimitMs });
    const me = process.cpuUsage(me0);
    const serverCpu = cpuOf(server.proc.pid) - cpu0;
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
    figure(`smtp durable, ${sessions} sessions: load generator CPU`, ((me.user + me.system) / 1e6 / r.seconds) * 100, "% of one core");
    if (r.failures) figure(`smtp durable, ${sessions} sessions: failed replies`, r.failures, "replies");
    rmSync(root, { recursive: true, force: true });
  }
}
