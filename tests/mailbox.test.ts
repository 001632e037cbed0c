import { describe, expect, test } from "bun:test";
import { seeded } from "./helpers/random.ts";
import { buildRecord, buildRecordYielding, lfPieceToWire, normalizeLineEnds, receivedLine, RECORD_ROOM, toWire } from "../lib/mailbox.ts";
import { MessageHasher, messageHash } from "../lib/message-hash.ts";
import { MessageIndex, type MessageEntry } from "../lib/message-index.ts";
import { MailboxScanner, scanBuffer } from "../lib/mailbox-scanner.ts";
import { writeNumber } from "../lib/digits.ts";
import { unstuff } from "./helpers/unstuff.ts";

const b = (s: string) => Buffer.from(s, "utf8");
const RCV = "Received: 2024-03-05 : 09 : 07";
const ENVELOPE = { sender: "a@b", recipients: ["c@d", "e@f"] };

/** What a POP3 client gets for one entry: wire form without the final ".", unstuffed. */
function delivered(file: Buffer, m: MessageEntry): Buffer {
  const wire = toWire(file.subarray(m.offset, m.offset + m.length), m.lf, m.stuff);
  expect(wire.subarray(-3).toString()).toBe(".\r\n");
  return unstuff(wire.subarray(0, wire.length - 3));
}

describe("receivedLine", () => {
  test("date : hour : minute with zero padding", () => {
    expect(receivedLine(new Date(2024, 2, 5, 9, 7, 59))).toBe(RCV);
    expect(receivedLine(new Date(1999, 11, 31, 23, 59))).toBe("Received: 1999-12-31 : 23 : 59");
  });
});

