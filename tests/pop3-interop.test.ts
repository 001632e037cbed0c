// Interop: real third-party clients against the real servers. Python's poplib and smtplib
// (python3 -c subprocesses), curl's pop3:// support and fetchmail.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { buildRecord } from "../lib/mailbox.ts";
import { mailboxPath } from "../lib/paths.ts";
import { makeRoot, removeRoot, startPop, startSmtp, type Running } from "./helpers/servers.ts";

const PYTHON = Bun.which("python3");
const CURL = Bun.which("curl");
const noPython = !PYTHON;
const noCurl = !CURL;
if (noPython) console.warn("pop3-interop: python3 not found on PATH, skipping the poplib/smtplib tests");
if (noCurl) console.warn("pop3-interop: curl not found on PATH, skipping the curl pop3:// tests");

// Longer than a 512-octet command line once base64-encoded: a SASL response may be (RFC 4954: 12288).
const LONG_PASSWORD = "long-".repeat(80);
let root: string;
let pop: Running;
let smtp: Running;
beforeAll(async () => {
  root = makeRoot({ alice: "alicepw", bob: "bobpw", carol: "carolpw", dave: "davepw", erin: "erin-pw-XYZZY", frank: LONG_PASSWORD });
  [pop, smtp] = await Promise.all([startPop(root), startSmtp(root)]);
});
afterAll(async () => {
  for (const r of [pop, smtp]) if (r) r.proc.kill(9);
  await Promise.all([pop, smtp].filter(Boolean).map((r) => r.proc.exited));
  removeRoot(root);
});

const RECEIVED = "Received: 2024-05-06 : 07 : 08";
function rec(n: number, body: string[] = [`body ${n}`]): Buffer {
  return buildRecord(Buffer.from([`From: x@y`, `To: u@z`, `Subject: msg ${n}`, "", ...body].map((l) => (l.startsWith(".") ? "." + l : l) + "\r\n").join("")), RECEIVED);
}
function plainLines(n: number, body: string[] = [`body ${n}`]): string[] {
  return [`From: x@y`, `To: u@z`, `Subject: msg ${n}`, RECEIVED, "", ...body];
}

async function run(argv: string[], stdin?: string): Promise<{ code: number; out: string; err: string }> {
  const proc = Bun.spawn(argv, { stdout: "pipe", stderr: "pipe", stdin: stdin === undefined ? "ignore" : new Blob([stdin]) });
  const timer = setTimeout(() => proc.kill(9), 30_000);
  const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  clearTimeout(timer);
  return { code, out, err };
}

/** Runs a python snippet with PORT/SMTP_PORT/USER/PASS bound; it prints one JSON document. */
async function py(code: string, env: Record<string, string | number>): Promise<any> {
  const prelude = "import json, sys, poplib, smtplib\n" + Object.entries(env).map(([k, v]) => `${k} = ${JSON.stringify(v)}\n`).join("");
  const r = await run([PYTHON!, "-c", prelude + code]);
  if (r.code !== 0) throw new Error(`python failed (${r.code}): ${r.err}`);
  return JSON.parse(r.out);
}

const dec = "def d(b):\n    return b.decode('utf-8') if isinstance(b, bytes) else b\n";

