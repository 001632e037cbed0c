// Interop: real SMTP clients that no one here wrote, against the real smtpmail program.
// Each test is skipped (with the reason in its name) when its tool is not installed.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { scanBuffer } from "../lib/mailbox-scanner.ts";
import { makeRoot, removeRoot, startSmtp, type Running } from "./helpers/servers.ts";

const hasPython = Bun.which("python3") !== null && Bun.spawnSync(["python3", "-c", "import smtplib"]).exitCode === 0;
const hasCurl = Bun.which("curl") !== null;
const hasSwaks = Bun.which("swaks") !== null;
if (!hasPython) console.warn("smtp-interop: python3 with smtplib not installed, skipping its tests");
if (!hasCurl) console.warn("smtp-interop: curl not installed (apt-get install -y curl), skipping its test");
if (!hasSwaks) console.warn("smtp-interop: swaks not installed (apt-get install -y swaks), skipping its tests");

let root: string;
let srv: Running;
beforeAll(async () => {
  root = makeRoot({ alice: "a", bob: "b", carol: "c" });
  srv = await startSmtp(root, ["--domain", "mx.interop"]);
});
afterAll(async () => {
  if (srv && srv.proc.exitCode === null) srv.proc.kill(9);
  await srv?.proc.exited;
  removeRoot(root);
});

function records(user: string): string[] {
  const p = join(root, user, "mymailbox");
  const file = existsSync(p) ? readFileSync(p) : Buffer.alloc(0);
  const s = scanBuffer(file);
  expect(s.validEnd).toBe(file.length);
  return s.messages.map((m) => file.subarray(m.offset, m.offset + m.length).toString("utf8"));
}
const withSubject = (user: string, subject: string) => records(user).filter((r) => r.includes(`\r\nSubject: ${subject}\r\n`) || r.startsWith(`Subject: ${subject}\r\n`));