describe("buildRecord", () => {
  test("the assignment's message: Received right after Subject, then body, then '.'", () => {
    const wire = b("From: ag@iitkgp.edu\r\nTo: gb@iitkgp.edu\r\nSubject: Test mail\r\nThis is a test mail.\r\nHow are you doing?\r\n");
    expect(buildRecord(wire, RCV).toString()).toBe(
      "From: ag@iitkgp.edu\r\nTo: gb@iitkgp.edu\r\nSubject: Test mail\r\n" + RCV + "\r\nThis is a test mail.\r\nHow are you doing?\r\n.\r\n",
    );
  });

  test("real-client headers are kept byte for byte; Received goes after a folded Subject", () => {
    const wire = b("Date: Tue, 5 Mar 2024\r\nSubject: a long\r\n\tfolded subject\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n");
    expect(buildRecord(wire, RCV).toString()).toBe(
      "Date: Tue, 5 Mar 2024\r\nSubject: a long\r\n\tfolded subject\r\n" + RCV + "\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n.\r\n",
    );
  });

  test("a header with whitespace before its colon (RFC 5322's obsolete syntax) is a header, Subject included", () => {
    expect(buildRecord(b("Subject : spaced\r\nFrom\t: a@x\r\n\r\nb\r\n"), RCV).toString()).toBe(
      "Subject : spaced\r\n" + RCV + "\r\nFrom\t: a@x\r\n\r\nb\r\n.\r\n",
    );
    // A space inside the name still ends the header block.
    expect(buildRecord(b("Sub ject: x\r\n"), RCV).toString()).toBe(RCV + "\r\n\r\nSub ject: x\r\n.\r\n");
    // Only in a block with a strict header line or ending at a blank line: "Hi :)" opening a message is text.
    expect(buildRecord(b("Hi :)\r\nsee you\r\n"), RCV).toString()).toBe(RCV + "\r\n\r\nHi :)\r\nsee you\r\n.\r\n");
    expect(buildRecord(b("Subject : x\r\n\r\nb\r\n"), RCV).toString()).toBe("Subject : x\r\n" + RCV + "\r\n\r\nb\r\n.\r\n");
  });

  test("From and To from the envelope: not for a header block longer than the 256 KiB looked at (they may be further down)", () => {
    const pad = Array.from({ length: 3000 }, (_, i) => `X-Pad-${i}: ${"p".repeat(80)}\r\n`).join("");
    const rec = buildRecord(b(pad + "From: real@sender\r\nTo: bob@x\r\nSubject: hi\r\n\r\nbody\r\n"), RCV, { envelope: ENVELOPE }).toString();
    expect(rec.startsWith("X-Pad-0: ")).toBe(true);
    expect(rec.match(/^From:/gm)).toEqual(["From:"]);
    expect(rec.match(/^To:/gm)).toEqual(["To:"]);
  });

  test("a header block cut at 256 KiB inside a folded field: Received goes at a field boundary, never between its folded lines", () => {
    const fold = Array.from({ length: 4000 }, () => ` ${"c".repeat(78)}\r\n`).join("");
    const head = "From: a@b\r\nTo: c@d\r\n";
    const rec = buildRecord(b(head + "X-Long: start\r\n" + fold + "X-After: yes\r\n\r\nbody\r\n"), RCV).toString();
    // Before the field the cut fell in: the folded lines still follow X-Long.
    expect(rec.startsWith(head + RCV + "\r\nX-Long: start\r\n" + fold + "X-After: yes\r\n\r\nbody\r\n")).toBe(true);
    // A Subject folded past the cut: before the Subject line. One folded before it: after it.
    const subject = "Subject: s\r\n" + fold;
    expect(buildRecord(b(head + subject + "\r\nbody\r\n"), RCV).toString()).toBe(head + RCV + "\r\n" + subject + "\r\nbody\r\n.\r\n");
    const long = "X-Long: start\r\n" + fold;
    expect(buildRecord(b("Subject: s\r\n \tmore\r\n" + long + "\r\nb\r\n"), RCV).toString()).toBe("Subject: s\r\n \tmore\r\n" + RCV + "\r\n" + long + "\r\nb\r\n.\r\n");
  });

  test("without Subject: at the end of the header block; without headers: first, then a blank line before the body", () => {
    expect(buildRecord(b("From: a@b\r\n\r\nhi\r\n"), RCV).toString()).toBe("From: a@b\r\n" + RCV + "\r\n\r\nhi\r\n.\r\n");
    expect(buildRecord(b("just text\r\n"), RCV).toString()).toBe(RCV + "\r\n\r\njust text\r\n.\r\n");
    expect(buildRecord(b("\r\nbody after an empty header\r\n"), RCV).toString()).toBe(RCV + "\r\n\r\nbody after an empty header\r\n.\r\n");
    // A first line starting with a space continues no header.
    expect(buildRecord(b("  indented\r\nsecond\r\n"), RCV).toString()).toBe(RCV + "\r\n\r\n  indented\r\nsecond\r\n.\r\n");
    expect(buildRecord(b(""), RCV).toString()).toBe(RCV + "\r\n.\r\n");
  });

  test("with spare room after the message, the record is built in place, byte for byte the same", () => {
    const cases = [
      "From: ag@iitkgp.edu\r\nTo: gb@iitkgp.edu\r\nSubject: Test mail\r\nThis is a test mail.\r\n",
      "Date: x\r\nSubject: a long\r\n\tfolded subject\r\nMessage-ID: <1@x>\r\n\r\n" + "body line\r\n".repeat(5000),
      "From: a@b\r\n\r\nhi\r\n",
      "just text\r\n",
      "",
    ];
    for (const text of cases) {
      const expected = buildRecord(b(text), RCV);
      // As LineReader gathers a message from several chunks: spare room in the same memory.
      const gathered = Buffer.alloc(Buffer.byteLength(text) + RECORD_ROOM, 0x7e);
      gathered.write(text);
      const wire = gathered.subarray(0, Buffer.byteLength(text));
      const rec = buildRecord(wire, RCV, { room: RECORD_ROOM });
      expect(rec.equals(expected)).toBe(true);
      expect(rec.buffer === gathered.buffer && rec.byteOffset === gathered.byteOffset).toBe(true);
    }
    // Bare LF line ends need a converted copy: the room is not used, the result is the same.
    const lf = Buffer.alloc(40 + RECORD_ROOM);
    lf.write("Subject: s\n\nline\n");
    const rec = buildRecord(lf.subarray(0, Buffer.byteLength("Subject: s\n\nline\n")), RCV, { room: RECORD_ROOM });
    expect(rec.toString()).toBe("Subject: s\r\n" + RCV + "\r\n\r\nline\r\n.\r\n");
    expect(rec.buffer === lf.buffer).toBe(false);
  });

  test("subject-like text in the body is not a header", () => {
    const out = buildRecord(b("From: a@b\r\n\r\nSubject: not a header\r\n"), RCV).toString();
    expect(out).toBe("From: a@b\r\n" + RCV + "\r\n\r\nSubject: not a header\r\n.\r\n");
  });

  test("dot-stuffed lines stay stuffed and one record scans as one message", () => {
    const wire = b("Subject: s\r\n\r\n..\r\n...\r\n..x\r\n");
    const rec = buildRecord(wire, RCV);
    const s = scanBuffer(rec);
    expect(s.messages.length).toBe(1);
    expect(delivered(rec, s.messages[0]!).toString()).toBe("Subject: s\r\n" + RCV + "\r\n\r\n.\r\n..\r\n.x\r\n");
  });

  test("smuggled end-of-data lookalikes inside a message never split it in the file", () => {
    for (const fake of ["\r\n.\n", "\n.\r\n", "\n.\n", "\n.\r\n.\n"]) {
      const wire = b(`Subject: s\r\n\r\na${fake}MAIL FROM:<x@y>\r\n`);
      const rec = buildRecord(wire, RCV);
      const s = scanBuffer(Buffer.concat([rec, rec]));
      expect(s.messages.length).toBe(2);
      expect(s.validEnd).toBe(rec.length * 2);
    }
  });

  test("buildRecordYielding gives the same bytes as buildRecord, letting other work run while it converts a large message", async () => {
    const big = (line: string, n: number) => Buffer.from("Subject: big\n\n" + line.repeat(n) + ".x\n..y\r\n\n.\n");
    // The last large one is stuffed after bare LFs, as Python's smtplib sends bytes: kept as sent.
    const stuffed = Buffer.from("Subject: big\n\n" + ("..x\n" + "q".repeat(70) + "\n...\n").repeat(40_000) + "\n..\n");
    const inputs = [big("\n", 2_000_000), big("z".repeat(79) + "\n", 30_000), big("w".repeat(40) + "\r\n", 60_000), stuffed, b("Subject: small\n\nhi\n")];
    expect(buildRecord(stuffed, RCV).includes("\r\n...\r\n..x\r\n")).toBe(true);
    for (const wire of inputs) {
      // 64 spare bytes hold the Received and "." lines, not the From and To added from an envelope.
      for (const [room, envelope] of [[0, undefined], [64, undefined], [64, ENVELOPE], [256, ENVELOPE]] as const) {
        const padded = Buffer.alloc(wire.length + room);
        wire.copy(padded);
        const want = buildRecord(Buffer.from(wire), RCV, { envelope });
        if (envelope) expect(want.subarray(0, 44).toString()).toBe("From: a@b\r\nTo: undisclosed-recipients:;\r\nSub");
        let turns = 0;
        const ticking = setInterval(() => turns++, 0);
        const got = await buildRecordYielding(padded.subarray(0, wire.length), RCV, { room, envelope });
        clearInterval(ticking);
        expect(got.equals(want)).toBe(true);
        // Timers ran meanwhile for every large message: the event loop was not held throughout.
        if (wire.length > 256 * 1024) expect(turns).toBeGreaterThan(0);
      }
    }
    // The first line after an nc user's DATA: its dot is kept the same way on either path.
    for (const wire of [Buffer.from(".top\n" + "z".repeat(79) + "\n".repeat(300_000)), Buffer.from(".top\r\n" + "z".repeat(79) + "\r\n".repeat(300_000))]) {
      const want = buildRecord(wire, RCV, { lfStart: true });
      expect(want.includes("\r\n\r\n..top\r\n")).toBe(true);
      expect((await buildRecordYielding(wire, RCV, { lfStart: true })).equals(want)).toBe(true);
    }
  });
});

