import { afterAll, describe, expect, test } from "bun:test";
import { seeded } from "./helpers/random.ts";
import type { Socket } from "bun";
import { DataBudget, dotLines, LineReader, trimSp, type LineEvent, type MessageEvent } from "../lib/lines.ts";
import { makeCert } from "./helpers/certs.ts";

const b = (s: string) => Buffer.from(s, "latin1");

function lines(r: LineReader, max = 512): LineEvent[] {
  const out: LineEvent[] = [];
  for (let ev = r.nextLine(max); ev; ev = r.nextLine(max)) out.push(ev);
  return out;
}

describe("trimSp", () => {
  test("takes spaces and tabs from both ends, nothing else", () => {
    expect(trimSp(" \t MAIL FROM:<a@b> \t ")).toBe("MAIL FROM:<a@b>");
    expect(trimSp("a \t b")).toBe("a \t b");
    expect(trimSp(" \t\t ")).toBe("");
    expect(trimSp("")).toBe("");
    // Other white space is no SP for SMTP or POP3: a no-break space, a BOM, CR, LF.
    expect(trimSp("\u00a0pw\ufeff")).toBe("\u00a0pw\ufeff");
    expect(trimSp("\r x \n")).toBe("\r x \n");
  });

  test("runs of spaces and tabs inside a line stay, at its ends go (the input that took the old regex quadratic time; its speed is a figure, not asserted)", () => {
    const inner = "x" + " \t".repeat(6140) + "x";
    expect(trimSp(inner)).toBe(inner);
    expect(trimSp(" " + inner + "\t")).toBe(inner);
  });
});

describe("LineReader.nextLine", () => {
  test("pipelined commands in one chunk come out one by one", () => {
    const r = new LineReader();
    r.push(b("HELO a\r\nMAIL FROM:<x@y>\r\nRCPT TO:<z@w>\r\nDATA\r\n"));
    expect(lines(r)).toEqual([
      { kind: "line", text: "HELO a", bareLf: false },
      { kind: "line", text: "MAIL FROM:<x@y>", bareLf: false },
      { kind: "line", text: "RCPT TO:<z@w>", bareLf: false },
      { kind: "line", text: "DATA", bareLf: false },
    ]);
    expect(r.buffered).toBe(0);
  });

  test("a command split at every byte position is reassembled", () => {
    const wire = "MAIL FROM:<a@b>\r\nNOOP\r\n";
    for (let cut = 0; cut <= wire.length; cut++) {
      const r = new LineReader();
      r.push(b(wire.slice(0, cut)));
      const first = lines(r);
      r.push(b(wire.slice(cut)));
      const all = [...first, ...lines(r)];
      expect(all).toEqual([
        { kind: "line", text: "MAIL FROM:<a@b>", bareLf: false },
        { kind: "line", text: "NOOP", bareLf: false },
      ]);
    }
  });

  test("bare LF ends a command line too; CR is stripped only before LF", () => {
    const r = new LineReader();
    r.push(b("NOOP\nRSET\r\nA\rB\r\n"));
    expect(lines(r)).toEqual([
      { kind: "line", text: "NOOP", bareLf: true },
      { kind: "line", text: "RSET", bareLf: false },
      { kind: "line", text: "A\rB", bareLf: false },
    ]);
  });

  test("an incomplete line waits for more bytes", () => {
    const r = new LineReader();
    r.push(b("NOO"));
    expect(r.nextLine(512)).toBeNull();
    expect(r.buffered).toBe(3);
    r.push(b("P\r"));
    expect(r.nextLine(512)).toBeNull();
    r.push(b("\n"));
    expect(r.nextLine(512)).toEqual({ kind: "line", text: "NOOP", bareLf: false });
  });

  test("segments that arrive while nothing is read are kept in shared blocks, not one buffer each, and read back in order", () => {
    // A client that pipelines replies it never reads, then trickles 1-byte segments while
    // the server waits for it: each segment was held as its own view (~500 bytes each).
    const r = new LineReader();
    const text = Array.from({ length: 20_000 }, (_, i) => `NOOP ${i}\r\n`).join("");
    r.push(b("HELP\r\n"));
    const big = 100_000; // one large segment in the middle, kept as it is
    for (let i = 0; i < text.length; ) {
      const n = i === big ? 30_000 : 1;
      r.push(b(text.slice(i, i + n)));
      i += n;
    }
    expect(r.buffered).toBe(6 + text.length);
    // 64 KiB blocks around the large segment: a handful, not 200,000.
    expect((r as unknown as { later: { seal(): Buffer[] } }).later.seal().length).toBeLessThanOrEqual(Math.ceil(text.length / 65536) + 3);
    expect(r.nextLine(512)).toEqual({ kind: "line", text: "HELP", bareLf: false });
    for (let i = 0; i < 20_000; i++) expect(r.nextLine(512)).toEqual({ kind: "line", text: `NOOP ${i}`, bareLf: false });
    expect(r.nextLine(512)).toBeNull();
  });

  test("limit counts the CRLF: max-2 chars fit, max-1 do not", () => {
    const r = new LineReader();
    r.push(b("x".repeat(10) + "\r\n" + "y".repeat(11) + "\r\nNOOP\r\n"));
    expect(lines(r, 12)).toEqual([
      { kind: "line", text: "x".repeat(10), bareLf: false },
      { kind: "too-long" },
      { kind: "line", text: "NOOP", bareLf: false },
    ]);
  });

  test("an over-long line without newline is reported once, discarded in pieces, and reading resumes after it", () => {
    const r = new LineReader();
    r.push(b("z".repeat(600)));
    expect(r.nextLine(512)).toEqual({ kind: "too-long" });
    expect(r.buffered).toBe(0);
    for (let i = 0; i < 200; i++) {
      r.push(b("z".repeat(500)));
      expect(r.nextLine(512)).toBeNull();
      expect(r.buffered).toBe(0); // memory stays bounded
    }
    r.push(b("zz\r\nNOOP\r\n"));
    expect(lines(r)).toEqual([{ kind: "line", text: "NOOP", bareLf: false }]);
  });
});