async function run(argv: string[], input?: string): Promise<{ out: string; err: string; code: number }> {
  const p = Bun.spawn(argv, { stdin: input === undefined ? "ignore" : new TextEncoder().encode(input), stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => p.kill(9), 30_000);
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  clearTimeout(timer);
  return { out, err, code };
}
async function python(script: string): Promise<any> {
  const { out, err, code } = await run(["python3", "-c", script, String(srv.port)]);
  if (code !== 0) throw new Error(`python failed (${code}): ${err}`);
  return JSON.parse(out.trim().split("\n").at(-1)!);
}

describe.skipIf(!hasPython)("Python smtplib (skipped when python3 is not installed)", () => {
  test("HELO path: helo() then sendmail()", async () => {
    const r = await python(`
import smtplib, sys, json
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="py.helo")
code, msg = s.helo()
refused = s.sendmail("py@helo.test", ["alice@mx.interop"], "From: py@helo.test\\r\\nTo: alice@mx.interop\\r\\nSubject: py-helo\\r\\n\\r\\nhello from smtplib\\r\\n.\\r\\n..\\r\\n.x\\r\\n")
q = s.quit()
print(json.dumps({"helo": [code, msg.decode()], "esmtp": s.does_esmtp, "refused": refused, "quit": [q[0], q[1].decode()]}))
`);
    expect(r.helo).toEqual([250, "OK Hello py.helo"]);
    expect(r.esmtp).toBeFalsy();
    expect(r.refused).toEqual({});
    expect(r.quit).toEqual([221, "mx.interop Service closing transmission channel"]);
    const [rec, ...more] = withSubject("alice", "py-helo");
    expect(more).toEqual([]);
    expect(rec).toMatch(/\r\nReceived: \d{4}-\d\d-\d\d : \d\d : \d\d\r\n/);
    // stored stuffed, as sent: the body lines ".", "..", ".x"
    expect(rec).toEndWith("\r\nhello from smtplib\r\n..\r\n...\r\n..x\r\n.\r\n");
  });

  test("EHLO path: extensions seen, 8-bit message with several recipients", async () => {
    const r = await python(`
import smtplib, sys, json
from email.message import EmailMessage
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]))
code, _ = s.ehlo("py.ehlo")
exts = sorted(s.esmtp_features.keys()); size = s.esmtp_features.get("size")
m = EmailMessage()
m["From"] = "py@ehlo.test"; m["To"] = "bob@mx.interop, carol@mx.interop"; m["Subject"] = "py-ehlo"
m.set_content("naïve ünïcødé ✓\\n", cte="8bit")
refused = s.send_message(m, to_addrs=["bob@mx.interop", "carol@mx.interop", "Alice@mx.interop"])
s.quit()
print(json.dumps({"ehlo": code, "exts": exts, "size": size, "refused": refused}))
`);
    expect(r.ehlo).toBe(250);
    expect(r.exts).toEqual(expect.arrayContaining(["pipelining", "size", "8bitmime"]));
    expect(Number(r.size)).toBe(10 * 1024 * 1024);
    expect(r.refused).toEqual({});
    for (const u of ["alice", "bob", "carol"]) {
      const recs = withSubject(u, "py-ehlo");
      expect(recs.length).toBe(1);
      expect(recs[0]).toContain("naïve ünïcødé ✓\r\n");
      expect(recs[0]).toContain("MIME-Version: 1.0\r\n");
    }
  });

  test("SMTPUTF8 (RFC 6531): a UTF-8 sender and header go through; a UTF-8 recipient is no user of ours", async () => {
    const r = await python(`
import smtplib, sys, json
from email.message import EmailMessage
from email import policy
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]))
s.ehlo("py.utf8")
offered = s.has_extn("smtputf8")
m = EmailMessage(policy=policy.SMTPUTF8)
m["From"] = "jörg@bücher.test"; m["To"] = "alice@mx.interop"; m["Subject"] = "py-utf8 Grüße"
m.set_content("hallo\\n")
refused = s.send_message(m, to_addrs=["alice@mx.interop", "jörg@mx.interop"])
s.quit()
print(json.dumps({"smtputf8": offered, "refused": {k: v[0] for k, v in refused.items()}}))
`);
    expect(r.smtputf8).toBe(true);
    expect(r.refused).toEqual({ "jörg@mx.interop": 550 });
    const [rec, ...more] = withSubject("alice", "py-utf8 Grüße");
    expect(more).toEqual([]);
    expect(rec).toStartWith("From: jörg@bücher.test\r\n");
  });

  test("sendmail() given bytes with bare LF line ends (as msg.as_bytes() makes): its dot-stuffing after each LF is taken off once", async () => {
    await python(`
import smtplib, sys, json
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]))
s.sendmail("py@x.test", ["bob@mx.interop"], b"From: py@x.test\\nTo: bob@mx.interop\\nSubject: py-lf-bytes\\n\\nfirst\\n.single dot line\\n...\\n.\\nlast\\n")
s.quit()
print(json.dumps({}))
`);
    const [rec, ...more] = withSubject("bob", "py-lf-bytes");
    expect(more).toEqual([]);
    // Stored stuffed with CRLF: the body lines ".single dot line", "...", "." come back as sent.
    expect(rec).toContain("\r\nfirst\r\n..single dot line\r\n....\r\n..\r\nlast\r\n");
  });

  test("a refused recipient: partly refused is reported per address, all refused raises", async () => {
    const r = await python(`
import smtplib, sys, json
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]))
refused = s.sendmail("py@x.test", ["bob@mx.interop", "nobody@mx.interop"], "Subject: py-partial\\r\\n\\r\\nx\\r\\n")
all_refused = None
try:
    s.sendmail("py@x.test", ["ghost@mx.interop", "../etc@mx.interop"], "Subject: py-none\\r\\n\\r\\nx\\r\\n")
except smtplib.SMTPRecipientsRefused as e:
    all_refused = {k: [v[0], v[1].decode()] for k, v in e.recipients.items()}
s.quit()
print(json.dumps({"refused": {k: [v[0], v[1].decode()] for k, v in refused.items()}, "all": all_refused}))
`);
    expect(r.refused).toEqual({ "nobody@mx.interop": [550, "No such user"] });
    expect(r.all).toEqual({ "ghost@mx.interop": [550, "No such user"], "../etc@mx.interop": [550, "No such user"] });
    expect(withSubject("bob", "py-partial").length).toBe(1);
    expect(records("bob").some((x) => x.includes("py-none"))).toBe(false);
  });
});

describe.skipIf(!hasCurl)("curl smtp:// (skipped when curl is not installed)", () => {
  test("--mail-from --mail-rcpt --upload-file, with two recipients", async () => {
    const file = join(root, "curl-msg.txt");
    writeFileSync(file, "From: curl@x.test\r\nTo: alice@mx.interop\r\nSubject: curl-upload\r\n\r\nsent by curl\r\n.\r\nafter a dot line\r\n");
    const { code, err } = await run(["curl", "-sS", `smtp://127.0.0.1:${srv.port}/curl.client`, "--mail-from", "curl@x.test", "--mail-rcpt", "alice@mx.interop", "--mail-rcpt", "carol@mx.interop", "--upload-file", file]);
    expect(err).toBe("");
    expect(code).toBe(0);
    for (const u of ["alice", "carol"]) {
      const recs = withSubject(u, "curl-upload");
      expect(recs.length).toBe(1);
      expect(recs[0]).toContain("\r\nsent by curl\r\n..\r\nafter a dot line\r\n.\r\n");
    }
  });

  test("a file with bare LF line ends: curl does not stuff after a bare LF, and its dot lines are kept", async () => {
    const file = join(root, "curl-lf.txt");
    writeFileSync(file, "From: curl@x.test\nTo: alice@mx.interop\nSubject: curl-lf\n\n.single\n..\n.\nend\n");
    const { code, err } = await run(["curl", "-sS", `smtp://127.0.0.1:${srv.port}/curl.client`, "--mail-from", "curl@x.test", "--mail-rcpt", "alice@mx.interop", "--upload-file", file]);
    expect(err).toBe("");
    expect(code).toBe(0);
    const [rec, ...more] = withSubject("alice", "curl-lf");
    expect(more).toEqual([]);
    // curl ends the unended-by-CRLF text with a CRLF of its own: an empty last line.
    expect(rec).toContain("\r\n..single\r\n...\r\n..\r\nend\r\n");
  });

  test("a refused recipient makes curl fail", async () => {
    const file = join(root, "curl-msg2.txt");
    writeFileSync(file, "Subject: curl-refused\r\n\r\nx\r\n");
    const { code } = await run(["curl", "-sS", `smtp://127.0.0.1:${srv.port}`, "--mail-from", "curl@x.test", "--mail-rcpt", "nobody@mx.interop", "--upload-file", file]);
    expect(code).not.toBe(0);
  });
});

describe.skipIf(!hasSwaks)("swaks (skipped when swaks is not installed)", () => {
  test("--server --to --from delivers", async () => {
    const { code, out } = await run(["swaks", "--server", `127.0.0.1:${srv.port}`, "--to", "bob@mx.interop", "--from", "swaks@x.test", "--header", "Subject: swaks-test", "--body", "hello from swaks"]);
    expect(code).toBe(0);
    expect(out).toContain("250 OK Message accepted for delivery");
    const recs = withSubject("bob", "swaks-test");
    expect(recs.length).toBe(1);
    expect(recs[0]).toContain("hello from swaks");
  });

  test("an unknown recipient: swaks reports 550 and fails", async () => {
    const { code, out } = await run(["swaks", "--server", `127.0.0.1:${srv.port}`, "--to", "nobody@mx.interop", "--from", "swaks@x.test"]);
    expect(code).not.toBe(0);
    expect(out).toContain("550 No such user");
  });
});

// Postfix's own load generator, as used to benchmark MTAs. `.ci/run` unpacks it from the
// postfix package without installing the MTA and names it in SMTP_SOURCE (its libraries sit
// in ../lib/postfix beside it); an installed postfix puts it in /usr/sbin.
const smtpSource = process.env.SMTP_SOURCE ?? (existsSync("/usr/sbin/smtp-source") ? "/usr/sbin/smtp-source" : null);
if (!smtpSource) console.warn("smtp-interop: Postfix's smtp-source not found (set SMTP_SOURCE), skipping its test");

describe.skipIf(!smtpSource)("Postfix smtp-source (skipped when not found)", () => {
  test("5 sessions x 40 messages over kept connections, and 20 on new ones: every message stored once, well-formed", async () => {
    const env = { ...process.env, LD_LIBRARY_PATH: join(smtpSource!, "../../lib/postfix") };
    const source = (args: string[]) => {
      const p = Bun.spawn([smtpSource!, ...args, `127.0.0.1:${srv.port}`], { env, stdout: "pipe", stderr: "pipe" });
      const timer = setTimeout(() => p.kill(9), 60_000);
      return Promise.all([new Response(p.stderr).text(), p.exited]).finally(() => clearTimeout(timer));
    };
    const [err1, code1] = await source(["-d", "-s", "5", "-m", "200", "-l", "2000", "-f", "source@x.test", "-t", "carol@mx.interop"]);
    expect(err1).toBe("");
    expect(code1).toBe(0);
    const [err2, code2] = await source(["-s", "5", "-m", "20", "-l", "300", "-f", "source@x.test", "-t", "carol@mx.interop"]);
    expect(err2).toBe("");
    expect(code2).toBe(0);
    const recs = records("carol").filter((r) => r.startsWith("From: <source@x.test>\r\n"));
    expect(recs.length).toBe(220);
    // Each message once (smtp-source numbers them in the Message-Id), our Received line in each.
    expect(new Set(recs.map((r) => /Message-Id: (\S+)/.exec(r)?.[1])).size).toBe(220);
    for (const r of recs) expect(r).toMatch(/\r\nReceived: \d{4}-\d\d-\d\d : \d\d : \d\d\r\n/);
  });
});
