import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync, renameSync, unlinkSync, utimesSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isSafeUserName, MAX_PASSWORD, parseUserTable, UserFileError, Users } from "../lib/users.ts";
import { MAX_POP_LINE } from "../lib/pop3-server.ts";
import { decodeUtf8 } from "../lib/lines.ts";

const dir = mkdtempSync(join(tmpdir(), "users-test-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
function file(text: string | Buffer): string {
  const p = join(dir, `user${++n}.txt`);
  writeFileSync(p, text);
  return p;
}

describe("passwords that are not UTF-8", () => {
  test("never match, whatever bytes are sent; the line is reported and the user still exists", async () => {
    const p = join(dir, `user${++n}.txt`);
    writeFileSync(p, Buffer.concat([Buffer.from("alice caf"), Buffer.from([0xe9]), Buffer.from("\nbob b\n")]));
    const warnings: string[] = [];
    const u = new Users(p, (w) => warnings.push(w));
    u.load();
    expect(warnings.join("\n")).toContain('password of "alice" is not valid UTF-8');
    expect(u.resolve("alice")).toBe("alice");
    // What a POP3 PASS line with another invalid byte (or the same one) decodes to, as LineReader decodes it.
    for (const bytes of [[0xe9], [0xff], [0xc3]]) expect(await u.check("alice", decodeUtf8(Buffer.concat([Buffer.from("caf"), Buffer.from(bytes)])))).toBe(null);
    expect(await u.check("alice", "café")).toBe(null);
    expect(await u.check("alice", "caf\uFFFD")).toBe(null);
    expect(await u.check("bob", "b")).toBe("bob");
    // A password that really holds U+FFFD (valid UTF-8) works, and only sent as those bytes;
    // a bad line elsewhere in the file does not taint it.
    const v = new Users(file(Buffer.concat([Buffer.from("carol x\uFFFDy\ndave d"), Buffer.from([0xff]), Buffer.from("\n")])));
    v.load();
    expect(await v.check("carol", decodeUtf8(Buffer.from("x\uFFFDy")))).toBe("carol");
    expect(await v.check("carol", decodeUtf8(Buffer.from([0x78, 0x80, 0x79])))).toBe(null);
    expect(await v.check("dave", decodeUtf8(Buffer.from([0x64, 0xff])))).toBe(null);
    expect(await v.check("dave", "d\uFFFD")).toBe(null);
  });
});

describe("parseUserTable", () => {
  test("spaces and tabs, blank lines, comments, CRLF", () => {
    const t = parseUserTable("alice  pw1\r\n\n\tbob\t \tpw2\n# comment\n   \ncarol pw3");
    expect(t.names).toEqual(["alice", "bob", "carol"]);
    expect(t.passwords.get("bob")).toBe("pw2");
    expect(t.problems).toEqual([]);
  });

  test("malformed lines are reported with their line number and skipped", () => {
    const t = parseUserTable("alice pw\njustone\nbad/name pw\nalice again\nx y z\n../up pw\nbob pw\n", "u.txt");
    expect(t.names).toEqual(["alice", "bob"]);
    expect(t.problems.length).toBe(5);
    expect(t.problems[0]).toContain("u.txt line 2");
    expect(t.problems[1]).toContain("line 3");
    expect(t.problems[2]).toContain("line 4");
    expect(t.problems[3]).toContain("line 5");
    expect(t.problems[4]).toContain("line 6");
  });

  test("names and passwords that can never work are reported: a user called user.txt is skipped; a password too long for a PASS line, or with a NUL, is kept with a warning (helper-94)", () => {
    expect(MAX_PASSWORD).toBe(MAX_POP_LINE - "PASS \r\n".length);
    const t = parseUserTable(`user.txt pw\nann ${"p".repeat(505)}\nbob ${"q".repeat(506)}\ncid a\0b\n`);
    expect(t.names).toEqual(["ann", "bob", "cid"]);
    expect(t.problems).toEqual([
      'user.txt line 1: user name "user.txt" is the user list\'s own file, skipped',
      'user.txt line 3: the password of "bob" is longer than a PASS line carries (505 bytes): that user can log in with AUTH only, not with USER/PASS (mailclient)',
      'user.txt line 4: the password of "cid" holds a NUL byte: AUTH PLAIN cannot carry it (USER/PASS and AUTH LOGIN can)',
    ]);
  });

  test("isSafeUserName rejects path-like and control names", () => {
    for (const bad of ["", ".", "..", "../x", "a/b", "/", "a\x00b", ".hidden", "a b", "x".repeat(65)]) expect(isSafeUserName(bad)).toBe(false);
    for (const good of ["alice", "a.b", "a_b-c+d", "A1", "x".repeat(64)]) expect(isSafeUserName(good)).toBe(true);
  });
});

describe("Users", () => {
  test("missing file and a file without valid lines are one-line UserFileErrors", () => {
    expect(() => new Users(join(dir, "nope.txt")).load()).toThrow(UserFileError);
    expect(() => new Users(file("\n# only comments\njunk\n")).load()).toThrow(/no valid/);
  });

  test("resolve: exact, unique case-insensitive, postmaster, unknown", () => {
    const u = new Users(file("alice a\nBob b\nCarol c\ncarol c2\n"));
    u.load();
    expect(u.resolve("alice")).toBe("alice");
    expect(u.resolve("ALICE")).toBe("alice");
    expect(u.resolve("bob")).toBe("Bob");
    expect(u.resolve("carol")).toBe("carol");
    expect(u.resolve("CAROL")).toBeNull(); // ambiguous
    expect(u.resolve("postmaster")).toBe("alice");
    expect(u.resolve("POSTMASTER")).toBe("alice");
    for (const bad of ["nobody", "../alice", "alice/", "", "alice\x00"]) expect(u.resolve(bad)).toBeNull();
  });

  test("account (POP3 USER) follows edits; the case-insensitive map is rebuilt with the file", () => {
    const p = file("alice a\nBob b\n");
    const u = new Users(p);
    u.load();
    expect(["alice", "Bob", "bob", "ALICE", "carol"].map((n) => u.account(n))).toEqual(["alice", "Bob", "Bob", "alice", null]);
    writeFileSync(p, "alice a\nBob b\nbob b2\nCarol c\n");
    expect(u.account("bob")).toBe("bob");
    expect(u.account("BOB")).toBeNull();
    expect(u.resolve("BOB")).toBeNull(); // now ambiguous
    expect(u.resolve("carol")).toBe("Carol");
  });

  test("summary lists a short user list whole and a long one as its first names and a count", () => {
    const u = new Users(file("alice a\nbob b\n"));
    u.load();
    expect(u.summary()).toBe("alice bob");
    const many = new Users(file(Array.from({ length: 25 }, (_, i) => `u${i} p`).join("\n")));
    many.load();
    expect(many.summary(3)).toBe("u0 u1 u2 ... (25 in all)");
  });

  test("postmaster goes to the chosen user, or the first when that user is not listed", () => {
    const p = file("alice a\nbob b\n");
    const u = new Users(p, () => {}, "bob");
    u.load();
    expect(u.resolve("Postmaster")).toBe("bob");
    const warnings: string[] = [];
    const v = new Users(p, (w) => warnings.push(w), "zed");
    v.load();
    expect(v.resolve("postmaster")).toBe("alice");
    expect(warnings.join()).toContain("zed");
  });

  test("check: right and wrong passwords, unknown users, hashed passwords", async () => {
    const hash = await Bun.password.hash("s3cret", { algorithm: "bcrypt", cost: 4 });
    const u = new Users(file(`alice pw\nbob ${hash}\n`));
    u.load();
    expect(await u.check("alice", "pw")).toBe("alice");
    expect(await u.check("alice", "pw ")).toBeNull();
    expect(await u.check("alice", "")).toBeNull();
    expect(await u.check("nobody", "pw")).toBeNull();
    expect(await u.check("bob", "s3cret")).toBe("bob");
    expect(await u.check("bob", hash)).toBeNull();
  });

  test("a login name finds its user as RCPT TO does: exact, else a unique case-insensitive match; the password stays exact", async () => {
    const u = new Users(file("alice pw\nBob pb\nCarol c\ncarol c2\n"));
    u.load();
    expect(await u.check("ALICE", "pw")).toBe("alice");
    expect(await u.check("ALICE", "PW")).toBeNull();
    expect(await u.check("bob", "pb")).toBe("Bob");
    expect(await u.check("carol", "c2")).toBe("carol");
    expect(await u.check("Carol", "c")).toBe("Carol");
    expect(await u.check("CAROL", "c")).toBeNull(); // two users match: neither
    expect(u.account("BOB")).toBe("Bob");
    expect(u.account("CAROL")).toBeNull();
    expect(u.account("postmaster")).toBeNull(); // an address alias, not a login
    // Only ASCII is folded: the Kelvin sign lower-cases to "k".
    const k = new Users(file("kate pk\n"));
    k.load();
    expect([k.account("KATE"), k.account("\u212Aate")]).toEqual(["kate", null]);
    expect(await k.check("\u212Aate", "pk")).toBeNull();
  });

  test("every refusal costs a hash check when the file has hashes (unknown name, wrong plain-text password), so timing tells nothing", async () => {
    const hash = await Bun.password.hash("s3cret", { algorithm: "bcrypt", cost: 4 });
    const u = new Users(file(`alice pw\nbob ${hash}\n`));
    u.load();
    const verify = Bun.password.verify;
    let calls = 0;
    Bun.password.verify = (...a: Parameters<typeof verify>) => (calls++, verify(...a));
    try {
      expect(await u.check("nobody", "s3cret")).toBeNull();
      expect(calls).toBe(1);
      expect(await u.check("alice", "wrong")).toBeNull();
      expect(calls).toBe(2);
      expect(await u.check("alice", "pw")).toBe("alice"); // a right password: no extra work
      expect(calls).toBe(2);
    } finally {
      Bun.password.verify = verify;
    }
  });

  test("a name dropped by the last reload is recentlyRemoved (450, not 550) for a moment; others are not", async () => {
    const f = file("alice a\nbob b\n");
    const u = new Users(f);
    u.load();
    expect(u.recentlyRemoved("bob")).toBe(false);
    writeFileSync(f, "alice a\n"); // as a half-written rewrite would look
    utimesSync(f, new Date(), new Date(Date.now() + 5000));
    expect(u.resolve("bob")).toBeNull();
    expect(u.recentlyRemoved("bob")).toBe(true);
    expect(u.recentlyRemoved("BOB")).toBe(true); // as RCPT TO:<BOB@x> would have found bob
    expect(u.recentlyRemoved("carol")).toBe(false);
    writeFileSync(f, "alice a\nbob b\n");
    utimesSync(f, new Date(), new Date(Date.now() + 10000));
    expect(u.resolve("bob")).toBe("bob");
    expect(u.recentlyRemoved("bob")).toBe(false);
  });

  test("a file written in several pieces: a name still missing from the second read stays recentlyRemoved (helper-26: it got 550)", async () => {
    const f = file("alice a\nbob b\ncarol c\n");
    const u = new Users(f);
    u.load();
    let t = Date.now();
    for (const text of ["alice a\n", "alice a\nbob b\n"]) {
      writeFileSync(f, text);
      utimesSync(f, new Date(), new Date((t += 5000)));
      expect(u.resolve("carol")).toBeNull();
      expect(u.recentlyRemoved("carol")).toBe(true);
    }
    expect(u.recentlyRemoved("bob")).toBe(false); // back again
    writeFileSync(f, "alice a\nbob b\ncarol c\n");
    utimesSync(f, new Date(), new Date((t += 5000)));
    expect(u.resolve("carol")).toBe("carol");
    expect(u.recentlyRemoved("carol")).toBe(false);
  });

  test("a last line without its newline (maybe still being written) is not taken for a second; then it is", async () => {
    const f = file("alice a\nbob oldpass\n");
    const u = new Users(f);
    u.load();
    // Read mid-write: "bob newpassword" cut short.
    writeFileSync(f, "alice a\nbob newp");
    expect(await u.check("bob", "newp")).toBeNull();
    expect(await u.check("bob", "oldpass")).toBe("bob");
    // The writer finishes the line: taken at once.
    writeFileSync(f, "alice a\nbob newpassword\n");
    expect(await u.check("bob", "newpassword")).toBe("bob");
    // A file that never gets its last newline (printf, some editors) is taken after a second.
    writeFileSync(f, "alice a\nbob newpassword\ncarol c");
    expect(u.resolve("carol")).toBeNull();
    await Bun.sleep(1100);
    expect(u.resolve("carol")).toBe("carol");
    expect(await u.check("carol", "c")).toBe("carol");
    // At start there is nothing older to keep: an unterminated file is read as it is.
    const fresh = new Users(file("dave d"));
    fresh.load();
    expect(fresh.resolve("dave")).toBe("dave");
  });

  test("edits take effect without a restart; a broken file keeps the last good list", async () => {
    const p = file("alice a\n");
    const warnings: string[] = [];
    const u = new Users(p, (w) => warnings.push(w));
    u.load();
    expect(u.resolve("bob")).toBeNull();
    writeFileSync(p, "alice a\nbob b\n");
    expect(u.resolve("bob")).toBe("bob");
    // replaced through rename (a new inode), same size
    const tmp = p + ".new";
    writeFileSync(tmp, "alice a\ncarl b\n");
    renameSync(tmp, p);
    expect(u.resolve("carl")).toBe("carl");
    expect(u.resolve("bob")).toBeNull();
    unlinkSync(p);
    expect(u.resolve("carl")).toBe("carl");
    expect(warnings.join("\n")).toContain("keeping the previous user list");
    writeFileSync(p, "dave d\n");
    expect(u.resolve("dave")).toBe("dave");
    expect(u.names).toEqual(["dave"]);
    // A FIFO in its place is not read (reading it blocked the whole server): the last good list stays.
    unlinkSync(p);
    expect(Bun.spawnSync(["mkfifo", p]).exitCode).toBe(0);
    expect(u.resolve("dave")).toBe("dave");
    expect(warnings.join("\n")).toContain("not a regular file");
  });
});