function drainMessage(r: LineReader, max = 1 << 20): MessageEvent | null {
  return r.nextMessage(max);
}

describe("LineReader.nextMessage", () => {
  test("message ends at CRLF.CRLF; bytes after it are the next command", () => {
    const r = new LineReader();
    r.push(b("Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n"));
    const m = drainMessage(r)!;
    expect(m.kind).toBe("message");
    expect(m.tooBig).toBe(false);
    expect(m.bytes.toString()).toBe("Subject: x\r\n\r\nhello\r\n");
    expect(lines(r)).toEqual([{ kind: "line", text: "QUIT", bareLf: false }]);
  });

  test("empty message: the terminator right after DATA's CRLF", () => {
    const r = new LineReader();
    r.push(b(".\r\nNOOP\r\n"));
    const m = drainMessage(r)!;
    expect(m.bytes.length).toBe(0);
    expect(lines(r)).toEqual([{ kind: "line", text: "NOOP", bareLf: false }]);
  });

  test("the end split at every byte position, in two and in one-byte chunks", () => {
    const wire = "a\r\n..b\r\n.\r\n\r\nc\r\n.\r\nNOOP\r\n";
    const expected = "a\r\n..b\r\n.\r\n\r\nc\r\n".slice(0, 8); // "a\r\n..b\r\n"
    for (let cut = 0; cut <= wire.length; cut++) {
      const r = new LineReader();
      r.push(b(wire.slice(0, cut)));
      let m = r.nextMessage(1000);
      if (!m) {
        r.push(b(wire.slice(cut)));
        m = r.nextMessage(1000);
      } else r.push(b(wire.slice(cut)));
      expect(m?.bytes.toString()).toBe(expected);
      // what follows the first end is handled again as text of a second message
      const m2 = r.nextMessage(1000)!;
      expect(m2.bytes.toString()).toBe("\r\nc\r\n");
      expect(lines(r)).toEqual([{ kind: "line", text: "NOOP", bareLf: false }]);
    }
    const r = new LineReader();
    let m: MessageEvent | null = null;
    for (const ch of wire) {
      r.push(b(ch));
      m ??= r.nextMessage(1000);
    }
    expect(m!.bytes.toString()).toBe(expected);
  });

  test("SMTP smuggling: <LF>.<CR><LF>, <CR><LF>.<LF>, <LF>.<LF> and <CR>.<CR><LF> never end DATA", () => {
    for (const fake of ["\n.\r\n", "\r\n.\n", "\n.\n", "\r.\r\n", "\r\n.\r"]) {
      const r = new LineReader();
      const text = `a${fake}MAIL FROM:<evil@x>\r\n`;
      r.push(b(text));
      expect(r.nextMessage(1000)).toBeNull();
      r.push(b(".\r\nNOOP\r\n"));
      const m = r.nextMessage(1000)!;
      expect(m.bytes.toString("latin1")).toBe(text);
      expect(lines(r)).toEqual([{ kind: "line", text: "NOOP", bareLf: false }]);
    }
  });

  test("lfEnd (a client whose DATA command ended with a bare LF, as plain nc sends): <LF>.<LF> ends DATA too, split anywhere", () => {
    const wire = "a\n..b\n.x\n.\nNOOP\n";
    for (let cut = 0; cut <= wire.length; cut++) {
      const r = new LineReader();
      r.push(b(wire.slice(0, cut)));
      let m = r.nextMessage(1000, null, 0, true);
      r.push(b(wire.slice(cut)));
      m ??= r.nextMessage(1000, null, 0, true);
      expect(m?.bytes.toString()).toBe("a\n..b\n.x\n");
      expect(lines(r)).toEqual([{ kind: "line", text: "NOOP", bareLf: true }]);
    }
    // Sized as RFC 1870 says however it is split: "xy" plus its line end is 3 octets; ".y" too,
    // its dot kept after the bare LF that ended DATA (mailbox.ts's measure()).
    for (const text of ["xy\n.\n", "xy\n.\r\n", ".y\n.\n"]) {
      for (let cut = 0; cut <= text.length; cut++) {
        for (const [max, tooBig] of [[3, false], [2, true]] as const) {
          const r = new LineReader();
          r.push(b(text.slice(0, cut)));
          let m = r.nextMessage(max, null, 0, true);
          r.push(b(text.slice(cut)));
          m ??= r.nextMessage(max, null, 0, true);
          expect([text, cut, max, m!.tooBig, m!.bytes.toString()]).toEqual([text, cut, max, tooBig, tooBig ? "" : text.slice(0, 3)]);
        }
      }
    }
    // An empty message, CRLF.CRLF still ending one, and a "." line ended by CRLF after a bare LF (pasted text), whichever comes first.
    for (const [text, body] of [[".\nNOOP\n", ""], ["a\r\n.\r\nb\n.\nNOOP\n", "a\r\n"], ["a\n.\r\nb\n.\nNOOP\n", "a\n"], ["a\r\n.\nb\n.\r\n", "a\r\n"]] as const) {
      const r = new LineReader();
      r.push(b(text));
      expect(r.nextMessage(1000, null, 0, true)!.bytes.toString()).toBe(body);
    }
  });

  test("a message from several chunks is gathered with the spare room asked for; one chunk is kept as it is", () => {
    const body = "0123456789abcdef\r\n".repeat(100);
    const wire = body + ".\r\nNOOP\r\n";
    // Cut inside the body, inside the end sequence and right after it.
    for (const cut of [5, body.length - 1, body.length + 1, body.length + 2]) {
      const r = new LineReader();
      r.push(b(wire.slice(0, cut)));
      let m = r.nextMessage(1 << 20, null, 64);
      r.push(b(wire.slice(cut)));
      m ??= r.nextMessage(1 << 20, null, 64);
      expect(m!.bytes.toString()).toBe(body);
      expect(m!.room).toBe(64);
      expect(m!.bytes.buffer.byteLength - m!.bytes.byteOffset).toBeGreaterThanOrEqual(body.length + 64);
      expect(lines(r)).toEqual([{ kind: "line", text: "NOOP", bareLf: false }]);
    }
    const r = new LineReader();
    r.push(b(wire));
    const one = r.nextMessage(1 << 20, null, 64)!;
    expect(one.bytes.toString()).toBe(body);
    expect(one.room).toBe(0);
  });

  test("messages cut into random parts, from 1 byte to 40 KB, come out whole and in order, back to back, and sized exactly", () => {
    // Small parts after the first are copied into shared blocks, large ones kept as views:
    // any mix of the two must give back the same bytes, and what follows each message.
    const rand = seeded(11);
    const pieces = ["x", "\r\n", "..", ".\r\n", "\r\n.x", "y".repeat(900), "z".repeat(30_000)];
    for (let t = 0; t < 60; t++) {
      const bodies = Array.from({ length: 3 }, () => {
        // Dot-stuffed as a client sends it: no line is a lone ".".
        let m = Array.from({ length: rand(40) }, () => pieces[rand(pieces.length)]).join("") + "\r\n";
        while (/(^|\r\n)\.\r\n/.test(m)) m = m.replace(/(^|\r\n)\.(?=\r\n)/g, "$1..");
        return m;
      });
      const wire = b(bodies.map((m) => `${m}.\r\nNOOP\r\n`).join(""));
      // RFC 1870 sizes, without stuffing dots; every other round the limit is one octet short.
      const short = t % 2;
      const limits = bodies.map((m) => m.length - (m.startsWith(".") ? 1 : 0) - (m.match(/\r\n\./g)?.length ?? 0) - short);
      const r = new LineReader();
      const got: string[] = [];
      for (let at = 0; at < wire.length; ) {
        const size = rand(4) === 0 ? 1 + rand(40_000) : 1 + rand(20);
        r.push(wire.subarray(at, at + size));
        at += size;
        for (;;) {
          if (got.length % 2 === 0) {
            const m = r.nextMessage(limits[got.length / 2]!, null, 64);
            if (!m) break;
            got.push(m.tooBig ? "too big" : m.bytes.toString("latin1"));
          } else {
            const l = r.nextLine(512);
            if (!l) break;
            got.push(l.kind === "line" ? l.text : "?");
          }
        }
      }
      expect(got).toEqual(bodies.flatMap((m) => [short ? "too big" : m, "NOOP"]));
    }
  });

  test("over the size limit: tooBig, no bytes kept, and the stream stays in step", () => {
    const r = new LineReader();
    for (let i = 0; i < 10; i++) {
      r.push(b("x".repeat(98) + "\r\n"));
      expect(r.nextMessage(500)).toBeNull();
    }
    r.push(b(".\r\nNOOP\r\n"));
    const m = r.nextMessage(500)!;
    expect(m.tooBig).toBe(true);
    expect(m.bytes.length).toBe(0);
    expect(lines(r)).toEqual([{ kind: "line", text: "NOOP", bareLf: false }]);
  });

  test("exactly at the limit is accepted, one byte over is not", () => {
    for (const [len, big] of [[100, false], [101, true]] as const) {
      const r = new LineReader();
      r.push(b("y".repeat(len - 2) + "\r\n.\r\n"));
      const m = r.nextMessage(100)!;
      expect(m.tooBig).toBe(big);
      if (!big) expect(m.bytes.length).toBe(100);
    }
  });

  test("the limit is on the message as RFC 1870 counts it: stuffing dots are not counted, whatever the chunking", () => {
    // 100 octets of message: lines ".a" and "." (sent as "..a" and ".."), so 102 on the wire.
    const message = ".a\r\n" + "y".repeat(88) + "\r\n.\r\nz\r\n";
    expect(message.length).toBe(100);
    const wire = message.replace(/^\./gm, "..") + ".\r\n";
    for (const [max, big] of [[100, false], [99, true]] as const) {
      for (let size = 1; size <= wire.length; size++) {
        const r = new LineReader();
        let m: MessageEvent | null = null;
        for (let i = 0; i < wire.length; i += size) {
          r.push(b(wire.slice(i, i + size)));
          m ??= r.nextMessage(max);
        }
        expect([max, size, m!.tooBig]).toEqual([max, size, big]);
        if (!big) expect(m!.bytes.toString("latin1")).toBe(wire.slice(0, -3));
      }
    }
  });

  test("dotLines counts lines starting with '.', across chunk boundaries", () => {
    expect(dotLines(b(".a\r\n..\r\nb\r\n.c\r\n"))).toBe(3);
    expect(dotLines(b("a.b\r\n"))).toBe(0);
    expect(dotLines(b(".x"), 0x0d, 0x0a)).toBe(1); // after "\r\n"
    expect(dotLines(b(".x"), 0x61, 0x0a)).toBe(0); // after a bare LF: not a line start in DATA
    expect(dotLines(b("\n.x"), 0x61, 0x0d)).toBe(1); // "\r" | "\n."
  });

  test("a 1000-octet text line and longer are kept whole", () => {
    const line = "w".repeat(5000);
    const r = new LineReader();
    r.push(b(line + "\r\n.\r\n"));
    expect(r.nextMessage(1 << 20)!.bytes.toString()).toBe(line + "\r\n");
  });
});

