// Tiny scripted TCP servers for the client tests: 127.0.0.1, port 0, one script per connection.

import type { Socket, TCPSocketListener } from "bun";

export class FakeConn {
  private lines: string[] = [];
  private waiters: Array<(line: string | null) => void> = [];
  private partial = "";
  private out: Uint8Array[] = [];
  closed = false;
  /** Every line the client sent, in order. */
  readonly received: string[] = [];

  constructor(private socket: Socket<unknown>) {}

  onData(data: Uint8Array): void {
    const text = this.partial + new TextDecoder().decode(data);
    const parts = text.split("\r\n");
    this.partial = parts.pop()!;
    for (const line of parts) {
      this.received.push(line);
      const w = this.waiters.shift();
      if (w) w(line);
      else this.lines.push(line);
    }
  }

  onClose(): void {
    this.closed = true;
    for (const w of this.waiters.splice(0)) w(null);
  }

  /** The next line from the client, or null once it has hung up. */
  readLine(): Promise<string | null> {
    if (this.lines.length > 0) return Promise.resolve(this.lines.shift()!);
    if (this.closed) return Promise.resolve(null);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Send text as is, queueing what the kernel does not take (big RETRs). */
  send(text: string | Uint8Array): void {
    this.out.push(typeof text === "string" ? new TextEncoder().encode(text) : text);
    this.flush();
  }

  flush(): void {
    while (this.out.length > 0 && !this.closed) {
      const chunk = this.out[0]!;
      const n = this.socket.write(chunk);
      if (n < 0) return;
      if (n < chunk.length) {
        this.out[0] = chunk.subarray(n);
        return;
      }
      this.out.shift();
    }
    if (this.out.length === 0 && this.endAfterFlush) this.socket.end();
  }

  private endAfterFlush = false;

  /** Close after everything queued has gone out. */
  end(): void {
    this.endAfterFlush = true;
    this.flush();
  }

  /** Drop the connection at once. */
  drop(): void {
    this.socket.terminate();
  }
}

export interface FakeServer {
  port: number;
  conns: FakeConn[];
  stop(): void;
}

// Every fake started, so a test file can stop them all after each test: afterEach(stopFakes).
const started: FakeServer[] = [];

export function stopFakes(): void {
  for (const s of started.splice(0)) s.stop();
}

/** A short pause for the other side to act (scripts that send in several steps). */
export const tick = () => new Promise((r) => setTimeout(r, 5));

export function startFake(script: (conn: FakeConn) => Promise<void> | void): FakeServer {
  const conns: FakeConn[] = [];
  const server: TCPSocketListener<{ conn?: FakeConn }> = Bun.listen<{ conn?: FakeConn }>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(socket) {
        const conn = new FakeConn(socket as Socket<unknown>);
        socket.data = { conn };
        conns.push(conn);
        Promise.resolve(script(conn)).catch(() => conn.drop());
      },
      data(socket, data) {
        socket.data.conn?.onData(data);
      },
      drain(socket) {
        socket.data.conn?.flush();
      },
      close(socket) {
        socket.data.conn?.onClose();
      },
    },
    data: {},
  });
  const fake = { port: server.port, conns, stop: () => server.stop(true) };
  started.push(fake);
  return fake;
}

/** A port that refuses connections: bound once, then released. */
export function closedPort(): number {
  const s = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = s.port;
  s.stop(true);
  return port;
}

export interface FakeMail {
  text: string; // CRLF line ends, not dot-stuffed
}

/**
 * A minimal in-memory POP3 server good enough for mailclient: USER/PASS, CAPA (TOP optional),
 * STAT, LIST, UIDL, TOP, RETR, DELE, RSET, NOOP, QUIT (commits deletions into `mailbox`).
 * `logoutOn`: the first such command (in any session) is answered with popserver's
 * autologout (-ERR), the connection closed only 300 ms later, nothing more answered: an
 * autologout that crossed the command on the wire, its close not seen yet by the client.
 * `dropOn`: every such command (in every session) gets no answer, the connection is cut.
 * `refuseDele`: DELE is answered with that -ERR text and marks nothing.
 */