describe("Python poplib", () => {
  test.skipIf(noPython)("user, pass_, stat, list, uidl, retr, top, capa, dele, rset, quit", async () => {
    writeFileSync(mailboxPath(root, "alice"), Buffer.concat([rec(1), rec(2, [".", "..", ".x", "ünï"]), rec(3)]));
    const res = await py(
      dec +
        `
p = poplib.POP3("127.0.0.1", PORT, timeout=20)
out = {"welcome": d(p.getwelcome())}
out["user"] = d(p.user(USER))
out["pass"] = d(p.pass_(PASS))
out["stat"] = list(p.stat())
resp, lines, octets = p.list()
out["list"] = [d(resp), [d(l) for l in lines]]
out["list2"] = d(p.list(2))
resp, lines, octets = p.uidl()
out["uidl"] = [d(l) for l in lines]
out["uidl1"] = d(p.uidl(1))
resp, lines, octets = p.retr(2)
out["retr2"] = [d(resp), [d(l) for l in lines], octets]
resp, lines, octets = p.top(1, 0)
out["top"] = [d(l) for l in lines]
out["capa"] = {d(k): [d(x) for x in v] for k, v in p.capa().items()}
out["dele"] = d(p.dele(1))
try:
    p.retr(1)
    out["retr_deleted"] = "no error"
except poplib.error_proto as e:
    out["retr_deleted"] = d(e.args[0])
out["stat_after_dele"] = list(p.stat())
out["rset"] = d(p.rset())
out["stat_after_rset"] = list(p.stat())
out["dele3"] = d(p.dele(3))
out["quit"] = d(p.quit())
print(json.dumps(out))
`,
      { PORT: pop.port, USER: "alice", PASS: "alicepw" },
    );
    const sizes = [plainLines(1), plainLines(2, [".", "..", ".x", "ünï"]), plainLines(3)].map((ls) => Buffer.byteLength(ls.map((l) => l + "\r\n").join("")));
    const total = sizes.reduce((a, b) => a + b, 0);
    expect(res.welcome).toBe("+OK POP3 server ready");
    expect(res.user).toStartWith("+OK");
    expect(res.pass).toStartWith("+OK");
    expect(res.stat).toEqual([3, total]);
    expect(res.list[1]).toEqual(sizes.map((s, i) => `${i + 1} ${s}`));
    expect(res.list2).toBe(`+OK 2 ${sizes[1]}`);
    expect(res.uidl.length).toBe(3);
    expect(res.uidl1).toBe(`+OK ${res.uidl[0]}`);
    expect(res.retr2[1]).toEqual(plainLines(2, [".", "..", ".x", "ünï"]));
    expect(res.top).toEqual(plainLines(1).slice(0, 5));
    for (const c of ["TOP", "UIDL", "USER", "PIPELINING", "RESP-CODES", "IMPLEMENTATION"]) expect(Object.keys(res.capa)).toContain(c);
    expect(res.dele).toStartWith("+OK");
    expect(res.retr_deleted).toStartWith("-ERR");
    expect(res.stat_after_dele).toEqual([2, total - sizes[0]!]);
    expect(res.rset).toStartWith("+OK");
    expect(res.stat_after_rset).toEqual([3, total]);
    expect(res.quit).toStartWith("+OK");
    expect(readFileSync(mailboxPath(root, "alice")).equals(Buffer.concat([rec(1), rec(2, [".", "..", ".x", "ünï"])]))).toBe(true);
  });

  test.skipIf(noPython)("wrong password raises error_proto, then a retry on the same connection works", async () => {
    writeFileSync(mailboxPath(root, "bob"), rec(1));
    const res = await py(
      dec +
        `
out = {}
p = poplib.POP3("127.0.0.1", PORT, timeout=20)
p.user(USER)
try:
    p.pass_("wrong")
    out["bad"] = "accepted"
except poplib.error_proto as e:
    out["bad"] = d(e.args[0])
p.user(USER)
out["good"] = d(p.pass_(PASS))
out["stat"] = list(p.stat())
p.quit()
print(json.dumps(out))
`,
      { PORT: pop.port, USER: "bob", PASS: "bobpw" },
    );
    expect(res.bad).toStartWith("-ERR");
    expect(res.good).toStartWith("+OK");
    expect(res.stat[0]).toBe(1);
  });

  test.skipIf(noPython)("mail sent with smtplib reads back with poplib byte for byte", async () => {
    writeFileSync(mailboxPath(root, "carol"), "");
    const res = await py(
      `
import base64
msgs = [
    b"From: bob@example.com\\r\\nTo: carol@example.com\\r\\nSubject: dots and more\\r\\n\\r\\n.\\r\\n..\\r\\n.x\\r\\n\\r\\nlast\\r\\n",
    "From: bob@example.com\\r\\nTo: carol@example.com\\r\\nSubject: =?utf-8?q?caf=C3=A9?=\\r\\nMIME-Version: 1.0\\r\\nContent-Type: text/plain; charset=utf-8\\r\\nContent-Transfer-Encoding: 8bit\\r\\n\\r\\nh\\u00e9llo \\u2713 \\u65e5\\u672c\\r\\n".encode("utf-8"),
    b"From: bob@example.com\\r\\nTo: carol@example.com\\r\\nSubject: empty\\r\\n\\r\\n",
]
s = smtplib.SMTP("127.0.0.1", SMTP_PORT, timeout=20)
s.helo("tester")
for m in msgs:
    s.sendmail("bob@example.com", ["carol@example.com"], m)
s.quit()
p = poplib.POP3("127.0.0.1", PORT, timeout=20)
p.user(USER)
p.pass_(PASS)
got = []
for i in range(len(msgs)):
    resp, lines, octets = p.retr(i + 1)
    size = int(p.list(i + 1).split()[2])
    got.append({"raw": base64.b64encode(b"".join(l + b"\\r\\n" for l in lines)).decode(), "size": size})
p.quit()
print(json.dumps({"sent": [base64.b64encode(m).decode() for m in msgs], "got": got}))
`,
      { PORT: pop.port, SMTP_PORT: smtp.port, USER: "carol", PASS: "carolpw" },
    );
    expect(res.got.length).toBe(3);
    for (let i = 0; i < 3; i++) {
      const sent = Buffer.from(res.sent[i], "base64").toString("utf8");
      const got = Buffer.from(res.got[i].raw, "base64");
      expect(got.length).toBe(res.got[i].size);
      const lines = got.toString("utf8").split("\r\n");
      const at = lines.findIndex((l) => l.startsWith("Received: "));
      expect(lines[at - 1]).toStartWith("Subject: ");
      expect(lines[at]).toMatch(/^Received: \d{4}-\d\d-\d\d : \d\d : \d\d$/);
      lines.splice(at, 1);
      expect(lines.join("\r\n")).toBe(sent);
    }
  });
});