describe("normalizeLineEnds", () => {
  test("CRLF-only input is returned unchanged (same buffer)", () => {
    const w = b("a\r\n.b\r\n");
    expect(normalizeLineEnds(w)).toBe(w);
  });
  test("bare LF becomes CRLF; a '.' line after a bare LF is stuffed", () => {
    expect(normalizeLineEnds(b("a\nb\r\nc\n")).toString()).toBe("a\r\nb\r\nc\r\n");
    expect(normalizeLineEnds(b("a\n.x\n.\n")).toString()).toBe("a\r\n..x\r\n..\r\n");
    expect(normalizeLineEnds(b("a\r\n.\nb\r\n")).toString()).toBe("a\r\n..\r\nb\r\n");
  });
  test("after bare LFs: stuffed as curl sends them when one such line starts with a single '.'; kept when every one starts with '..' (Python's smtplib stuffed them)", () => {
    // curl stuffs only after CRLF: its lines ".x", "..", "." arrive as they are.
    expect(normalizeLineEnds(b("a\n.x\n..\n.\n")).toString()).toBe("a\r\n..x\r\n...\r\n..\r\n");
    // smtplib.sendmail(..., bytes) stuffs after every LF: ".x", "..", "." arrive as "..x", "...", "..".
    expect(normalizeLineEnds(b("a\n..x\n...\n..\n")).toString()).toBe("a\r\n..x\r\n...\r\n..\r\n");
    // Lines after CRLF are stuffed by every client and never touched.
    expect(normalizeLineEnds(b("a\n..x\r\n.y\r\n")).toString()).toBe("a\r\n..x\r\n.y\r\n");
    expect(normalizeLineEnds(b("a\n..x\r\n.y\n.")).toString()).toBe("a\r\n...x\r\n.y\r\n..\r\n");
  });
  test("after a DATA command ended by a bare LF (nc), the first line's dot is judged like the other lines after a bare LF", () => {
    expect(normalizeLineEnds(b(".first\nnext\n"), true).toString()).toBe("..first\r\nnext\r\n");
    expect(normalizeLineEnds(b(".first\r\nnext\r\n"), true).toString()).toBe("..first\r\nnext\r\n");
    expect(normalizeLineEnds(b("..first\n..x\n"), true).toString()).toBe("..first\r\n..x\r\n");
    expect(normalizeLineEnds(b("..first\n.x\n"), true).toString()).toBe("...first\r\n..x\r\n");
    // After a CRLF DATA the first line is stuffed as every other line after a CRLF.
    expect(normalizeLineEnds(b(".first\nnext\n")).toString()).toBe(".first\r\nnext\r\n");
    expect(buildRecord(b(".first\n"), RCV, { lfStart: true }).toString()).toBe(RCV + "\r\n\r\n..first\r\n.\r\n");
  });
  test("a final line without line end gets CRLF", () => {
    expect(normalizeLineEnds(b("a\nb")).toString()).toBe("a\r\nb\r\n");
  });
  test("agrees with the line-by-line definition on 20,000 random mixes of CR, LF, '.' and text", () => {
    // The rule, line by line, as it was first written (one buffer per line: slow on huge
    // inputs, plain to read): the oracle for the byte-loop version.
    const oracle = (w: Buffer): string => {
      const text = w.toString("latin1");
      if (!/(^|[^\r])\n/.test(text)) return text;
      // Lines after a bare LF are stuffed here when one of them starts with a single ".".
      const stuff = /(^|[^\r])\n\.([^.]|$)/.test(text);
      let out = "";
      let start = 0;
      let afterBareLf = false;
      for (let i = w.indexOf(10); i >= 0; i = w.indexOf(10, start)) {
        const end = i > start && w[i - 1] === 13 ? i - 1 : i;
        const loneDot = end === i && end - start === 1 && w[start] === 46;
        if (((afterBareLf && stuff) || (loneDot && !afterBareLf)) && w[start] === 46) out += ".";
        out += w.toString("latin1", start, end) + "\r\n";
        afterBareLf = end === i;
        start = i + 1;
      }
      if (start < w.length) out += (afterBareLf && stuff && w[start] === 46 ? "." : "") + w.toString("latin1", start) + "\r\n";
      return out;
    };
    const rand = seeded(1);
    const alphabet = ["\r", "\n", ".", "a", "\r\n", "\n.", "y".repeat(70), ".\n.\r\n", ".\n"];
    for (let t = 0; t < 20_000; t++) {
      const w = b(Array.from({ length: rand(t < 10_000 ? 12 : 60) }, () => alphabet[rand(alphabet.length)]).join(""));
      expect(normalizeLineEnds(w).toString("latin1")).toBe(oracle(w));
    }
    // Each ".<LF>.<CRLF>" grows by three bytes (a CR and two stuffing dots): helper-21's case,
    // where a buffer sized for two per bare LF cut the message's end after its 250.
    for (const n of [1, 4, 8, 1000]) {
      const w = b("a\r\n" + ".\n.\r\n".repeat(n) + "tail line\r\n");
      expect(normalizeLineEnds(w).toString("latin1")).toBe(oracle(w));
    }
  });
});

