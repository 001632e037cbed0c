import { describe, expect, test } from "bun:test";
import {
  composeMessage,
  decodeEncodedWords,
  formatDateHeader,
  formatMailList,
  isAddress,
  parseComposedMail,
  parseHeaders,
  receivedWhen,
  sanitizeForTerminal,
  senderAddress,
} from "../lib/mail-format.ts";

describe("parseComposedMail", () => {
  const good = ["From: agupta@10.5.20.22", "To: ng@10.5.21.32", "Subject: This week's lab assignment"];

  test("accepts the assignment's example", () => {
    const body = ["This is the first week after midsem.", "The students are eager to do assignments (ha ha ha!)"];
    expect(parseComposedMail([...good, ...body])).toEqual({
      ok: true,
      from: "agupta@10.5.20.22",
      to: "ng@10.5.21.32",
      subject: "This week's lab assignment",
      body,
    });
  });

  test("the body may be empty", () => {
    expect(parseComposedMail(good)).toMatchObject({ ok: true, body: [] });
  });

  test("one or more spaces (or tabs) after the colon, trailing spaces ignored", () => {
    const r = parseComposedMail(["From:    a@b", "To:\tc@d  ", "Subject:   hello  world  ", "x"]);
    expect(r).toMatchObject({ ok: true, from: "a@b", to: "c@d", subject: "hello  world" });
  });

  test("a header word without the space after its colon is refused, saying so", () => {
    expect(parseComposedMail(["From:alice@x", "To: c@d", "Subject: s"])).toEqual({ ok: false, reason: 'the first line must be From: <user>@<domain>, with one or more spaces after "From:"' });
    expect(parseComposedMail(["From: a@b", "to:c@d", "Subject: s"])).toEqual({ ok: false, reason: 'the second line must be To: <user>@<domain>, with one or more spaces after "To:"' });
    expect(parseComposedMail(["From: a@b", "To: c@d", "Subject:hello"])).toEqual({ ok: false, reason: 'the third line must be Subject: <subject>, with one or more spaces after "Subject:"' });
    // Anything else: the plain reason.
    expect(parseComposedMail(["Hello", "To: c@d", "Subject: s"])).toEqual({ ok: false, reason: "the first line must be From: <user>@<domain>" });
    expect(parseComposedMail(["From : a@b", "To: c@d", "Subject: s"])).toEqual({ ok: false, reason: "the first line must be From: <user>@<domain>" });
  });

  test("an empty subject is allowed", () => {
    expect(parseComposedMail(["From: a@b", "To: c@d", "Subject:"])).toMatchObject({ ok: true, subject: "" });
    expect(parseComposedMail(["From: a@b", "To: c@d", "Subject:   "])).toMatchObject({ ok: true, subject: "" });
  });

  test("body lines keep dots and header-looking text as typed", () => {
    const body = ["..", ".x", "From: not a header", ""];
    expect(parseComposedMail([...good, ...body])).toMatchObject({ ok: true, body });
  });

  test("subject of exactly 50 characters passes, 51 fails", () => {
    expect(parseComposedMail(["From: a@b", "To: c@d", "Subject: " + "s".repeat(50)]).ok).toBe(true);
    expect(parseComposedMail(["From: a@b", "To: c@d", "Subject: " + "s".repeat(51)]).ok).toBe(false);
    // Characters as a reader sees them: e + combining acute is one, as is a flag of two code points.
    expect(parseComposedMail(["From: a@b", "To: c@d", "Subject: " + "e\u0301".repeat(50)]).ok).toBe(true);
    expect(parseComposedMail(["From: a@b", "To: c@d", "Subject: " + "\u{1F1EE}\u{1F1F3}".repeat(50)]).ok).toBe(true);
    expect(parseComposedMail(["From: a@b", "To: c@d", "Subject: " + "\u00e9".repeat(51)]).ok).toBe(false);
  });

  const bad: Array<[string, string[]]> = [
    ["nothing at all", []],
    ["missing From", ["To: c@d", "Subject: x"]],
    ["missing To", ["From: a@b", "Subject: x"]],
    ["missing Subject", ["From: a@b", "To: c@d"]],
    ["Subject missing, body instead", ["From: a@b", "To: c@d", "hello"]],
    ["wrong order", ["To: c@d", "From: a@b", "Subject: x"]],
    ["Subject before To", ["From: a@b", "Subject: x", "To: c@d"]],
    ["no space after colon", ["From:a@b", "To: c@d", "Subject: x"]],
    ["From without @", ["From: ab", "To: c@d", "Subject: x"]],
    ["From with empty user", ["From: @b", "To: c@d", "Subject: x"]],
    ["From with empty domain", ["From: a@", "To: c@d", "Subject: x"]],
    ["To with empty user", ["From: a@b", "To: @d", "Subject: x"]],
    ["To with empty domain", ["From: a@b", "To: c@", "Subject: x"]],
    ["To with two addresses", ["From: a@b", "To: c@d e@f", "Subject: x"]],
    ["address with two @", ["From: a@b@c", "To: c@d", "Subject: x"]],
    ["address in angle brackets", ["From: <a@b>", "To: c@d", "Subject: x"]],
    ["empty From", ["From:", "To: c@d", "Subject: x"]],
    ["a blank line first", ["", "From: a@b", "To: c@d", "Subject: x"]],
    ["misspelt field", ["Frm: a@b", "To: c@d", "Subject: x"]],
  ];
  for (const [name, lines] of bad) {
    test(`rejects: ${name}`, () => {
      expect(parseComposedMail(lines).ok).toBe(false);
    });
  }
});