describe("curl pop3://", () => {
  test.skipIf(noCurl)("RETR by URL, LIST and UIDL with -X", async () => {
    writeFileSync(mailboxPath(root, "dave"), Buffer.concat([rec(1, ["hello", ".dot line", ".."]), rec(2)]));
    const url = `pop3://dave:davepw@127.0.0.1:${pop.port}`;
    const retr = await run([CURL!, "-sS", "--max-time", "20", `${url}/1`]);
    expect(retr.err).toBe("");
    expect(retr.code).toBe(0);
    expect(retr.out).toBe(plainLines(1, ["hello", ".dot line", ".."]).map((l) => l + "\r\n").join(""));
    const list = await run([CURL!, "-sS", "--max-time", "20", `${url}/`]);
    expect(list.code).toBe(0);
    const sizes = [plainLines(1, ["hello", ".dot line", ".."]), plainLines(2)].map((ls) => Buffer.byteLength(ls.map((l) => l + "\r\n").join("")));
    expect(list.out).toBe(`1 ${sizes[0]}\r\n2 ${sizes[1]}\r\n`);
    const uidl = await run([CURL!, "-sS", "--max-time", "20", "-X", "UIDL", `${url}/`]);
    expect(uidl.code).toBe(0);
    const rows = uidl.out.trimEnd().split("\r\n");
    expect(rows.map((r) => r.split(" ")[0])).toEqual(["1", "2"]);
    expect(new Set(rows.map((r) => r.split(" ")[1])).size).toBe(2);
    const bad = await run([CURL!, "-sS", "--max-time", "20", `pop3://dave:wrong@127.0.0.1:${pop.port}/1`]);
    expect(bad.code).not.toBe(0);
    // Nothing was deleted by any of it.
    expect(readFileSync(mailboxPath(root, "dave")).equals(Buffer.concat([rec(1, ["hello", ".dot line", ".."]), rec(2)]))).toBe(true);
  });

  test.skipIf(noCurl)("SASL: AUTH PLAIN (curl's default, and with an initial response) and AUTH LOGIN; --verbose never logs a password", async () => {
    writeFileSync(mailboxPath(root, "erin"), rec(1));
    const verbose = await startPop(root, ["--verbose"]);
    try {
      const url = (pw: string) => `pop3://erin:${pw}@127.0.0.1:${verbose.port}/1`;
      for (const extra of [[], ["--sasl-ir"], ["--login-options", "AUTH=LOGIN"]]) {
        const r = await run([CURL!, "-sS", "--max-time", "20", ...extra, url("erin-pw-XYZZY")]);
        expect(r.err).toBe("");
        expect(r.out).toBe(plainLines(1).map((l) => l + "\r\n").join(""));
      }
      writeFileSync(mailboxPath(root, "frank"), rec(1));
      for (const extra of [["--sasl-ir"], ["--login-options", "AUTH=LOGIN"]]) {
        const long = await run([CURL!, "-sS", "--max-time", "20", ...extra, `pop3://frank:${LONG_PASSWORD}@127.0.0.1:${verbose.port}/1`]);
        expect(long.err).toBe("");
        expect(long.out).toBe(plainLines(1).map((l) => l + "\r\n").join(""));
      }
      const bad = await run([CURL!, "-sS", "--max-time", "20", url("wrong-pw-PLUGH")]);
      expect(bad.code).toBe(67); // curl: login denied
      const log = verbose.log();
      expect(log).toContain("C: AUTH PLAIN\n");
      expect(log).toContain("C: AUTH PLAIN ********\n");
      expect(log).toContain("C: AUTH LOGIN\n");
      expect(log).toContain("failed login for erin");
      for (const secret of ["XYZZY", "PLUGH", Buffer.from("\0erin\0erin-pw-XYZZY").toString("base64"), Buffer.from("erin-pw-XYZZY").toString("base64")]) expect(log).not.toContain(secret);
    } finally {
      await verbose.stop();
    }
  });

  test.skipIf(noCurl)("DELE with -X removes the message at QUIT", async () => {
    writeFileSync(mailboxPath(root, "dave"), Buffer.concat([rec(1), rec(2)]));
    const r = await run([CURL!, "-sS", "--max-time", "20", "-X", "DELE 1", "-I", `pop3://dave:davepw@127.0.0.1:${pop.port}/`]);
    expect(r.code).toBe(0);
    expect(readFileSync(mailboxPath(root, "dave")).equals(rec(2))).toBe(true);
  });
});