function smallMailbox(): Buffer {
  return Buffer.concat([
    buildRecord(b("From: a@b\r\nTo: c@d\r\nSubject: one\r\n\r\nline\r\n..\r\n"), RCV),
    buildRecord(b(""), RCV),
    buildRecord(b("Subject: three\r\n\r\n...x\r\nünïcødé ✓\r\n"), RCV),
  ]);
}

describe("MessageHasher", () => {
  // A message too large to hold is hashed a piece at a time: its UID must be the one
  // messageHash() of its whole bytes gives, or clients would fetch it again as new mail.
  test("fed in pieces of any size, it gives messageHash() of the whole bytes", () => {
    const rand = seeded(5);
    const lengths = [...Array.from({ length: 130 }, (_, n) => n), 199, 200, 201, 4096, 65_537, 3_000_017];
    for (const len of lengths) {
      const bytes = Buffer.from(Array.from({ length: len }, () => rand(256)));
      for (const most of [1, 7, 20, 21, 1000, 1 << 20]) {
        const h = new MessageHasher(len, bytes.subarray(Math.max(0, len - 20)));
        for (let at = 0; at < len; ) {
          const n = 1 + rand(most);
          h.update(bytes.subarray(at, at + n));
          at += n;
        }
        expect(h.digest()).toBe(messageHash(bytes));
      }
    }
  });
});