test("isAddress", () => {
  expect(isAddress("a@b")).toBe(true);
  expect(isAddress("first.last@mail.example.com")).toBe(true);
  for (const s of ["a", "a@", "@b", "a b@c", "a@b c", "a@@b", "a@b>", "a\r@b", ""]) expect(isAddress(s)).toBe(false);
});

test("composeMessage ends every typed line with CRLF", () => {
  expect(composeMessage(["From: a@b", "To: c@d", "Subject: x", "hi"])).toBe("From: a@b\r\nTo: c@d\r\nSubject: x\r\nhi\r\n");
  expect(composeMessage([])).toBe("");
  // An indented first body line is not the Subject folded onto it: an empty line between.
  expect(composeMessage(["From: a@b", "To: c@d", "Subject: x", "  hi", "there"])).toBe("From: a@b\r\nTo: c@d\r\nSubject: x\r\n\r\n  hi\r\nthere\r\n");
  expect(composeMessage(["From: a@b", "To: c@d", "Subject: x", "\thi"])).toBe("From: a@b\r\nTo: c@d\r\nSubject: x\r\n\r\n\thi\r\n");
  expect(composeMessage(["From: a@b", "To: c@d", "Subject: x", "hi ", " there"])).toBe("From: a@b\r\nTo: c@d\r\nSubject: x\r\nhi \r\n there\r\n");
  // A first body line that reads as a header field would become one (helper-58: Python's email saw "Agenda" and "Where" as headers).
  expect(composeMessage(["From: a@b", "To: c@d", "Subject: x", "Agenda: budget", "Where: room 5", "See you."])).toBe(
    "From: a@b\r\nTo: c@d\r\nSubject: x\r\n\r\nAgenda: budget\r\nWhere: room 5\r\nSee you.\r\n",
  );
  expect(composeMessage(["From: a@b", "To: c@d", "Subject: x", "Note : spaced"])).toBe("From: a@b\r\nTo: c@d\r\nSubject: x\r\n\r\nNote : spaced\r\n");
  // Not a field: a space inside the name, or no colon.
  expect(composeMessage(["From: a@b", "To: c@d", "Subject: x", "Dear Bob: hi"])).toBe("From: a@b\r\nTo: c@d\r\nSubject: x\r\nDear Bob: hi\r\n");
  expect(composeMessage(["From: a@b", "To: c@d", "Subject: x", "Hi:)"])).toBe("From: a@b\r\nTo: c@d\r\nSubject: x\r\n\r\nHi:)\r\n");
});

