// SMTP load generator: `sessions` connections, each reusing its connection for message after
// message. Commands are pipelined (MAIL, RCPT, DATA in one write; the text after 354), and
// the message bytes are built once, so the generator stays cheap beside the server.
import type { Socket } from "bun";
import { percentile } from "./lib.ts";

export interface SmtpLoadResult {
  messages: number;
  seconds: number;
  p50ms: number;
  p99ms: number;
  failures: number;
}

interface S {
  /** The start of a reply line cut by the end of a chunk (rare: replies are short). */
  rest: Buffer | null;
  phase: "greet" | "ehlo" | "envelope" | "data" | "done";
  pendingEnvelope: number;
  sent: number;
  t0: number;
  user: string;
}

export async function smtpLoad(opt: { port: number; sessions: number; total: number; users: string[]; messageBytes: number; timeLimitMs: number }): Promise<SmtpLoadResult> {
  const body = "x".repeat(76) + "\r\n";
  const lines = Math.max(1, Math.floor((opt.messageBytes - 120) / body.length));
  const message = Buffer.from(`From: bench@load\r\nTo: someone@here\r\nSubject: benchmark message\r\n\r\n${body.repeat(lines)}.\r\n`);
  const envelopes = opt.users.map((u) => Buffer.from(`MAIL FROM:<bench@load>\r\nRCPT TO:<${u}@here>\r\nDATA\r\n`));
  const latencies = new Float64Array(opt.total);
  let measured = 0;
  let started = 0;
  let done = 0;
  let failures = 0;
  const t0 = performance.now();
  const deadline = Date.now() + opt.timeLimitMs;
  let finish!: () => void;
  const allDone = new Promise<void>((r) => (finish = r));
  let open = opt.sessions;

  const next = (s: Socket<S>) => {
    if (started >= opt.total || Date.now() > deadline) {
      s.data.phase = "done";
      s.write("QUIT\r\n");
      s.end();
      return;
    }
    started++;
    s.data.phase = "envelope";
    s.data.pendingEnvelope = 3;
    s.write(envelopes[started % envelopes.length]!);
  };

  // Reply codes are compared as numbers read from the bytes: no string per line.
  const onLine = (s: Socket<S>, b: Uint8Array, at: number) => {
    if (b[at + 3] === 0x2d) return; // "-": continuation of a multi-line reply
    const code = (b[at]! - 48) * 100 + (b[at + 1]! - 48) * 10 + (b[at + 2]! - 48);
    const d = s.data;
    switch (d.phase) {
      case "greet":
        d.phase = "ehlo";
        s.write("EHLO load.bench\r\n");
        break;
      case "ehlo":
        next(s);
        break;
      case "envelope":
        if (--d.pendingEnvelope > 0) {
          if (code !== 250) failures++;
          return;
        }
        if (code !== 354) {
          failures++;
          s.write("RSET\r\n");
          d.phase = "ehlo";
          return;
        }
        d.phase = "data";
        d.t0 = performance.now();
        s.write(message);
        break;
      case "data":
        latencies[measured++] = performance.now() - d.t0;
        if (code === 250) done++;
        else failures++;
        next(s);
        break;
    }
  };

  for (let i = 0; i < opt.sessions; i++) {
    await Bun.connect<S>({
      hostname: "127.0.0.1",
      port: opt.port,
      data: { rest: null, phase: "greet", pendingEnvelope: 0, sent: 0, t0: 0, user: "" },
      socket: {
        data(s, chunk) {
          const b = s.data.rest ? Buffer.concat([s.data.rest, chunk]) : chunk;
          s.data.rest = null;
          let at = 0;
          for (let nl; (nl = b.indexOf(0x0a, at)) >= 0; at = nl + 1) if (nl - at >= 3) onLine(s, b, at);
          if (at < b.length) s.data.rest = Buffer.from(b.subarray(at));
        },
        close() {
          if (--open === 0) finish();
        },
        error() {},
      },
    });
  }
  const guard = setTimeout(finish, opt.timeLimitMs + 10_000);
  await allDone;
  clearTimeout(guard);
  const seconds = (performance.now() - t0) / 1000;
  const sorted = Array.from(latencies.subarray(0, measured).sort());
  return { messages: done, seconds, p50ms: percentile(sorted, 50), p99ms: percentile(sorted, 99), failures };
}