describe("MailboxScanner", () => {
  test("chunked input split at every byte position gives the same messages as one buffer", () => {
    const file = smallMailbox();
    const whole = scanBuffer(file);
    expect(whole.messages.length).toBe(3);
    expect(whole.validEnd).toBe(file.length);
    for (let cut = 0; cut <= file.length; cut++) {
      const s = new MailboxScanner();
      s.push(file.subarray(0, cut));
      s.push(file.subarray(cut), true);
      expect(s.messages).toEqual(whole.messages);
      expect(s.validEnd).toBe(file.length);
    }
    // one byte at a time
    const s = new MailboxScanner();
    for (let i = 0; i < file.length; i++) s.push(file.subarray(i, i + 1), i === file.length - 1);
    expect(s.messages).toEqual(whole.messages);
  });

  test("random mailboxes fed in random pieces index as one buffer does (the scan resumes an unfinished record)", () => {
    // Hand-written LF records with "." lines of every kind, CRLF records, long first lines:
    // each record's end is found across many calls, where a search that resumes one byte
    // off would miss or invent a terminator.
    const rand = seeded(7);
    const pieces = ["..", ".x", ".", "\r", "x".repeat(40), "", ". ", "..."];
    for (let round = 0; round < 300; round++) {
      const records: string[] = [];
      for (let r = 1 + rand(4); r > 0; r--) {
        // LF records, CRLF records, and hand-written ones that mix the two line by line.
        const mixed = rand(3) === 0;
        const eol = rand(2) ? "\n" : "\r\n";
        const e = () => (mixed ? (rand(2) ? "\n" : "\r\n") : eol);
        const lines = Array.from({ length: 1 + rand(12) }, () => pieces[rand(pieces.length)]!).filter((l) => l !== ".");
        let record = `From: ${"y".repeat(rand(3) * 30)}${e()}`;
        for (const l of lines) record += l + e();
        // The "." line may end otherwise: CRLF after LF lines, `echo .` after CRLF ones.
        records.push(record + "." + (rand(2) ? e() : rand(2) ? "\n" : "\r\n"));
      }
      const tail = ["", "From: unfinished\n..\n.x", "From: cut\r\n\r\n..\r\n.\r", "\n."][rand(4)]!;
      const file = Buffer.from(records.join("") + tail, "latin1");
      const whole = scanBuffer(file);
      const s = new MailboxScanner();
      for (let at = 0; at < file.length; ) {
        const n = 1 + rand(rand(2) ? 3 : 40);
        s.push(file.subarray(at, at + n), at + n >= file.length);
        at += n;
      }
      expect(s.messages).toEqual(whole.messages);
      expect(s.validEnd).toBe(whole.validEnd);
      // A "\n." tail is an empty line and a final "." without newline: one more message.
      expect(whole.messages.length).toBe(records.length + (tail === "\n." ? 1 : 0));
      for (const m of whole.messages) {
        // What RETR sends: ended by its one "." line, with no other before it, and as long
        // as LIST says once unstuffed.
        const wire = toWire(file.subarray(m.offset, m.offset + m.length), m.lf, m.stuff).toString("latin1");
        expect(wire.match(/(^|\n)\.\r?\n/g)).toHaveLength(1);
        // A strict client looks for CRLF "." CRLF only, and unstuffs lines split at CRLF.
        expect(wire === ".\r\n" ? 0 : wire.indexOf("\r\n.\r\n") + 2).toBe(wire.length - 3);
        const strict = wire.slice(0, -3).split("\r\n").map((l) => (l.startsWith(".") ? l.slice(1) : l)).join("\r\n");
        expect(strict.length).toBe(m.size);
        expect(delivered(file, m).length).toBe(m.size);
      }
    }
  });

  test("offsets and lengths cover the file exactly", () => {
    const file = smallMailbox();
    const { messages } = scanBuffer(file);
    let pos = 0;
    for (const m of messages) {
      expect(m.offset).toBe(pos);
      expect(file.subarray(m.offset + m.length - 3, m.offset + m.length).toString()).toBe(".\r\n");
      pos += m.length;
      expect(m.lf).toBe(false);
    }
    expect(pos).toBe(file.length);
  });

  test("a torn tail (crash mid-append) is ignored, at every cut point of the last record", () => {
    const good = smallMailbox();
    const last = buildRecord(b("Subject: torn\r\n\r\na\r\n..x\r\n..\r\nb\r\n"), RCV);
    for (let cut = 1; cut < last.length; cut++) {
      const file = Buffer.concat([good, last.subarray(0, cut)]);
      const s = scanBuffer(file);
      expect(s.messages.length).toBe(3);
      expect(s.validEnd).toBe(good.length);
    }
  });

  test("the assignment's hand-written LF mailbox with a leading '.' line", () => {
    const text =
      ".\nFrom: ag@iitkgp.edu\nTo: gb@iitkgp.edu\nSubject: Hello\nReceived: 2024-01-02 : 10 : 30\nline one\n.x dotted\n.\n" +
      "From: b@c\nTo: gb@iitkgp.edu\nSubject: Second\nReceived: 2024-01-02 : 11 : 00\n.";
    const file = b(text);
    const s = scanBuffer(file);
    expect(s.messages.length).toBe(2);
    expect(s.messages.every((m) => m.lf)).toBe(true);
    expect(s.validEnd).toBe(file.length);
    const first = delivered(file, s.messages[0]!).toString();
    // A line with a single leading "." says the file was not dot-stuffed: it is text, as Dovecot
    // reads an mbox (helper-58: sent as stored, poplib showed ".x dotted" and fetchmail "x dotted").
    expect(s.messages[0]!.stuff).toBe(true);
    expect(first).toBe("From: ag@iitkgp.edu\r\nTo: gb@iitkgp.edu\r\nSubject: Hello\r\nReceived: 2024-01-02 : 10 : 30\r\nline one\r\n.x dotted\r\n");
    expect(delivered(file, s.messages[1]!).toString()).toBe("From: b@c\r\nTo: gb@iitkgp.edu\r\nSubject: Second\r\nReceived: 2024-01-02 : 11 : 00\r\n");
  });

  test("RFC 1939 sizes: CRLF octets without stuffing dots, equal to what RETR delivers", () => {
    const lf = b(".\nSubject: x\n\n..\n.y\nplain\n.\n");
    const files = [smallMailbox(), lf, buildRecord(b("Subject: q\r\n\r\n.x\r\n"), RCV)];
    for (const file of files) {
      const s = scanBuffer(file);
      expect(s.messages.length).toBeGreaterThan(0);
      for (const m of s.messages) expect(m.size).toBe(delivered(file, m).length);
    }
    // A known value. Its ".y" line says nobody stuffed it, so ".." and ".y" are text:
    // "Subject: x\r\n\r\n..\r\n.y\r\nplain\r\n" = 12+2+4+4+7. With "..y" instead, it is
    // stuffed: "Subject: x\r\n\r\n.\r\n.y\r\nplain\r\n" = 12+2+3+4+7.
    expect(scanBuffer(lf).messages[0]!.size).toBe(29);
    expect(scanBuffer(b(".\nSubject: x\n\n..\n..y\nplain\n.\n")).messages[0]!.size).toBe(28);
    // In a CRLF record (smtpmail's), ".y" came from a client that did not stuff: RFC 5321 reads "y".
    const crlf = scanBuffer(b(".\r\nSubject: x\r\n\r\n..\r\n.y\r\nplain\r\n.\r\n")).messages[0]!;
    expect([crlf.size, crlf.stuff, crlf.lf]).toEqual([27, false, false]);
  });

  test("identical messages get distinct UIDs; UIDs are stable across scans", () => {
    const rec = buildRecord(b("Subject: same\r\n\r\nsame\r\n"), RCV);
    const file = Buffer.concat([rec, rec, rec, buildRecord(b("other\r\n"), RCV)]);
    const a = scanBuffer(file).messages.map((m) => m.uid);
    expect(new Set(a).size).toBe(4);
    expect(scanBuffer(file).messages.map((m) => m.uid)).toEqual(a);
  });

  test("an LF message's size counts each bare LF as CRLF, including an empty first line and empty lines in a row", () => {
    // (A first line ending in CRLF makes a record of our own format: not an LF message.)
    for (const text of ["\nbody\n", "a\n\n\nb\n", "\n\n", "x\ny\r\nz\n", "..dot\nz\n"]) {
      const [m] = scanBuffer(b(text + ".\n")).messages;
      // As sent: CRLF line ends, stuffing dots removed.
      expect(m!.size).toBe(unstuff(toWire(b(text), true)).length);
    }
  });

  test("an LF file whose last '.' has no newline is complete; a CRLF record cut after the dot is not", () => {
    expect(scanBuffer(b("a\nb\n.")).messages.length).toBe(1);
    const rec = buildRecord(b("x\r\n"), RCV);
    expect(scanBuffer(Buffer.concat([rec, b("Subject: half\r\n.")])).messages.length).toBe(1);
  });
});

