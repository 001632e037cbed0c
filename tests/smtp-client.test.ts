import { afterEach, describe, expect, test } from "bun:test";
import { encodeData, formatReply, sendMail, SmtpClient } from "../lib/smtp-client.ts";
import { closedPort, fakeSmtp, startFake, stopFakes, tick, type FakeConn } from "./helpers/client-fake-server.ts";

afterEach(stopFakes);

/**
 * A scripted SMTP server: `answer` replies to a command (true) or leaves it (false) to the
 * common part, which takes DATA, says goodbye to QUIT and 500 to the rest.
 */
function scriptedSmtp(answer: (verb: string, line: string, c: FakeConn) => boolean) {
  return startFake(async (c) => {
    c.send("220 fake.test Service ready\r\n");
    for (;;) {
      const line = await c.readLine();
      if (line === null) return;
      const verb = line.split(" ")[0]!.toUpperCase();
      if (answer(verb, line, c)) continue;
      if (verb === "DATA") {
        c.send("354 go\r\n");
        while ((await c.readLine()) !== ".");
        c.send("250 queued\r\n");
      } else if (verb === "QUIT") {
        c.send("221 bye\r\n");
        c.end();
        return;
      } else c.send("500 what\r\n");
    }
  });
}
const ehloReply = (lines: string[]) => lines.map((e, i) => `250${i === lines.length - 1 ? " " : "-"}${e}\r\n`).join("");

describe("encodeData", () => {
  test("dot-stuffs every line starting with '.', CRLF line ends, terminator", () => {
    expect(encodeData("a\n.\n..\n.x\nb")).toBe("a\r\n..\r\n...\r\n..x\r\nb\r\n.\r\n");
  });
  test("does not add a blank line when the message already ends with a line end", () => {
    expect(encodeData("a\r\nb\r\n")).toBe("a\r\nb\r\n.\r\n");
    expect(encodeData("a\rb\n")).toBe("a\r\nb\r\n.\r\n");
  });
  test("keeps blank lines and an empty message is just the terminator", () => {
    expect(encodeData("a\n\n\nb\n")).toBe("a\r\n\r\n\r\nb\r\n.\r\n");
    expect(encodeData("")).toBe(".\r\n");
    expect(encodeData("\n")).toBe("\r\n.\r\n");
  });
});