describe("DataBudget: memory for unfinished messages, shared by all connections", () => {
  test("a message that would overfill it is dropped as it comes and reported noRoom; finished and abandoned messages give their share back", () => {
    const budget = new DataBudget(100);
    const a = new LineReader();
    const c = new LineReader();
    a.push(b("x".repeat(70)));
    expect(a.nextMessage(1 << 20, budget)).toBeNull();
    expect(budget.held).toBe(70);
    // c's 40 bytes do not fit beside a's 70: dropped, yet the end of c's message is still found.
    c.push(b("y".repeat(40)));
    expect(c.nextMessage(1 << 20, budget)).toBeNull();
    c.push(b("\r\n.\r\nNOOP\r\n"));
    const refused = c.nextMessage(1 << 20, budget)!;
    expect([refused.noRoom, refused.tooBig, refused.bytes.length]).toEqual([true, false, 0]);
    expect(lines(c)).toEqual([{ kind: "line", text: "NOOP", bareLf: false }]);
    expect(budget.held).toBe(70);
    // a finishes: its share stays counted until the message is stored, then comes back,
    // and c's next message fits.
    a.push(b("\r\n.\r\n"));
    const done = a.nextMessage(1 << 20, budget)!;
    expect(done.bytes.toString()).toBe("x".repeat(70) + "\r\n");
    expect([done.charged, budget.held]).toEqual([72, 72]); // with the CRLF before the dot
    budget.release(done.charged);
    expect(budget.held).toBe(0);
    c.push(b("y".repeat(40)));
    expect(c.nextMessage(1 << 20, budget)).toBeNull();
    expect(budget.held).toBe(40);
    // c's client goes away in the middle: dropData gives the share back.
    c.dropData();
    expect(budget.held).toBe(0);
    c.dropData();
    expect(budget.held).toBe(0);
  });

  test("alone in the budget, a message may go past it (dot-stuffing makes the wire larger than --max-size); beside another it may not", () => {
    const budget = new DataBudget(100);
    const a = new LineReader();
    a.push(b("..x\r\n".repeat(30) + ".\r\n")); // 150 bytes on the wire, 120 once unstuffed
    const m = a.nextMessage(130, budget)!;
    expect([m.noRoom, m.tooBig, m.charged]).toEqual([false, false, 150]);
    const other = new LineReader();
    other.push(b("y".repeat(10)));
    expect(other.nextMessage(130, budget)).toBeNull();
    other.push(b("\r\n.\r\n"));
    expect(other.nextMessage(130, budget)!.noRoom).toBe(true);
    budget.release(m.charged);
    expect(budget.held).toBe(0);
  });

  test("charge() counts a copy of a finished message: refused when others hold the rest, granted past the limit when the message is alone", () => {
    const budget = new DataBudget(100);
    const a = new LineReader();
    const other = new LineReader();
    a.push(b("x".repeat(58) + "\r\n.\r\n"));
    const m = a.nextMessage(1 << 20, budget)!;
    expect([m.charged, budget.held]).toEqual([60, 60]);
    other.push(b("y"));
    expect(other.nextMessage(1 << 20, budget)).toBeNull();
    expect(budget.held).toBe(61);
    // 60 + 1 + 50 > 100 and a is not alone: refused, nothing counted.
    expect(m.charge!(50)).toBe(false);
    expect([m.charged, budget.held]).toEqual([60, 61]);
    other.dropData();
    // Alone, a may go past the limit: a message within the size limit always gets through.
    expect(m.charge!(50)).toBe(true);
    expect([m.charged, budget.held]).toEqual([110, 110]);
    budget.release(m.charged);
    expect(budget.held).toBe(0);
  });

  test("too big for the size limit is reported tooBig, not noRoom, and holds nothing", () => {
    const budget = new DataBudget(1000);
    const r = new LineReader();
    r.push(b("z".repeat(300)));
    expect(r.nextMessage(100, budget)).toBeNull();
    expect(budget.held).toBe(0);
    r.push(b("\r\n.\r\n"));
    const m = r.nextMessage(100, budget)!;
    expect([m.tooBig, m.noRoom]).toEqual([true, false]);
  });

  test("one byte over the limit while the budget is full is tooBig (552, final), however the end is split", () => {
    for (const parts of [["hello\r\n.\r\n"], ["hello\r\n.", "\r\n"], ["hello\r\n.\r", "\n"]]) {
      const budget = new DataBudget(1);
      const r = new LineReader();
      let m: MessageEvent | null = null;
      for (const p of parts) {
        r.push(b(p));
        m ??= r.nextMessage(6, budget);
      }
      expect([parts, m!.tooBig, m!.noRoom]).toEqual([parts, true, false]);
    }
  });
});