describe("toWire and unstuff", () => {
  test("lfPieceToWire over any cut into pieces gives what toWire gives at once (CR|LF split across pieces, unended last line)", () => {
    const rand = seeded(5);
    const alphabet = ["\r", "\n", ".", "a", "\r\n", "\n.", "y".repeat(30), "\n\n"];
    for (let t = 0; t < 5000; t++) {
      const w = b(Array.from({ length: rand(40) }, () => alphabet[rand(alphabet.length)]).join(""));
      const out: Buffer[] = [];
      let prev = -1;
      for (let at = 0; at < w.length; ) {
        const n = 1 + rand(8);
        const piece = w.subarray(at, at + n);
        at += n;
        out.push(lfPieceToWire(piece, prev, at >= w.length));
        prev = piece[piece.length - 1]!;
      }
      expect(Buffer.concat(out).toString("latin1")).toBe(toWire(w, true).toString("latin1"));
    }
  });

  test("toWire: LF entries get CRLF, stored CRLF records are passed through", () => {
    expect(toWire(b("a\nb\n.\n"), true).toString()).toBe("a\r\nb\r\n.\r\n");
    const rec = b("a\r\n.\r\n");
    expect(toWire(rec, false)).toBe(rec);
  });
  test("toWire agrees with the line-by-line definition on 20,000 random mixes of CR, LF and text", () => {
    const oracle = (w: Buffer): string => {
      let out = "";
      let start = 0;
      for (let i = w.indexOf(10); i >= 0; i = w.indexOf(10, start)) {
        out += w.toString("latin1", start, i > start && w[i - 1] === 13 ? i - 1 : i) + "\r\n";
        start = i + 1;
      }
      return start < w.length ? out + w.toString("latin1", start) + "\r\n" : out;
    };
    const rand = seeded(3);
    const alphabet = ["\r", "\n", ".", "a", "\r\n", "x".repeat(70), "\n\n\n"];
    for (let t = 0; t < 20_000; t++) {
      const w = b(Array.from({ length: rand(t < 10_000 ? 12 : 60) }, () => alphabet[rand(alphabet.length)]).join(""));
      expect(toWire(w, true).toString("latin1")).toBe(oracle(w));
    }
  });
  test("unstuff removes one leading dot per line, including the first", () => {
    expect(unstuff(b("..a\r\n...\r\nb.\r\n.c\r\n")).toString()).toBe(".a\r\n..\r\nb.\r\nc\r\n");
  });
});