describe("SmtpClient", () => {
  test("multi-line replies split across chunks at awkward places", async () => {
    const srv = startFake(async (c) => {
      c.send("220-first gre");
      await tick();
      c.send("eting line\r");
      await tick();
      c.send("\n220 second\r\n");
      await c.readLine();
      for (const piece of ["250-fake.test hello\r\n250-PIPE", "LINING\r\n25", "0 8BITMIME\r\n"]) {
        c.send(piece);
        await tick();
      }
      await c.readLine();
      c.send("221 bye\r\n");
      c.end();
    });
    const client = await SmtpClient.connect("127.0.0.1", srv.port);
    const greeting = await client.greeting();
    expect(greeting).toEqual({
      code: 220,
      text: "first greeting line\nsecond",
      line: "220 second",
      lines: ["220-first greeting line", "220 second"],
    });
    const ehlo = await client.command("EHLO me");
    expect(ehlo.code).toBe(250);
    expect(ehlo.text).toBe("fake.test hello\nPIPELINING\n8BITMIME");
    expect(ehlo.line).toBe("250 8BITMIME");
    expect((await client.quit())?.code).toBe(221);
  });

  test("a reply that never ends (endless continuation lines) fails after 1000 lines, not held in memory", async () => {
    const srv = startFake(async (c) => {
      for (let i = 0; i < 1500; i++) c.send("220-still greeting\r\n");
    });
    const client = await SmtpClient.connect("127.0.0.1", srv.port);
    await expect(client.greeting()).rejects.toThrow(/more than 1000 lines/);
  });

  test("pipelined commands get their own replies in order, even when they arrive in one chunk", async () => {
    const srv = startFake(async (c) => {
      c.send("220 hi\r\n");
      for (let i = 0; i < 3; i++) await c.readLine();
      c.send("250-one\r\n250 one done\r\n250 two\r\n550-three\r\n550 No such user\r\n");
      await c.readLine();
      c.end();
    });
    const client = await SmtpClient.connect("127.0.0.1", srv.port);
    await client.greeting();
    const replies = await Promise.all([client.command("MAIL FROM:<a@b>"), client.command("RCPT TO:<c@d>"), client.command("RCPT TO:<x@d>")]);
    expect(replies.map((r) => r.text)).toEqual(["one\none done", "two", "three\nNo such user"]);
    expect(formatReply(replies[2]!)).toBe("550-three\n550 No such user");
    await client.quit();
  });

  test("a reply that is just a code, and a malformed reply", async () => {
    const srv = startFake(async (c) => {
      c.send("220\r\n");
      await c.readLine();
      c.send("hello there\r\n");
    });
    const client = await SmtpClient.connect("127.0.0.1", srv.port);
    await expect(await client.greeting()).toMatchObject({ code: 220, text: "", line: "220" });
    await expect(client.command("NOOP")).rejects.toThrow(/malformed reply.*hello there/);
  });

  test("commands with CR or LF are refused before anything is sent", async () => {
    const srv = startFake((c) => c.send("220 hi\r\n"));
    const client = await SmtpClient.connect("127.0.0.1", srv.port);
    await client.greeting();
    await expect(client.command("MAIL FROM:<a@b>\r\nRCPT TO:<x@y>")).rejects.toThrow(/CR or LF/);
    client.close();
  });

  test("refused port rejects with a clear message", async () => {
    const port = closedPort();
    await expect(SmtpClient.connect("127.0.0.1", port)).rejects.toThrow(`cannot connect to 127.0.0.1:${port}: connection refused`);
  });

  test("unknown host rejects with a clear message", async () => {
    await expect(SmtpClient.connect("no-such-host.invalid", 25)).rejects.toThrow(/cannot connect to no-such-host\.invalid:25: /);
  });

  test("a connection dropped mid-reply rejects instead of hanging", async () => {
    const srv = startFake(async (c) => {
      c.send("220-partial\r\n");
      await tick();
      c.drop();
    });
    const client = await SmtpClient.connect("127.0.0.1", srv.port);
    await expect(client.greeting()).rejects.toThrow(/connection (closed by|to) 127\.0\.0\.1/);
  });

  test("a silent server times out", async () => {
    const srv = startFake(() => {});
    const client = await SmtpClient.connect("127.0.0.1", srv.port, { timeoutMs: 200 });
    await expect(client.greeting()).rejects.toThrow(/timed out waiting for 127\.0\.0\.1/);
  });
});