const FETCHMAIL = Bun.which("fetchmail");
if (!FETCHMAIL) console.warn("pop3-interop: fetchmail not found on PATH, skipping the fetchmail tests");

describe("fetchmail", () => {
  test.skipIf(!FETCHMAIL)("keep with UIDs fetches each message once; fetchall nokeep empties the mailbox at QUIT", async () => {
    const home = makeRoot({});
    try {
      const out = `${home}/delivered`;
      const rc = (extra: string) => {
        const path = `${home}/fetchmailrc`;
        writeFileSync(path, `set no bouncemail\nset idfile "${home}/fetchids"\npoll 127.0.0.1 protocol pop3 port ${pop.port} uidl auth password user "carol" password "carolpw" sslproto '' ${extra} mda "/bin/sh -c 'cat >> ${out}; echo =====END >> ${out}'"\n`, { mode: 0o600 });
        return path;
      };
      const fetch = (extra: string) => run([FETCHMAIL!, "-f", rc(extra), "--nosyslog", "--nodetach"]);
      const delivered = () => readFileSync(out, "utf8").split("=====END\n").filter(Boolean);
      writeFileSync(mailboxPath(root, "carol"), Buffer.concat([rec(1, ["hello", ".dot line", ".."]), rec(2)]));
      const first = await fetch("keep");
      expect(first.code).toBe(0);
      expect(delivered().length).toBe(2);
      // The message as stored, dots unstuffed (fetchmail adds its own Received lines before ours).
      expect(delivered()[0]).toStartWith("From: x@y\nTo: u@z\nSubject: msg 1\n");
      expect(delivered()[0]).toEndWith(`${RECEIVED}\n\nhello\n.dot line\n..\n`);
      expect(delivered()[1]).toContain("Subject: msg 2\n");
      // Nothing new: fetchmail's exit code 1 means "no mail".
      expect((await fetch("keep")).code).toBe(1);
      expect(delivered().length).toBe(2);
      // A third message arrives by SMTP: only it is fetched.
      const py3 = await run([PYTHON ?? "python3", "-c", `import smtplib\ns = smtplib.SMTP("127.0.0.1", ${smtp.port})\ns.sendmail("x@y", ["carol@here"], "From: x@y\\r\\nTo: carol@here\\r\\nSubject: msg 3\\r\\n\\r\\nthird\\r\\n")\ns.quit()`]);
      expect(py3.code).toBe(0);
      expect((await fetch("keep")).code).toBe(0);
      expect(delivered().length).toBe(3);
      expect(delivered()[2]).toContain("Subject: msg 3\n");
      // Fetch everything again and delete it on the server.
      expect((await fetch("fetchall nokeep")).code).toBe(0);
      expect(delivered().length).toBe(6);
      expect(readFileSync(mailboxPath(root, "carol")).length).toBe(0);
    } finally {
      removeRoot(home);
    }
  });
});