describe("UIDs written without strings", () => {
  test("writeNumber writes what Number#toString writes, in bases 10 and 36, up to 2^53 - 1", () => {
    const buf = Buffer.alloc(64);
    // Around int32's end and the two halves' split (1e9 and 36^5 multiples: zero-padded low halves).
    const values = [0, 1, 9, 10, 35, 36, 1295, 1296, 2 ** 31 - 1, 2 ** 31, 2 ** 31 + 1, 2 ** 32, 2 ** 53 - 1, 3e9 + 7, 5e9, 36 ** 5 * 100 + 1, 36 ** 6, 36 ** 10 - 1];
    for (let k = 0; k < 2000; k++) values.push(Math.floor(Math.random() * 2 ** 53), Math.floor(Math.random() * 2 ** 31));
    for (const v of values) {
      for (const radix of [10, 36]) {
        const end = writeNumber(buf, 3, v, radix);
        expect(buf.toString("latin1", 3, end)).toBe(v.toString(radix));
      }
    }
  });

  test("MessageIndex.writeUid writes uid(i), with the counters of repeated messages", () => {
    const index = new MessageIndex();
    const hashes = [0, 2 ** 53 - 1, 123456789, 123456789, 42, 123456789];
    hashes.forEach((h, i) => index.add(i * 10, 10, 8, false, h));
    index.finish();
    const buf = Buffer.alloc(64);
    const uids = hashes.map((_, i) => buf.toString("latin1", 0, index.writeUid(i, buf, 0)));
    expect(uids).toEqual(hashes.map((_, i) => index.uid(i)));
    expect(uids[3]).toBe(`${uids[2]}-2`);
    expect(uids[5]).toBe(`${uids[2]}-3`);
  });

  test("MessageIndex.renumbered: repeated messages keep their numbers over a rewrite; a deleted copy's stays taken for two minutes", () => {
    const make = (hashes: number[], fixed: ReturnType<MessageIndex["renumbered"]> = null) => {
      const x = new MessageIndex();
      hashes.forEach((h, i) => x.add(i * 10, 10, 8, false, h));
      return x.renumber(fixed);
    };
    const uids = (x: MessageIndex) => Array.from({ length: x.count }, (_, i) => x.uid(i));
    const old = make([7, 7, 5, 7]);
    expect(uids(old)).toEqual(["7", "7-2", "5", "7-3"]);
    // Nothing deleted, nothing repeated: nothing to fix.
    expect(make([1, 2]).renumbered(new Set())).toBeNull();
    expect(old.renumbered(new Set())).toBeNull();
    // The first copy deleted; the rewritten file holds the rest, then a copy appended since.
    const fixed = old.renumbered(new Set([0]), 1000);
    const next = make([7, 5, 7, 7], fixed);
    expect(uids(next)).toEqual(["7-2", "5", "7-3", "7-4"]);
    // Growing the index (appends seen at a later login) keeps the numbers.
    expect(uids(next.extend(make([7])))).toEqual(["7-2", "5", "7-3", "7-4", "7-5"]);
    expect(uids(MessageIndex.joined(make([7, 5], fixed), make([7])))).toEqual(["7-2", "5", "7-3"]);
    // Every copy and the single message deleted: their numbers stay taken...
    const none = next.renumbered(new Set([0, 1, 2, 3, 4]), 2000);
    expect(uids(make([7, 5], none))).toEqual(["7-6", "5-2"]);
    expect(make([], none).hasFixed).toBe(true);
    // ...for two minutes, carried over rewrites that do not touch them.
    const later = make([9], none).renumbered(new Set([0]), 2000 + 119_000);
    expect(uids(make([7, 9], later))).toEqual(["7-6", "9-2"]);
    const after = make([9], later).renumbered(new Set(), 2000 + 121_000);
    expect(uids(make([7, 9, 5], after))).toEqual(["7", "9-2", "5"]);
    // An empty index kept only for such numbers counts their memory (popserver's cache budget),
    // and is of no use once they may be given out again.
    const empty = make([], none);
    expect(empty.bytes).toBeGreaterThan(0);
    expect(empty.lapsed(2000 + 119_000)).toBe(false);
    expect(empty.lapsed(2000 + 120_000)).toBe(true);
    expect(make([7], none).lapsed(2000 + 120_000)).toBe(false);
  });

  test("MessageIndex over many blocks: every field kept, grown in place, trimmed, extended and joined", () => {
    // Fields derived from i, each in its own range (offsets past 4 GiB, lengths to 2^32 - 1).
    const entry = (i: number) => ({ offset: i * 5e6 + 7, length: (i * 2654435761) % 2 ** 32, size: i * 3 + 1, lf: i % 3 === 0, hash: i % 1000 === 999 ? 77 : i * 1e9 + 5 });
    const fill = (from: number, to: number) => {
      const index = new MessageIndex();
      for (let i = from; i < to; i++) {
        const e = entry(i);
        index.add(e.offset, e.length, e.size, e.lf, e.hash);
      }
      return index;
    };
    const check = (index: MessageIndex, n: number) => {
      expect(index.count).toBe(n);
      let repeats = 0;
      for (let i = 0; i < n; i++) {
        const e = entry(i);
        expect([index.offset(i), index.length(i), index.size(i), index.lf(i), index.hash(i)]).toEqual([e.offset, e.length, e.size, e.lf, e.hash]);
        // Hash 77 repeats every 1000 messages, across block ends: numbered in file order.
        if (e.hash === 77) expect(index.uid(i)).toBe(++repeats > 1 ? `${(77).toString(36)}-${repeats}` : (77).toString(36));
      }
    };
    const big = fill(0, 10_000).trim().finish();
    check(big, 10_000);
    // Two full blocks and the last one cut to what it holds (10,000 - 8,192 entries), and
    // the occurrence numbers of the repeated hash.
    expect(big.bytes).toBe((2 * 4096 + 1808) * 29 + 10_000 * 4);
    const tail = fill(10_000, 13_000).finish();
    const joined = MessageIndex.joined(big, tail);
    check(joined, 13_000);
    check(big, 10_000); // left as it was: a session may still be using it
    big.extend(tail);
    check(big, 13_000);
    // A small index holds little: its one block grows from 256 entries.
    const small = fill(0, 300).trim().finish();
    check(small, 300);
    expect(small.bytes).toBe(512 * 29);
  });
});
