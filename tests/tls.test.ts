// TLS end to end: the real servers with a throwaway certificate, spoken to by Python's smtplib
// and poplib (starttls/stls and implicit TLS), curl --ssl-reqd, swaks --tls, our own clients
// and mailclient. Plus the RFC 3207 / RFC 2595 rule that nothing sent before the handshake is
// ever executed, and --require-tls / --require-auth. Tests skip when their tool is missing.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Pop3Client } from "../lib/pop3-client.ts";
import { sendMail } from "../lib/smtp-client.ts";
import { makeCert, type TestCert } from "./helpers/certs.ts";
import { command, makeRoot, removeRoot, startPop, startSmtp, type Running } from "./helpers/servers.ts";
import { SmtpConn } from "./helpers/smtp-conn.ts";
import { Wire } from "./helpers/wire.ts";

const hasPython = Bun.which("python3") !== null && Bun.spawnSync(["python3", "-c", "import smtplib, poplib, ssl"]).exitCode === 0;
const hasCurl = Bun.which("curl") !== null;
const hasSwaks = Bun.which("swaks") !== null;
const cert: TestCert | null = makeCert();
if (!cert) console.warn("tls: openssl not installed (apt-get install -y openssl), skipping every TLS test");
if (!hasPython) console.warn("tls: python3 with smtplib/poplib/ssl not installed, skipping its tests");
if (!hasCurl) console.warn("tls: curl not installed, skipping its tests");
if (!hasSwaks) console.warn("tls: swaks not installed, skipping its tests");

const USERS = { alice: "alicepw", bob: "bobpw", carol: "carolpw", dave: "davepw" };
let root: string;
let smtp: Running;
let pop: Running;
let strict: Running; // --require-tls --require-auth
let strictPop: Running; // --require-tls
const running: Running[] = [];

beforeAll(async () => {
  if (!cert) return;
  root = makeRoot(USERS);
  const tls = ["--tls-cert", cert.cert, "--tls-key", cert.key, "--tls-port", "0"];
  [smtp, pop, strict, strictPop] = await Promise.all([
    startSmtp(root, ["--domain", "mx.tls", ...tls]),
    startPop(root, tls),
    startSmtp(root, ["--domain", "mx.strict", ...tls, "--require-tls", "--require-auth"]),
    startPop(root, [...tls, "--require-tls"]),
  ]);
  running.push(smtp, pop, strict, strictPop);
});
afterAll(async () => {
  for (const r of running) if (r.proc.exitCode === null && r.proc.signalCode === null) r.proc.kill(9);
  await Promise.all(running.map((r) => r.proc.exited));
  if (root) removeRoot(root);
  cert?.remove();
});

function mailbox(user: string): string {
  const p = join(root, user, "mymailbox");
  return existsSync(p) ? readFileSync(p, "utf8") : "";
}