describe("parseHeaders and receivedWhen", () => {
  test("the assignment's stored format (no blank line after the headers)", () => {
    const h = parseHeaders("From: a@b\r\nTo: c@d\r\nSubject: Test mail\r\nReceived: 2026-12-01 : 04 : 27\r\nHello\r\nDate: not a header\r\n");
    expect(h).toEqual({ from: "a@b", to: "c@d", subject: "Test mail", date: "", received: "2026-12-01 : 04 : 27" });
    expect(receivedWhen(h)).toBe("2026-12-01 : 04 : 27");
  });

  test("RFC 5322 Received headers are skipped in favour of the assignment's line", () => {
    const h = parseHeaders(
      "Received: from x by y; Tue, 1 Dec 2026 04:27:00 +0000\r\nFrom: a@b\r\nTo: c@d\r\nSubject: s\r\nReceived: 2026-12-02 : 9 : 5\r\nDate: Tue, 1 Dec 2026 01:00:00 +0000\r\n\r\nbody\r\n",
    );
    expect(receivedWhen(h)).toBe("2026-12-02 : 09 : 05");
  });

  test("falls back to the Date header, then to blank", () => {
    const h = parseHeaders(
      "Received: from x by y; Tue, 1 Dec 2026 04:27:00 +0000\r\nFrom: Al <al@x.org>\r\nSubject: folded\r\n  subject\r\nDate: Tue, 1 Dec 2026 05:07:33 +0530\r\n\r\nbody\r\n",
    );
    expect(h.subject).toBe("folded subject");
    expect(receivedWhen(h)).toBe("2026-12-01 : 05 : 07");
    expect(receivedWhen(parseHeaders("From: a@b\r\nSubject: x\r\n\r\n"))).toBe("");
  });

  test("header names are case-insensitive and the first occurrence wins", () => {
    const h = parseHeaders("FROM: a@b\nsubject: one\nSubject: two\n");
    expect(h.from).toBe("a@b");
    expect(h.subject).toBe("one");
  });

  test("whitespace before a header's colon (obsolete syntax) still names the header", () => {
    const h = parseHeaders("Subject : spaced\r\nFrom\t: a@b\r\n\r\nbody: x\r\n");
    expect(h.subject).toBe("spaced");
    expect(h.from).toBe("a@b");
  });

  test("an empty message has empty headers", () => {
    expect(parseHeaders("")).toEqual({ from: "", to: "", subject: "", date: "", received: "" });
  });
});

test("formatDateHeader", () => {
  expect(formatDateHeader("Mon, 7 Jan 2030 23:59:59 -0800")).toBe("2030-01-07 : 23 : 59");
  expect(formatDateHeader("7 Jan 99 3:04 GMT")).toBe("1999-01-07 : 03 : 04");
  expect(formatDateHeader("garbage")).toBe("");
});

test("senderAddress takes the address out of a display name", () => {
  expect(senderAddress("Al Gore <al@x.org>")).toBe("al@x.org");
  expect(senderAddress(" al@x.org ")).toBe("al@x.org");
  // A "<...>" in a quoted display name or a comment is not the sender (helper-85: shown as the bank's).
  expect(senderAddress('"Security <security@bank.example>" <eve@evil.example>')).toBe("eve@evil.example");
  expect(senderAddress("x@y.example (Mr <X>)")).toBe("x@y.example");
  expect(senderAddress("(c <a@b>) Al (nested (<c@d>) comment) <al@x.org> (after)")).toBe("al@x.org");
  expect(senderAddress('"Al \\" <q@q>" <al@x.org>')).toBe("al@x.org");
  expect(senderAddress('<"a>b"@x.org>')).toBe('"a>b"@x.org');
  expect(senderAddress('"john smith"@x.org')).toBe('"john smith"@x.org');
  // The first of several mailboxes.
  expect(senderAddress("Al <al@x.org>, Bo <bo@y.org>")).toBe("al@x.org");
  expect(senderAddress("al@x.org, bo@y.org")).toBe("al@x.org");
  // Not well formed: the first "<...>", else the text.
  expect(senderAddress('"Al <al@x.org>')).toBe("al@x.org");
  expect(senderAddress("(unclosed al@x.org")).toBe("(unclosed al@x.org");
  // A million unclosed "<" (a hostile From): one pass, where one scan per "<" never ended (helper-86).
  expect(senderAddress("<".repeat(1_000_000) + " al@x.org")).toStartWith("<<<");
  expect(senderAddress('<"'.repeat(500_000))).toStartWith("<");
});