export function fakePop3(opts: { user: string; pass: string; mailbox: FakeMail[]; top?: boolean; noCapa?: boolean; inUse?: boolean; quitFails?: boolean; downFirst?: boolean; logoutOn?: "RETR" | "DELE"; unreadable?: number; unreadableText?: string; dropOn?: "RETR"; refuseDele?: string }): FakeServer {
  let connections = 0;
  let loggedOut = false;
  return startFake(async (c) => {
    if (opts.downFirst && connections++ === 0) {
      // Unavailable for the first connection only (as a server still starting up).
      c.send("-ERR [SYS/TEMP] not ready yet\r\n");
      c.end();
      return;
    }
    c.send("+OK fake POP3 ready\r\n");
    let user = "";
    let authed = false;
    const marked = new Set<number>();
    const stuffed = (text: string) =>
      text
        .split("\r\n")
        .slice(0, -1)
        .map((l) => (l.startsWith(".") ? "." + l : l) + "\r\n")
        .join("");
    for (;;) {
      const line = await c.readLine();
      if (line === null) return;
      const [cmd = "", ...args] = line.split(" ");
      const n = Number(args[0]);
      const mail = opts.mailbox[n - 1];
      const valid = authed && mail !== undefined && !marked.has(n);
      // `unreadable`: a message TOP and RETR refuse (a server that cannot read it), saying
      // `unreadableText`.
      const readable = valid && n !== opts.unreadable;
      const refusal = `-ERR ${valid && !readable ? (opts.unreadableText ?? "no such message") : "no such message"}\r\n`;
      if (!loggedOut && cmd.toUpperCase() === opts.logoutOn) {
        loggedOut = true;
        c.send("-ERR autologout: idle for too long\r\n");
        await Bun.sleep(300);
        c.end();
        return;
      }
      if (cmd.toUpperCase() === opts.dropOn) {
        c.drop();
        return;
      }
      switch (cmd.toUpperCase()) {
        case "USER":
          user = args[0] ?? "";
          c.send("+OK\r\n");
          break;
        case "PASS":
          authed = user === opts.user && args.join(" ") === opts.pass;
          if (authed && opts.inUse) {
            // As popserver: -ERR, then the connection is closed (RFC 1939).
            c.send("-ERR [IN-USE] mailbox is already in use by another POP3 session\r\n");
            c.end();
            return;
          }
          c.send(authed ? "+OK logged in\r\n" : "-ERR invalid user or password\r\n");
          break;
        case "CAPA":
          if (opts.noCapa) c.send("-ERR unknown command\r\n");
          else c.send(`+OK\r\nUSER\r\n${opts.top ? "TOP\r\n" : ""}UIDL\r\n.\r\n`);
          break;
        case "STAT": {
          const live = opts.mailbox.filter((_, i) => !marked.has(i + 1));
          c.send(`+OK ${live.length} ${live.reduce((a, m) => a + m.text.length, 0)}\r\n`);
          break;
        }
        case "LIST":
          c.send(
            "+OK\r\n" +
              opts.mailbox.map((m, i) => (marked.has(i + 1) ? "" : `${i + 1} ${m.text.length}\r\n`)).join("") +
              ".\r\n",
          );
          break;
        case "RETR":
          c.send(readable ? `+OK\r\n${stuffed(mail!.text)}.\r\n` : refusal);
          break;
        case "UIDL":
          // The text stands for the mail: the same text, the same UID.
          c.send("+OK\r\n" + opts.mailbox.map((m, i) => (marked.has(i + 1) ? "" : `${i + 1} u${Bun.hash.crc32(m.text)}\r\n`)).join("") + ".\r\n");
          break;
        case "TOP": {
          if (!opts.top || !readable) {
            c.send(refusal);
            break;
          }
          // Headers end at a blank line, or (assignment format) at the first non-header line.
          const lines = mail!.text.split("\r\n");
          const end = lines.findIndex((l) => l === "" || !/^[!-9;-~]+:/.test(l));
          c.send(`+OK\r\n${stuffed(lines.slice(0, end < 0 ? lines.length : end).join("\r\n") + "\r\n")}.\r\n`);
          break;
        }
        case "DELE":
          if (valid && opts.refuseDele !== undefined) {
            c.send(`-ERR ${opts.refuseDele}\r\n`);
            break;
          }
          if (valid) marked.add(n);
          c.send(valid ? `+OK message ${n} deleted\r\n` : "-ERR no such message\r\n");
          break;
        case "RSET":
          marked.clear();
          c.send("+OK\r\n");
          break;
        case "NOOP":
          c.send("+OK\r\n");
          break;
        case "QUIT": {
          if (opts.quitFails && marked.size) {
            c.send("-ERR some deleted messages not removed: disk full\r\n");
            c.end();
            return;
          }
          const keep = opts.mailbox.filter((_, i) => !marked.has(i + 1));
          opts.mailbox.splice(0, opts.mailbox.length, ...keep);
          c.send("+OK goodbye\r\n");
          c.end();
          return;
        }
        default:
          c.send("-ERR unknown command\r\n");
      }
    }
  });
}

/** A minimal SMTP receiver: knows `users`, stores accepted messages (un-dot-stuffed) in `delivered`. */
/** `refusal`: the reply to RCPT TO for someone not in `users`. */
export function fakeSmtp(opts: { users: string[]; delivered: Array<{ from: string; to: string; data: string }>; refusal?: string }): FakeServer {
  return startFake(async (c) => {
    c.send("220 fake.test Service ready\r\n");
    let from = "";
    let to = "";
    for (;;) {
      const line = await c.readLine();
      if (line === null) return;
      const upper = line.toUpperCase();
      if (upper.startsWith("HELO")) c.send("250 OK Hello\r\n");
      else if (upper.startsWith("MAIL FROM:")) {
        from = line.slice(10).trim().replace(/^<|>$/g, "");
        c.send(`250 <${from}>... Sender ok\r\n`);
      } else if (upper.startsWith("RCPT TO:")) {
        to = line.slice(8).trim().replace(/^<|>$/g, "");
        if (opts.users.includes(to.split("@")[0]!)) c.send("250 Recipient ok\r\n");
        else c.send(`${opts.refusal ?? "550 No such user"}\r\n`);
      } else if (upper === "DATA") {
        c.send('354 Start mail input; end with <CRLF>.<CRLF>\r\n');
        const body: string[] = [];
        for (;;) {
          const l = await c.readLine();
          if (l === null) return;
          if (l === ".") break;
          body.push(l.startsWith(".") ? l.slice(1) : l);
        }
        opts.delivered.push({ from, to, data: body.map((l) => l + "\r\n").join("") });
        c.send("250 OK Message accepted for delivery\r\n");
      } else if (upper === "QUIT") {
        c.send("221 fake.test Service closing transmission channel\r\n");
        c.end();
        return;
      } else c.send("500 unknown command\r\n");
    }
  });
}
