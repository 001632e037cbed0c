// Many idle connections: greeted, then silent. Measures the server's memory per connection
// and whether it still answers every one of them (NOOP) and a newcomer promptly.
import type { Socket } from "bun";
import { memoryOf } from "./lib.ts";

interface C {
  lines: number;
  want: number;
  done: (() => void) | null;
  closed: boolean;
  /** The start of the first line: a greeting, or a refusal. */
  first: string;
}

export interface ConnsResult {
  opened: number;
  rssBeforeKiB: number;
  rssPeakKiB: number;
  answered: number;
  probeMs: number;
  noopAllMs: number;
}

/** Resolves once n lines have come, or the server closed the connection. */
function waitLines(s: Socket<C>, n: number): Promise<void> {
  if (s.data.lines >= n || s.data.closed) return Promise.resolve();
  s.data.want = n;
  return new Promise((r) => (s.data.done = r));
}

async function open(port: number): Promise<Socket<C>> {
  const s = await Bun.connect<C>({
    hostname: "127.0.0.1",
    port,
    data: { lines: 0, want: 0, done: null, closed: false, first: "" },
    socket: {
      data(sock, chunk) {
        if (sock.data.lines === 0) sock.data.first += chunk.toString("latin1", 0, 4);
        for (const b of chunk) if (b === 10) sock.data.lines++;
        if (sock.data.done && sock.data.lines >= sock.data.want) {
          const d = sock.data.done;
          sock.data.done = null;
          d();
        }
      },
      close(sock) {
        sock.data.closed = true;
        sock.data.done?.();
      },
      error() {},
    },
  });
  await waitLines(s, 1);
  // Refused (a 421 / -ERR line, or closed without a word): not counted as open.
  if (s.data.closed || !/^(220|\+OK)/.test(s.data.first)) {
    s.end();
    throw new Error(`refused: ${s.data.first}`);
  }
  return s;
}

export async function idleConnections(port: number, pid: number, count: number, timeLimitMs: number): Promise<ConnsResult> {
  const deadline = Date.now() + timeLimitMs;
  await Bun.sleep(200);
  const rssBefore = memoryOf(pid).rss;
  const socks: Socket<C>[] = [];
  // In batches: the kernel's accept backlog is finite.
  for (let i = 0; i < count && Date.now() < deadline; i += 250) {
    const batch = await Promise.all(Array.from({ length: Math.min(250, count - i) }, () => open(port).catch(() => null)));
    for (const s of batch) if (s) socks.push(s);
  }
  await Bun.sleep(500);
  const rssPeak = memoryOf(pid).rss;
  // A newcomer while everyone else idles.
  let t = performance.now();
  const probe = await open(port);
  probe.write("NOOP\r\n");
  await waitLines(probe, 2);
  const probeMs = performance.now() - t;
  probe.end();
  // Everyone speaks once more.
  t = performance.now();
  let answered = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const giveUp = new Promise<void>((r) => (timer = setTimeout(r, Math.max(1000, deadline - Date.now()))));
  await Promise.race([
    giveUp,
    Promise.all(
      socks.map(async (s) => {
        const before = s.data.lines;
        s.write("NOOP\r\n");
        await waitLines(s, before + 1);
        if (s.data.lines > before) answered++;
      }),
    ),
  ]);
  clearTimeout(timer);
  const noopAllMs = performance.now() - t;
  for (const s of socks) s.end();
  return { opened: socks.length, rssBeforeKiB: rssBefore, rssPeakKiB: Math.max(rssPeak, memoryOf(pid).rss), answered, probeMs, noopAllMs };
}