// LineReader.push keeps socket chunks without copying them. That is only safe because Bun
// gives every data event memory of its own and never writes to it again: checked here on
// real sockets, so a runtime upgrade that starts reusing receive buffers fails this test.
describe("the runtime's socket chunks", () => {
  const cert = makeCert();
  afterAll(() => cert?.remove());
  // "STARTTLS": a plain connection upgraded in place by both ends, as lib/server.ts does.
  for (const mode of ["plain TCP", "TLS", "STARTTLS"] as const) {
    test.skipIf(mode !== "plain TCP" && !cert)(`are never reused after the data handler returns (${mode})`, async () => {
      const kept: { chunk: Buffer; copy: Buffer }[] = [];
      let got = 0;
      const serverTls = cert ? { cert: Bun.file(cert.cert), key: Bun.file(cert.key) } : undefined;
      const keep = (chunk: Buffer) => {
        kept.push({ chunk, copy: Buffer.from(chunk) });
        got += chunk.length;
      };
      let upgraded = false;
      const server = Bun.listen({
        hostname: "127.0.0.1",
        port: 0,
        ...(mode === "TLS" ? { tls: serverTls } : {}),
        socket: {
          data(s, chunk) {
            if (mode !== "STARTTLS") return keep(chunk);
            // The raw socket goes on seeing the ciphertext after the upgrade (see lib/server.ts).
            if (upgraded) return;
            upgraded = true;
            if (chunk.toString() !== "STARTTLS\r\n") throw new Error(`unexpected ${chunk.toString()}`);
            s.write("go\r\n");
            s.upgradeTLS({ tls: serverTls!, socket: { data: (_t, c) => keep(c) } });
          },
        },
      });
      // Bun's write() takes what fits and returns the count: the rest waits for drain.
      const queue: Buffer[] = [];
      let client: Socket<undefined>;
      const flush = () => {
        while (queue.length) {
          const n = client.write(queue[0]!);
          if (n < queue[0]!.length) {
            queue[0] = queue[0]!.subarray(Math.max(0, n));
            return;
          }
          queue.shift();
        }
      };
      const handlers = { data() {}, drain: flush };
      if (mode === "STARTTLS") {
        const go = Promise.withResolvers<void>();
        const raw = await Bun.connect({ hostname: "127.0.0.1", port: server.port, socket: { data: () => go.resolve() } });
        raw.write("STARTTLS\r\n");
        await go.promise;
        const [, encrypted] = raw.upgradeTLS({ tls: { rejectUnauthorized: false }, socket: handlers });
        client = encrypted as Socket<undefined>;
      } else {
        client = await Bun.connect({ hostname: "127.0.0.1", port: server.port, ...(mode === "TLS" ? { tls: { rejectUnauthorized: false } } : {}), socket: handlers });
      }
      let sent = 0;
      for (let i = 0; i < 200; i++) {
        const part = Buffer.from(String.fromCharCode(65 + (i % 26)).repeat(50 + i * 97));
        sent += part.length;
        queue.push(part);
        flush();
        if (i % 4 === 0) await Bun.sleep(1);
      }
      for (let i = 0; i < 500 && got < sent; i++) await Bun.sleep(10);
      client.end();
      server.stop(true);
      expect(got).toBe(sent);
      expect(kept.length).toBeGreaterThan(1);
      const buffers = new Set(kept.map((k) => k.chunk.buffer));
      expect(buffers.size).toBe(kept.length);
      for (const k of kept) expect(k.chunk.equals(k.copy)).toBe(true);
    });
  }
});