async function run(argv: string[], input?: string): Promise<{ out: string; err: string; code: number }> {
  const p = Bun.spawn(argv, { stdin: input === undefined ? "ignore" : new TextEncoder().encode(input), stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => p.kill(9), 60_000);
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  clearTimeout(timer);
  return { out, err, code };
}
async function python(script: string, ...args: (string | number)[]): Promise<any> {
  const { out, err, code } = await run(["python3", "-c", script, cert!.cert, ...args.map(String)]);
  if (code !== 0) throw new Error(`python failed (${code}): ${err}`);
  return JSON.parse(out.trim().split("\n").at(-1)!);
}

describe.skipIf(!cert || !hasPython)("Python smtplib / poplib over TLS", () => {
  test("smtplib.starttls(): STARTTLS offered, AUTH only after it, certificate verified, mail stored", async () => {
    const r = await python(
      `
import smtplib, ssl, sys, json
ctx = ssl.create_default_context(cafile=sys.argv[1])
s = smtplib.SMTP("localhost", int(sys.argv[2]), local_hostname="py.starttls")
s.ehlo(); before = sorted(s.esmtp_features)
code, _ = s.starttls(context=ctx)
s.ehlo(); after = sorted(s.esmtp_features)
s.login("alice", "alicepw")
refused = s.sendmail("alice@mx.tls", ["bob@mx.tls"], "Subject: py-starttls\\r\\n\\r\\nover TLS\\r\\n")
print(json.dumps({"before": before, "code": code, "after": after, "auth": s.esmtp_features.get("auth"), "refused": refused, "version": s.sock.version()}))
s.quit()
`,
      smtp.port,
    );
    expect(r.before).toContain("starttls");
    expect(r.before).not.toContain("auth");
    expect(r.code).toBe(220);
    expect(r.after).not.toContain("starttls");
    expect(r.auth.trim()).toBe("PLAIN LOGIN");
    expect(r.refused).toEqual({});
    expect(r.version).toMatch(/^TLSv1\.[23]$/);
    expect(mailbox("bob")).toContain("Subject: py-starttls\r\n");
  });

  test("smtplib.SMTP_SSL on the implicit-TLS port, AUTH LOGIN", async () => {
    const r = await python(
      `
import smtplib, ssl, sys, json
ctx = ssl.create_default_context(cafile=sys.argv[1])
s = smtplib.SMTP_SSL("localhost", int(sys.argv[2]), context=ctx, local_hostname="py.ssl")
s.ehlo(); s.esmtp_features["auth"] = "LOGIN"
s.login("carol", "carolpw")
refused = s.sendmail("carol@mx.tls", ["bob@mx.tls"], "Subject: py-smtps\\r\\n\\r\\nimplicit\\r\\n")
print(json.dumps({"refused": refused, "starttls": "starttls" in s.esmtp_features}))
s.quit()
`,
      smtp.tlsPort,
    );
    expect(r).toEqual({ refused: {}, starttls: false });
    expect(mailbox("bob")).toContain("Subject: py-smtps\r\n");
  });

  test("poplib.stls() and POP3_SSL: CAPA before and after, login, RETR", async () => {
    const r = await python(
      `
import poplib, ssl, sys, json
ctx = ssl.create_default_context(cafile=sys.argv[1])
p = poplib.POP3("localhost", int(sys.argv[2]))
before = sorted(p.capa())
p.stls(context=ctx)
after = sorted(p.capa())
p.user("bob"); p.pass_("bobpw"); n = p.stat()[0]; p.quit()
q = poplib.POP3_SSL("localhost", int(sys.argv[3]), context=ctx)
q.user("bob"); q.pass_("bobpw"); body = b"\\n".join(q.retr(1)[1]).decode(); q.quit()
print(json.dumps({"before": before, "after": after, "n": n, "body": body}))
`,
      pop.port,
      pop.tlsPort,
    );
    expect(r.before).toContain("STLS");
    expect(r.after).not.toContain("STLS");
    expect(r.after).toContain("USER");
    expect(r.n).toBeGreaterThanOrEqual(0);
    expect(typeof r.body).toBe("string");
  });

  test("bytes sent with STARTTLS, before the handshake, are never executed (SMTP)", async () => {
    const r = await python(
      `
import socket, ssl, sys, json
ctx = ssl.create_default_context(cafile=sys.argv[1])
s = socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=10)
f = s.makefile("rb")
def reply(f):
    lines = []
    while True:
        l = f.readline().decode().rstrip("\\r\\n"); lines.append(l)
        if l[3:4] != "-": return lines
reply(f)
s.sendall(b"EHLO x\\r\\n"); reply(f)
# STARTTLS with a transaction smuggled behind it in the same packet
s.sendall(b"STARTTLS\\r\\nMAIL FROM:<evil@x>\\r\\nRCPT TO:<dave@mx.tls>\\r\\n")
first = reply(f)
t = ctx.wrap_socket(s, server_hostname="localhost"); g = t.makefile("rb")
out = {"starttls": first}
t.sendall(b"RCPT TO:<dave@mx.tls>\\r\\n"); out["rcpt"] = reply(g)
t.sendall(b"MAIL FROM:<a@x>\\r\\n"); out["mail"] = reply(g)
t.sendall(b"EHLO x\\r\\n"); out["ehlo"] = reply(g)
t.sendall(b"QUIT\\r\\n"); out["quit"] = reply(g)
print(json.dumps(out))
`,
      smtp.port,
    );
    expect(r.starttls).toEqual(["220 Ready to start TLS"]);
    // No MAIL was carried over, and HELO/EHLO is forgotten (RFC 3207 4.2).
    expect(r.rcpt[0]).toStartWith("503 ");
    expect(r.mail[0]).toBe("503 Bad sequence of commands: send HELO or EHLO first");
    expect(r.ehlo.at(-1)).toBe("250 HELP");
    expect(r.ehlo.join("\n")).not.toContain("STARTTLS");
    expect(r.quit).toEqual(["221 mx.tls Service closing transmission channel"]);
    expect(mailbox("dave")).toBe("");
  });

  test("bytes sent with STLS, before the handshake, are never executed (POP3)", async () => {
    const r = await python(
      `
import socket, ssl, sys, json
ctx = ssl.create_default_context(cafile=sys.argv[1])
s = socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=10)
f = s.makefile("rb"); f.readline()
s.sendall(b"STLS\\r\\nUSER alice\\r\\n")
first = f.readline().decode().strip()
t = ctx.wrap_socket(s, server_hostname="localhost"); g = t.makefile("rb")
t.sendall(b"PASS alicepw\\r\\n"); passed = g.readline().decode().strip()
t.sendall(b"STLS\\r\\n"); again = g.readline().decode().strip()
t.sendall(b"QUIT\\r\\n"); g.readline()
print(json.dumps({"stls": first, "pass": passed, "again": again}))
`,
      pop.port,
    );
    expect(r).toEqual({ stls: "+OK Begin TLS negotiation", pass: "-ERR send USER first", again: "-ERR TLS already active" });
  });
});

/**
 * A client over TLS that keeps its side open after the server's last line: one that never reads
 * again, or takes the close_notify and never answers it. Each line it prints is JSON: "said"
 * (the server's last line), then, once told to go on (a line on stdin), "end": how the stream
 * ended ("close_notify", or the error).
 */
const LINGERER = `
import socket, ssl, sys, json
cafile, kind, port, user, pw, action = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=cafile)
def out(**o): print(json.dumps(o), flush=True)
def until(sock, buf, done):
    while not done(buf):
        d = sock.recv(4096)
        if not d: raise SystemExit("closed early: %r" % buf)
        buf += d
    return buf
raw = socket.create_connection(("127.0.0.1", int(port)))
pop = kind.startswith("pop")
if kind.endswith("-tls"):
    s = ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
    until(s, b"", lambda b: b.endswith(b"\\r\\n"))
else:
    until(raw, b"", lambda b: b.endswith(b"\\r\\n"))
    if pop:
        raw.sendall(b"STLS\\r\\n"); until(raw, b"", lambda b: b.endswith(b"\\r\\n"))
    else:
        raw.sendall(b"EHLO py\\r\\n"); until(raw, b"", lambda b: b"\\r\\n250 " in b"\\r\\n" + b and b.endswith(b"\\r\\n"))
        raw.sendall(b"STARTTLS\\r\\n"); until(raw, b"", lambda b: b.endswith(b"\\r\\n"))
    s = ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
hello = ("USER %s\\r\\nPASS %s\\r\\n" % (user, pw)) if pop else "EHLO py\\r\\n"
ready = (lambda b: b"maildrop" in b and b.endswith(b"\\r\\n")) if pop else (lambda b: b"\\r\\n250 " in b"\\r\\n" + b and b.endswith(b"\\r\\n"))
if action == "quit":
    s.sendall((hello + "QUIT\\r\\n").encode())
    buf = until(s, b"", lambda b: (b"goodbye" in b or b"\\r\\n221 " in b) and b.endswith(b"\\r\\n"))
else:
    s.sendall(hello.encode())
    buf = until(s, b"", ready)
    out(ready=True)
    buf = until(s, b"", lambda b: b.endswith(b"\\r\\n"))
out(said=buf.decode().split("\\r\\n")[-2])
sys.stdin.readline()
try:
    d = s.recv(100)
    out(end="close_notify" if d == b"" else "data %r" % d)
except Exception as e:
    out(end=repr(e))
`;

describe.skipIf(!cert || !hasPython)("TLS connections end within the grace after the goodbye (helper-106)", () => {
  const KINDS = [
    ["pop-tls", "carol", "carolpw"],
    ["pop-stls", "dave", "davepw"],
    ["smtp-tls", "", ""],
    ["smtp-starttls", "", ""],
  ] as const;

  /** One lingering client: its JSON lines as they come, and a way to let it read on. */
  function linger(kind: string, port: number, user: string, pw: string, action: "quit" | "wait") {
    const p = Bun.spawn(["python3", "-c", LINGERER, cert!.cert, kind, String(port), user, pw, action], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
    const timer = setTimeout(() => p.kill(9), 40_000);
    const lines: any[] = [];
    void (async () => {
      let text = "";
      for await (const chunk of p.stdout) {
        text += new TextDecoder().decode(chunk);
        for (let i; (i = text.indexOf("\n")) >= 0; text = text.slice(i + 1)) lines.push(JSON.parse(text.slice(0, i)));
      }
    })();
    const find = async (key: string) => {
      for (let i = 0; i < 1000; i++) {
        const hit = lines.find((l) => key in l);
        if (hit) return hit[key];
        if (p.exitCode !== null) throw new Error(`${kind}: python exited ${p.exitCode}: ${await new Response(p.stderr).text()}`);
        await Bun.sleep(10);
      }
      throw new Error(`${kind}: no "${key}" in 10 s`);
    };
    return {
      find,
      async end(): Promise<string> {
        p.stdin.write("go\n");
        await p.stdin.flush();
        try {
          return await find("end");
        } finally {
          clearTimeout(timer);
          p.kill(9);
        }
      },
    };
  }

  /** The servers for one test: --timeout 4 makes the goodbye grace 4 s (it is the smaller of 5 s and the timeout). */
  async function servers(): Promise<[Running, Running]> {
    const tls = ["--tls-cert", cert!.cert, "--tls-key", cert!.key, "--tls-port", "0", "--timeout", "4"];
    const both = await Promise.all([startPop(root, tls), startSmtp(root, ["--domain", "mx.tls", ...tls])]);
    running.push(...both);
    return both;
  }
  const portFor = (kind: string, pop: Running, smtp: Running) => {
    const server = kind.startsWith("pop") ? pop : smtp;
    return kind.endsWith("-tls") ? server.tlsPort : server.port;
  };
  const disconnects = (r: Running) => r.log().match(/\] disconnect /g)?.length ?? 0;

  test("QUIT, then the client neither reads nor closes: the server lets go at the grace, not 12 s later; the goodbye and a close_notify arrived", { timeout: 60_000 }, async () => {
    const [pop, smtp] = await servers();
    const clients = KINDS.map(([kind, user, pw]) => linger(kind, portFor(kind, pop, smtp), user, pw, "quit"));
    const said = await Promise.all(clients.map((c) => c.find("said")));
    const t0 = Date.now();
    // Bun 1.4.5 let go of a TLS socket ended with end(): it stayed open until Bun closed it
    // itself, about 12 s after it opened.
    while ((disconnects(pop) < 2 || disconnects(smtp) < 2) && Date.now() - t0 < 10_000) await Bun.sleep(50);
    const ends = await Promise.all(clients.map((c) => c.end()));
    expect(said).toEqual([expect.stringMatching(/^\+OK goodbye/), expect.stringMatching(/^\+OK goodbye/), expect.stringMatching(/^221 /), expect.stringMatching(/^221 /)]);
    expect([disconnects(pop), disconnects(smtp)]).toEqual([2, 2]);
    expect(ends).toEqual(Array(4).fill("close_notify"));
    expect(await pop.stop("SIGTERM")).toBe(0);
    expect(await smtp.stop("SIGTERM")).toBe(0);
  });

  test("SIGTERM with such clients: each gets its 421 / -ERR and a close_notify, and the server exits at the goodbye grace, not its 10 s shutdown grace", { timeout: 60_000 }, async () => {
    const [pop, smtp] = await servers();
    const clients = KINDS.map(([kind, user, pw]) => linger(kind, portFor(kind, pop, smtp), user, pw, "wait"));
    await Promise.all(clients.map((c) => c.find("ready")));
    const t0 = Date.now();
    const stopAt = async (r: Running): Promise<[number | null, number]> => [await r.stop("SIGTERM"), Date.now() - t0];
    const exits = Promise.all([stopAt(pop), stopAt(smtp)]);
    const said = await Promise.all(clients.map((c) => c.find("said")));
    const [[popCode, popTook], [smtpCode, smtpTook]] = await exits;
    const ends = await Promise.all(clients.map((c) => c.end()));
    expect(said).toEqual([expect.stringMatching(/^-ERR .*shutting down/), expect.stringMatching(/^-ERR .*shutting down/), expect.stringMatching(/^421 /), expect.stringMatching(/^421 /)]);
    expect([popCode, smtpCode]).toEqual([0, 0]);
    // Not the 10 s shutdown grace (10.0 s before): the sockets were closed at the 4 s goodbye grace.
    expect(popTook).toBeLessThan(9000);
    expect(smtpTook).toBeLessThan(9000);
    expect(ends).toEqual(Array(4).fill("close_notify"));
  });
});

describe.skipIf(!cert || !hasCurl)("curl over TLS", () => {
  test("curl --ssl-reqd smtp:// (STARTTLS + AUTH) and smtps://, pop3:// with --ssl-reqd and pop3s://", async () => {
    const msg = (s: string) => `From: alice@mx.tls\r\nTo: carol@mx.tls\r\nSubject: ${s}\r\n\r\nvia curl\r\n`;
    const base = ["curl", "-sS", "--max-time", "30", "--cacert", cert!.cert, "--resolve", `localhost:${smtp.port}:127.0.0.1`, "--resolve", `localhost:${smtp.tlsPort}:127.0.0.1`, "--resolve", `localhost:${pop.port}:127.0.0.1`, "--resolve", `localhost:${pop.tlsPort}:127.0.0.1`];
    const mail = ["--mail-from", "alice@mx.tls", "--mail-rcpt", "carol@mx.tls", "--user", "alice:alicepw", "-T", "-"];
    let r = await run([...base, "--ssl-reqd", `smtp://localhost:${smtp.port}`, ...mail], msg("curl-starttls"));
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    r = await run([...base, `smtps://localhost:${smtp.tlsPort}`, ...mail], msg("curl-smtps"));
    expect(r.code).toBe(0);
    expect(mailbox("carol")).toContain("Subject: curl-starttls\r\n");
    expect(mailbox("carol")).toContain("Subject: curl-smtps\r\n");
    r = await run([...base, "--ssl-reqd", `pop3://localhost:${pop.port}/`, "--user", "carol:carolpw"]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^1 \d+\r?\n2 \d+/);
    r = await run([...base, `pop3s://localhost:${pop.tlsPort}/2`, "--user", "carol:carolpw"]);
    expect(r.code).toBe(0);
    expect(r.out).toContain("Subject: curl-smtps");
  });

  test("curl rejects the self-signed certificate unless told to trust it", async () => {
    const r = await run(["curl", "-sS", "--max-time", "30", `pop3s://127.0.0.1:${pop.tlsPort}/`, "--user", "carol:carolpw"]);
    expect(r.code).not.toBe(0);
    expect(r.err).toMatch(/certificate/i);
  });
});

describe.skipIf(!cert || !hasSwaks)("swaks over TLS", () => {
  test("swaks --tls (STARTTLS, AUTH PLAIN) and --tlsc (implicit, AUTH LOGIN)", async () => {
    const common = ["--server", "127.0.0.1", "--from", "dave@mx.tls", "--to", "alice@mx.tls", "--auth-user", "dave", "--auth-password", "davepw", "--timeout", "20"];
    let r = await run(["swaks", ...common, "--port", String(smtp.port), "--tls", "--auth", "PLAIN", "--h-Subject", "swaks-starttls"]);
    expect(r.code).toBe(0);
    expect(r.out).toContain("<~  235 Authentication successful");
    r = await run(["swaks", ...common, "--port", String(smtp.tlsPort), "--tlsc", "--auth", "LOGIN", "--h-Subject", "swaks-tlsc"]);
    expect(r.code).toBe(0);
    expect(r.out).toContain("<~  334 VXNlcm5hbWU6");
    expect(mailbox("alice")).toContain("Subject: swaks-starttls\r\n");
    expect(mailbox("alice")).toContain("Subject: swaks-tlsc\r\n");
  });
});

describe.skipIf(!cert)("our own clients over TLS", () => {
  test("sendMail with STARTTLS and with implicit TLS, verifying the certificate; POP3 STLS and implicit", async () => {
    const tls = { serverName: "localhost", ca: cert!.pem };
    const base = { host: "127.0.0.1", helo: "own.client", from: "alice@mx.tls", to: ["dave@mx.tls"], timeoutMs: 10_000, auth: { user: "alice", password: "alicepw" } };
    expect(await sendMail({ ...base, port: smtp.port, starttls: tls, message: "Subject: own-starttls\r\n\r\nx\r\n" })).toEqual({ ok: true });
    expect(await sendMail({ ...base, port: smtp.tlsPort, tls, message: "Subject: own-implicit\r\n\r\ny\r\n" })).toEqual({ ok: true });
    const p = await Pop3Client.connect("127.0.0.1", pop.port, { timeoutMs: 10_000 });
    await p.stls(tls);
    await p.login("dave", "davepw");
    const list = await p.list();
    expect(list.length).toBe(2);
    expect(await p.retr(2)).toContain("Subject: own-implicit\r\n");
    await p.quit();
    const q = await Pop3Client.connect("127.0.0.1", pop.tlsPort, { timeoutMs: 10_000, tls });
    await q.login("dave", "davepw");
    expect((await q.stat()).count).toBe(2);
    await q.quit();
  });

  test("an untrusted certificate is refused, --insecure accepts it", async () => {
    const err = await Pop3Client.connect("127.0.0.1", pop.tlsPort, { timeoutMs: 10_000, tls: { serverName: "localhost" } }).catch((e) => e);
    expect(String(err)).toMatch(/TLS handshake .* failed|certificate/i);
    const base = { host: "127.0.0.1", port: smtp.port, helo: "own.client", from: "bob@mx.tls", to: ["dave@mx.tls"], message: "Subject: x\r\n\r\nx\r\n", timeoutMs: 10_000 };
    await expect(sendMail({ ...base, starttls: { serverName: "localhost" } })).rejects.toThrow(/TLS handshake .* failed/);
    const wrongName = await sendMail({ ...base, starttls: { serverName: "mail.example.org", ca: cert!.pem } }).catch((e) => e);
    expect(String(wrongName)).toMatch(/TLS handshake .* failed/);
    const q = await Pop3Client.connect("127.0.0.1", pop.tlsPort, { timeoutMs: 10_000, tls: { serverName: "localhost", insecure: true } });
    await q.login("dave", "davepw");
    await q.quit();
    // --insecure accepts any certificate, a name it does not carry included (helper-27).
    const r = await Pop3Client.connect("127.0.0.1", pop.tlsPort, { timeoutMs: 10_000, tls: { serverName: "mail.example.org", insecure: true } });
    await r.login("dave", "davepw");
    await r.quit();
    expect(await sendMail({ ...base, starttls: { serverName: "mail.example.org", insecure: true } })).toEqual({ ok: true });
  });

  test("mailclient --starttls --cafile: login, send (with AUTH), list", async () => {
    const input = ["bob", "bobpw", "2", "From: bob@mx.tls", "To: carol@mx.tls", "Subject: mailclient-tls", "sent by mailclient", ".", "3", ""].join("\n");
    const r = await run(command("mailclient", ["--starttls", "--cafile", cert!.cert, "localhost", String(smtp.port), String(pop.port)]), input);
    expect(r.out).toContain("Logged in as bob.");
    expect(r.out).toContain("Mail sent successfully");
    expect(mailbox("carol")).toContain("Subject: mailclient-tls\r\n");
    const i = await run(command("mailclient", ["--tls", "--insecure", "127.0.0.1", String(strict.tlsPort), String(strictPop.tlsPort)]), ["carol", "carolpw", "1", "-1", "3", ""].join("\n"));
    expect(i.out).toContain("Logged in as carol.");
    expect(i.out).toContain("mailclient-tls");
    // Without --cafile the self-signed certificate is not trusted: said as a TLS failure, not as a server that is down.
    const bad = await run(command("mailclient", ["--starttls", "localhost", String(smtp.port), String(pop.port)]), ["bob", "bobpw", "3", ""].join("\n"));
    expect(bad.out).toContain("Cannot check the password: no trusted TLS connection to the POP3 server (");
    expect(bad.out).not.toContain("unreachable");
  });

  test("mailclient --starttls against servers without TLS: each says the server does not offer it, and nothing goes out in the clear", async () => {
    const plainSmtp = await startSmtp(root, ["--domain", "mx.plain"]);
    const plainPop = await startPop(root);
    running.push(plainSmtp, plainPop);
    const input = ["bob", "bobpw", "1", "2", "From: bob@mx.tls", "To: carol@mx.tls", "Subject: never-sent", "x", ".", "3", ""].join("\n");
    const r = await run(command("mailclient", ["--starttls", "127.0.0.1", String(plainSmtp.port), String(plainPop.port)]), input);
    // Before: "the POP3 server said -ERR unknown command" and "Cannot open the mailbox: unknown command".
    expect(r.out).toContain("Cannot check the password: the POP3 server does not offer STLS (it said: -ERR ");
    expect(r.out).toContain("Cannot open the mailbox: the POP3 server does not offer STLS (it said: -ERR ");
    expect(r.out).toMatch(/Error in sending mail: 127\.0\.0\.1:\d+ does not offer STARTTLS/);
    expect(mailbox("carol")).not.toContain("never-sent");
  });

  test("mailclient without TLS against servers that require it: told to use TLS, and the password never goes out in the clear", async () => {
    const refused = await run(command("mailclient", ["127.0.0.1", String(strict.port), String(strictPop.port)]), ["bob", "bobpw", "3", ""].join("\n"));
    expect(refused.out).toContain("Cannot log in: the POP3 server requires TLS");
    expect(refused.out).toContain("--starttls or --tls");
    expect(refused.out).not.toContain("wrong username or password");
    expect(refused.code).toBe(1);
    // POP3 up without TLS, SMTP requiring it: Send Mail gets the server's 530, and no AUTH is tried.
    const input = ["bob", "bobpw", "2", "From: bob@mx.tls", "To: carol@mx.tls", "Subject: plain", "x", ".", "3", ""].join("\n");
    const smtpOnly = await run(command("mailclient", ["127.0.0.1", String(strict.port), String(pop.port)]), input);
    expect(smtpOnly.out).toContain("Error in sending mail: 530 Must issue a STARTTLS command first");
  });

  test("mailclient --tls with the wrong sender gets the server's 553 (AUTH is used since the server offers it)", async () => {
    const input = ["bob", "bobpw", "2", "From: alice@mx.tls", "To: carol@mx.tls", "Subject: forged", "x", ".", "3", ""].join("\n");
    const r = await run(command("mailclient", ["--tls", "--insecure", "127.0.0.1", String(strict.tlsPort), String(strictPop.tlsPort)]), input);
    expect(r.out).toContain("Error in sending mail: 553 <alice@mx.tls>... Sender address not owned by the authenticated user");
  });
});

describe.skipIf(!cert)("--require-tls and --require-auth", () => {
  test("SMTP: 530 before STARTTLS, 538 for AUTH, then 530 until AUTH, 535/235, 553 for someone else's address", async () => {
    const c = await SmtpConn.open(strict.port);
    try {
      expect(await c.code()).toBe(220);
      const ehlo = await c.cmd("EHLO plain.client");
      expect(ehlo).toContain("250-STARTTLS");
      expect(ehlo).not.toContain("AUTH");
      expect(await c.cmd("MAIL FROM:<alice@mx.strict>")).toBe("530 Must issue a STARTTLS command first\r\n");
      expect(await c.cmd("AUTH PLAIN AGFsaWNlAGFsaWNlcHc=")).toBe("538 Encryption required for requested authentication mechanism\r\n");
      expect(await c.cmd("QUIT")).toStartWith("221 ");
    } finally {
      c.destroy();
    }
    const tls = { serverName: "localhost", ca: cert!.pem };
    const base = { host: "127.0.0.1", port: strict.port, helo: "c", to: ["bob@mx.strict"], message: "Subject: strict\r\n\r\nx\r\n", timeoutMs: 10_000, starttls: tls };
    let r = await sendMail({ ...base, from: "alice@mx.strict" });
    expect(r.ok ? "" : r.reply.line).toBe("530 Authentication required");
    r = await sendMail({ ...base, from: "alice@mx.strict", auth: { user: "alice", password: "wrong" } });
    expect(r.ok ? "" : r.reply.line).toBe("535 Authentication credentials invalid");
    r = await sendMail({ ...base, from: "bob@mx.strict", auth: { user: "alice", password: "alicepw" } });
    expect(r.ok ? "" : r.reply.line).toBe("553 <bob@mx.strict>... Sender address not owned by the authenticated user");
    r = await sendMail({ ...base, from: "Alice@elsewhere.example", auth: { user: "alice", password: "alicepw" } });
    expect(r).toEqual({ ok: true });
  });

  test("POP3: USER refused and not advertised before STLS", async () => {
    const w = await Wire.open(strictPop.port);
    try {
      expect(await w.line()).toStartWith("+OK");
      w.write("CAPA\r\n");
      expect(await w.line()).toStartWith("+OK");
      const caps = (await w.multi()).toString();
      expect(caps).toContain("STLS\r\n");
      expect(caps).not.toContain("USER\r\n");
      expect(await w.cmd("USER alice")).toBe("-ERR TLS required: send STLS first");
      expect(await w.cmd("PASS alicepw")).toBe("-ERR TLS required: send STLS first");
    } finally {
      w.destroy();
    }
  });

  test("implicit-TLS port: a connection that never finishes its handshake counts against --max-connections and is closed at --timeout (both servers)", async () => {
    // helper-27: Bun hid such sockets until their handshake, so no limit or timeout reached them.
    const tls = ["--tls-cert", cert!.cert, "--tls-key", cert!.key, "--tls-port", "0", "--timeout", "1", "--max-connections", "3"];
    const servers = await Promise.all([startSmtp(root, tls), startPop(root, tls)]);
    running.push(...servers);
    for (const server of servers) {
      const silent = await Promise.all([1, 2, 3].map(() => Wire.open(server.tlsPort)));
      await Bun.sleep(200);
      // The limit is full: a plaintext newcomer is refused.
      const fourth = await Wire.open(server.port);
      expect(await fourth.line()).toMatch(/^(421 |-ERR )/);
      fourth.destroy();
      // The silent ones are let go at the idle timeout; then there is room again.
      for (const w of silent) expect(await w.waitClosed(5000)).toBe(true);
      const fifth = await Wire.open(server.port);
      expect(await fifth.line()).toMatch(/^(220 |\+OK)/);
      fifth.destroy();
    }
  });

  test("the implicit-TLS port does not speak plaintext, and the server survives garbage", async () => {
    const w = await Wire.open(smtp.tlsPort);
    w.write("EHLO plain\r\n");
    await Bun.sleep(300);
    expect(w.pending.toString("latin1")).not.toContain("220");
    w.destroy();
    const c = await SmtpConn.open(smtp.port);
    expect(await c.code()).toBe(220);
    c.destroy();
  });
});

describe.skipIf(!cert)("certificate files checked at start-up", () => {
  test("a key that is not the certificate's: each server stops with one line naming both files, exit 1", async () => {
    const other = makeCert()!;
    try {
      for (const program of ["smtpmail", "popserver"] as const) {
        const r = await run(command(program, ["0", "--root", root, "--host", "127.0.0.1", "--tls-cert", cert!.cert, "--tls-key", other.key]));
        expect(r.code).toBe(1);
        expect(r.err.trim().split("\n")).toHaveLength(1);
        expect(r.err).toContain(`unusable certificate or key (${cert!.cert}, ${other.key})`);
        expect(r.out).not.toContain("listening");
      }
    } finally {
      other.remove();
    }
  });
});