test("sanitizeForTerminal neutralises escape sequences but keeps text, tabs and newlines", () => {
  expect(sanitizeForTerminal("a\x1b[31mb\tc\r\nd\x07")).toBe("a^[[31mb\tc\nd^G");
  expect(sanitizeForTerminal("héllo ✓")).toBe("héllo ✓");
});

describe("formatMailList", () => {
  test("a heading and aligned columns", () => {
    const lines = formatMailList([
      { no: 1, from: "a@b", when: "2026-12-01 : 04 : 27", subject: "Test" },
      { no: 12, from: "someone.longer@example.org", when: "", subject: "Second" },
    ]);
    expect(lines).toEqual([
      "Sl. No.  Sender                      Received              Subject",
      "      1  a@b                         2026-12-01 : 04 : 27  Test",
      "     12  someone.longer@example.org                        Second",
    ]);
  });

  test("long fields are cut and control characters neutralised", () => {
    const [, row] = formatMailList([{ no: 1, from: "x".repeat(300) + "@y", when: "w", subject: "\x1b[2J" + "s".repeat(100) }]);
    expect(row).toContain("x".repeat(251) + "...");
    expect(row).not.toContain("\x1b");
    expect(row!.length).toBeLessThan(350);
  });

  test("a line break or tab in a (decoded) subject cannot draw another row", () => {
    const subject = decodeEncodedWords("=?utf-8?Q?hi=0A2__boss@bank.com__2024-01-01_:_10_:_00=09URGENT=E2=80=A8x?=");
    const rows = formatMailList([{ no: 1, from: "a@b", when: "w", subject }]);
    expect(rows.length).toBe(2);
    expect(rows[1]).toBe("      1  a@b     w         hi 2  boss@bank.com  2024-01-01 : 10 : 00 URGENT x");
  });

  test("a mail without From or Subject says so instead of a blank", () => {
    const [, row] = formatMailList([{ no: 3, from: "", when: "2026-12-01 : 04 : 27", subject: "" }]);
    expect(row).toBe("      3  (no sender)  2026-12-01 : 04 : 27  (no subject)");
  });

  test("an empty list is just the heading", () => {
    expect(formatMailList([])).toEqual(["Sl. No.  Sender  Received  Subject"]);
  });

  test("columns are aligned on screen columns: wide (CJK, emoji) and combining characters", () => {
    const when = "2026-12-01 : 04 : 27";
    const lines = formatMailList([
      { no: 1, from: "日本語@例え.jp", when, subject: "a" },
      { no: 2, from: "e\u0301e\u0301@x", when, subject: "b" },
      { no: 3, from: "👍@x", when, subject: "c" },
    ]);
    const at = lines.slice(1).map((l) => Bun.stringWidth(l.slice(0, l.indexOf(when))));
    expect(new Set(at).size).toBe(1);
  });

  test("bidirectional overrides and isolates are neutralised: they could reorder the rest of a row", () => {
    const [, row] = formatMailList([{ no: 1, from: "a\u202eb@x", when: "w", subject: "s\u2066t\u2069" }]);
    expect(row).not.toMatch(/[\u202a-\u202e\u2066-\u2069]/);
    expect(row).toContain("a?b@x");
  });

  test("a long subject is cut between graphemes, by screen columns", () => {
    const family = "👨‍👩‍👧";
    const [heading, row] = formatMailList([{ no: 1, from: "a@b", when: "w", subject: family.repeat(50) }]);
    const subject = row!.slice(heading!.indexOf("Subject"));
    expect(subject).toEndWith("...");
    expect(subject.slice(0, -3).split(family).join("")).toBe("");
    expect(Bun.stringWidth(subject)).toBeLessThanOrEqual(60);
    const [, accented] = formatMailList([{ no: 1, from: "a@b", when: "w", subject: "e\u0301".repeat(100) }]);
    expect(accented!.slice(heading!.indexOf("Subject"))).toBe("e\u0301".repeat(57) + "...");
  });

  test("with a terminal width, no line reaches the last column and the subject takes the room left", () => {
    const rows = [
      { no: 1, from: "someone.with.a.long.name@example.org", when: "2026-12-01 : 04 : 27", subject: "s".repeat(150) },
      { no: 10, from: "b@c", when: "2026-12-01 : 04 : 28", subject: "短い件名です。".repeat(20) },
    ];
    for (const columns of [60, 64, 80, 132, 200]) {
      const lines = formatMailList(rows, columns);
      for (const l of lines) expect(Bun.stringWidth(l)).toBeLessThan(columns);
      // The room is used: a wide terminal shows more of the subject than a pipe's 60 columns.
      // All of it: the line ends one column short of the edge (helper-61: two were left unused).
      if (columns >= 132) expect(Bun.stringWidth(lines[1]!)).toBe(columns - 1);
    }
    expect(formatMailList(rows, 200)[1]).toContain("s".repeat(100));
    expect(formatMailList(rows)[1]).not.toContain("s".repeat(61));
    // A terminal that does not know its size (0): as a pipe.
    expect(formatMailList(rows, 0)).toEqual(formatMailList(rows));
    // The sender is whole wherever it fits: in a pipe, and beside the subject in a wide terminal.
    const long = [{ no: 1, from: "firstname.middlename.lastname@cse.department.example.edu", when: "2026-12-01 : 04 : 27", subject: "Weekly report" }];
    for (const columns of [undefined, 120, 200]) expect(formatMailList(long, columns)[1]).toContain(`${long[0]!.from}  2026-12-01`);
    // Not in an 80-column one beside a long subject, which keeps its least room (12 columns).
    const cut = formatMailList([{ ...long[0]!, subject: "s".repeat(60) }], 80)[1]!;
    expect(cut).toContain("firstname.middlename.lastname@c...  2026");
    expect(cut).toEndWith("  sssssssss...");
    // The client's longest subject (50) beside a short sender fits 100 columns whole.
    const fifty = [{ no: 1, from: "alice@iitkgp.edu", when: "2026-12-01 : 04 : 27", subject: "x".repeat(50) }];
    expect(formatMailList(fifty, 100)[1]).toEndWith("  " + "x".repeat(50));
    // Narrower than the fixed columns need: the subject keeps its least room, and the line wraps.
    expect(formatMailList(rows, 30)[1]).toContain("s".repeat(9) + "...");
  });
});

describe("decodeEncodedWords (RFC 2047)", () => {
  test("B and Q words in any charset the runtime knows; the space between two words goes, others stay", () => {
    expect(decodeEncodedWords("=?utf-8?B?w6lsw6h2ZQ==?=")).toBe("élève");
    expect(decodeEncodedWords("=?ISO-8859-1?Q?Andr=E9_Pirard?=")).toBe("André Pirard");
    expect(decodeEncodedWords("a =?utf-8?q?x?= =?utf-8?q?y?=\t=?utf-8?q?z?= b")).toBe("a xyz b");
    expect(decodeEncodedWords("Re: =?koi8-r?B?8NLJ18XU?=!")).toBe("Re: Привет!");
    expect(decodeEncodedWords("=?UTF-8*en?Q?hi?=")).toBe("hi");
  });
  test("text without words, unknown charsets and malformed words stay as they are", () => {
    for (const t of ["plain", "=?bogus-charset?B?eA==?=", "=?utf-8?B?not base64!?=", "=?utf-8?X?x?=", "a =? b ?= c"]) expect(decodeEncodedWords(t)).toBe(t);
  });
});