describe("sendMail", () => {
  test("the whole transaction, with the message dot-stuffed on the wire and intact at the end", async () => {
    const delivered: Array<{ from: string; to: string; data: string }> = [];
    const srv = fakeSmtp({ users: ["bob"], delivered });
    const message = "From: al@x\r\nTo: bob@y\r\nSubject: dots\r\n.\r\n..\r\n.x\r\nend\r\n";
    const result = await sendMail({ host: "127.0.0.1", port: srv.port, helo: "home.test", from: "al@x", to: ["bob@y"], message });
    expect(result).toEqual({ ok: true });
    expect(delivered).toEqual([{ from: "al@x", to: "bob@y", data: message }]);
    const wire = srv.conns[0]!.received;
    expect(wire.slice(0, 4)).toEqual(["HELO home.test", "MAIL FROM:<al@x>", "RCPT TO:<bob@y>", "DATA"]);
    expect(wire.slice(4)).toEqual(["From: al@x", "To: bob@y", "Subject: dots", "..", "...", "..x", "end", ".", "QUIT"]);
  });

  test("an unknown recipient returns the server's 550 reply and still says QUIT", async () => {
    const delivered: Array<{ from: string; to: string; data: string }> = [];
    const srv = fakeSmtp({ users: ["bob"], delivered });
    const result = await sendMail({ host: "127.0.0.1", port: srv.port, helo: "h", from: "al@x", to: ["eve@y"], message: "x\r\n" });
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.reply).toMatchObject({ code: 550, line: "550 No such user" });
    expect(delivered).toEqual([]);
    expect(srv.conns[0]!.received.at(-1)).toBe("QUIT");
  });

  test("a server that is not ready (554 greeting) is a failed result, not an exception", async () => {
    const srv = startFake(async (c) => {
      c.send("554 go away\r\n");
      await c.readLine();
      c.end();
    });
    const result = await sendMail({ host: "127.0.0.1", port: srv.port, helo: "h", from: "a@b", to: ["c@d"], message: "" });
    expect(result).toMatchObject({ ok: false, reply: { code: 554, text: "go away" } });
  });

  test("a connection dropped during DATA rejects", async () => {
    const srv = startFake(async (c) => {
      c.send("220 hi\r\n");
      for (const reply of ["250 ok", "250 ok", "250 ok", "354 go"]) {
        await c.readLine();
        c.send(reply + "\r\n");
      }
      await c.readLine();
      c.drop();
    });
    await expect(sendMail({ host: "127.0.0.1", port: srv.port, helo: "h", from: "a@b", to: ["c@d"], message: "x\r\n" })).rejects.toThrow(
      /connection/,
    );
  });

  test("an unreachable server rejects with a clear message", async () => {
    const port = closedPort();
    await expect(sendMail({ host: "127.0.0.1", port, helo: "h", from: "a@b", to: ["c@d"], message: "" })).rejects.toThrow(
      `cannot connect to 127.0.0.1:${port}: connection refused`,
    );
  });

  test("a large message goes out whole (write backpressure)", async () => {
    const delivered: Array<{ from: string; to: string; data: string }> = [];
    const srv = fakeSmtp({ users: ["bob"], delivered });
    const line = "x".repeat(900);
    const message = Array.from({ length: 20_000 }, (_, i) => (i % 7 === 0 ? "." : "") + line + i + "\r\n").join("");
    const result = await sendMail({ host: "127.0.0.1", port: srv.port, helo: "h", from: "a@b", to: ["bob@y"], message });
    expect(result).toEqual({ ok: true });
    expect(delivered[0]!.data.length).toBe(message.length);
    expect(delivered[0]!.data === message).toBe(true);
  });
});

describe("sendMail with a UTF-8 address (RFC 6531)", () => {
  /** A scripted server that offers `ehlo` (or refuses EHLO with 500 when null) and takes any mail. */
  const server = (ehlo: string[] | null) =>
    scriptedSmtp((verb, _line, c) => {
      if (verb === "EHLO") c.send(ehlo ? ehloReply(ehlo) : "500 what\r\n");
      else if (verb === "HELO" || verb === "MAIL" || verb === "RCPT") c.send("250 ok\r\n");
      else return false;
      return true;
    });
  const send = (port: number, from: string, to = "bob@x") => sendMail({ host: "127.0.0.1", port, helo: "me", from, to: [to], message: "Subject: s\r\n\r\nx\r\n" });
  const verbs = (srv: ReturnType<typeof server>) => srv.conns[0]!.received.filter((l) => /^[A-Z]{4} /.test(l)).slice(0, 2);

  test("EHLO, and MAIL with SMTPUTF8 where the server offers it; plain ASCII mail keeps the assignment's HELO", async () => {
    const srv = server(["fake.test", "SMTPUTF8"]);
    expect(await send(srv.port, "jürgen@x")).toEqual({ ok: true });
    expect(verbs(srv)).toEqual(["EHLO me", "MAIL FROM:<jürgen@x> SMTPUTF8"]);
    expect(await send(srv.port, "al@x", "zoë@x")).toEqual({ ok: true });
    expect(srv.conns[1]!.received.slice(0, 2)).toEqual(["EHLO me", "MAIL FROM:<al@x> SMTPUTF8"]);
    expect(await send(srv.port, "al@x")).toEqual({ ok: true });
    expect(srv.conns[2]!.received.slice(0, 2)).toEqual(["HELO me", "MAIL FROM:<al@x>"]);
  });

  test("EHLO for SMTPUTF8 in the clear does not send the password: AUTH still waits for a 530 (helper-90)", async () => {
    const srv = server(["fake.test", "SMTPUTF8", "AUTH PLAIN LOGIN"]);
    const r = await sendMail({ host: "127.0.0.1", port: srv.port, helo: "me", from: "al@x", to: ["zoë@x"], message: "Subject: s\r\n\r\nx\r\n", auth: { user: "alice", password: "pw" } });
    expect(r).toEqual({ ok: true });
    expect(srv.conns[0]!.received.some((l) => l.startsWith("AUTH"))).toBe(false);
    expect(verbs(srv)).toEqual(["EHLO me", "MAIL FROM:<al@x> SMTPUTF8"]);
  });

  test("without SMTPUTF8 offered, MAIL goes plain (the server's answer is the result); a server without EHLO gets HELO", async () => {
    const srv = server(["fake.test"]);
    expect(await send(srv.port, "jürgen@x")).toEqual({ ok: true });
    expect(verbs(srv)).toEqual(["EHLO me", "MAIL FROM:<jürgen@x>"]);
    const old = server(null);
    expect(await send(old.port, "jürgen@x")).toEqual({ ok: true });
    expect(old.conns[0]!.received.slice(0, 3)).toEqual(["EHLO me", "HELO me", "MAIL FROM:<jürgen@x>"]);
  });
});

describe("sendMail and a 530 after HELO (the assignment's dialogue, no TLS asked for)", () => {
  /** A scripted server: MAIL is answered 530 `why` until AUTH; EHLO offers `ehlo`. */
  function server(why: string, ehlo: string[]) {
    let authed = false;
    return scriptedSmtp((verb, line, c) => {
      if (verb === "HELO") c.send("250 fake.test\r\n");
      else if (verb === "EHLO") c.send(ehloReply(ehlo));
      else if (verb === "AUTH") {
        authed = line === `AUTH PLAIN ${Buffer.from("\0alice\0pw").toString("base64")}`;
        c.send(authed ? "235 ok\r\n" : "535 no\r\n");
      } else if (verb === "MAIL") c.send(authed ? "250 ok\r\n" : `530 ${why}\r\n`);
      else if (verb === "RCPT") c.send("250 ok\r\n");
      else return false;
      return true;
    });
  }
  const mail = (port: number) =>
    sendMail({ host: "127.0.0.1", port, helo: "me", from: "alice@x", to: ["bob@x"], message: "Subject: s\r\n\r\nx\r\n", auth: { user: "alice", password: "pw" } });

  test("a server that offers AUTH here gets it, and the mail goes", async () => {
    const srv = server("Authentication required", ["fake.test", "AUTH PLAIN LOGIN"]);
    expect(await mail(srv.port)).toEqual({ ok: true });
    expect(srv.conns[0]!.received.map((l) => l.split(" ")[0])).toEqual(["HELO", "MAIL", "EHLO", "AUTH", "MAIL", "RCPT", "DATA", "Subject:", "", "x", ".", "QUIT"]);
  });

  test("a server that wants STARTTLS first never sees the password: its 530 is the result", async () => {
    // helper-27: the client answered "530 Must issue a STARTTLS command first" with AUTH PLAIN.
    const srv = server("Must issue a STARTTLS command first", ["fake.test", "STARTTLS"]);
    const r = await mail(srv.port);
    expect(r.ok ? "" : r.reply.line).toBe("530 Must issue a STARTTLS command first");
    expect(srv.conns[0]!.received.some((l) => l.startsWith("AUTH"))).toBe(false);
  });
});
