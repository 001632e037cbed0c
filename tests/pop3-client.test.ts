import { afterEach, describe, expect, test } from "bun:test";
import { Pop3Client, Pop3Error } from "../lib/pop3-client.ts";
import { closedPort, fakePop3, startFake, type FakeMail, stopFakes, tick } from "./helpers/client-fake-server.ts";

afterEach(stopFakes);

function mailbox(): FakeMail[] {
  return [
    { text: "From: a@b\r\nTo: bob@y\r\nSubject: one\r\nReceived: 2026-12-01 : 04 : 27\r\nhello\r\n" },
    { text: "From: c@d\r\nTo: bob@y\r\nSubject: dots\r\nReceived: 2026-12-01 : 05 : 00\r\n.\r\n..\r\n.x\r\n...\r\n\r\nend\r\n" },
  ];
}

async function connected(mails = mailbox(), top = true) {
  const srv = fakePop3({ user: "bob", pass: "pw secret", mailbox: mails, top });
  const pop = await Pop3Client.connect("127.0.0.1", srv.port);
  await pop.login("bob", "pw secret");
  return { srv, pop, mails };
}

describe("Pop3Client against a scripted server", () => {
  test("greeting, STAT, LIST, UIDL-less CAPA, RETR, TOP, NOOP, QUIT", async () => {
    const { pop, mails } = await connected();
    expect(pop.greeting).toBe("fake POP3 ready");
    expect(await pop.stat()).toEqual({ count: 2, size: mails[0]!.text.length + mails[1]!.text.length });
    expect(await pop.list()).toEqual([
      { n: 1, size: mails[0]!.text.length },
      { n: 2, size: mails[1]!.text.length },
    ]);
    expect(await pop.capa()).toEqual(["USER", "TOP", "UIDL"]);
    expect(await pop.retr(1)).toBe(mails[0]!.text);
    expect(await pop.top(1, 0)).toBe("From: a@b\r\nTo: bob@y\r\nSubject: one\r\nReceived: 2026-12-01 : 04 : 27\r\n");
    expect(await pop.noop()).toBe("");
    expect(await pop.quit()).toBe("goodbye");
  });

  test("dot-stuffed lines '.', '..', '.x' come back exactly as stored", async () => {
    const { pop, mails } = await connected();
    const text = await pop.retr(2);
    expect(text).toBe(mails[1]!.text);
    expect(text.length).toBe((await pop.list())[1]!.size);
    await pop.quit();
  });

  test("-ERR surfaces as Pop3Error with the server's text", async () => {
    const { pop } = await connected();
    const err = await pop.retr(9).catch((e) => e);
    expect(err).toBeInstanceOf(Pop3Error);
    expect(err.command).toBe("RETR");
    expect(err.text).toBe("no such message");
    expect(err.message).toBe("RETR failed: -ERR no such message");
    // The session is still usable after a -ERR.
    expect((await pop.stat()).count).toBe(2);
    await pop.quit();
  });

  test("wrong password is a Pop3Error on PASS", async () => {
    const srv = fakePop3({ user: "bob", pass: "pw", mailbox: [] });
    const pop = await Pop3Client.connect("127.0.0.1", srv.port);
    const err = await pop.login("bob", "nope").catch((e) => e);
    expect(err).toBeInstanceOf(Pop3Error);
    expect(err).toMatchObject({ command: "PASS", text: "invalid user or password" });
    pop.close();
  });

  test("DELE, RSET and the deletion committed at QUIT", async () => {
    const { srv, pop, mails } = await connected();
    expect(await pop.dele(1)).toBe("message 1 deleted");
    expect(await pop.list()).toEqual([{ n: 2, size: mails[1]!.text.length }]);
    await pop.rset();
    expect((await pop.list()).length).toBe(2);
    await pop.dele(2);
    await pop.quit();
    expect(mails.length).toBe(1);
    expect(mails[0]!.text).toContain("Subject: one");
    expect(srv.conns[0]!.received.slice(-1)).toEqual(["QUIT"]);
  });

  test("responses split across chunks and many lines in one chunk", async () => {
    const srv = startFake(async (c) => {
      c.send("+OK hel");
      await tick();
      c.send("lo\r\n");
      await c.readLine(); // UIDL
      c.send("+OK\r\n1 abc\r");
      await tick();
      c.send("\n2 d");
      await tick();
      c.send("ef\r\n.");
      await tick();
      c.send("\r\n+OK 2 30\r\n"); // the STAT reply arrives before STAT is sent
      await c.readLine();
      await c.readLine();
      c.send("+OK bye\r\n");
      c.end();
    });
    const pop = await Pop3Client.connect("127.0.0.1", srv.port);
    expect(pop.greeting).toBe("hello");
    expect(await pop.uidl()).toEqual([
      { n: 1, uid: "abc" },
      { n: 2, uid: "def" },
    ]);
    expect(await pop.stat()).toEqual({ count: 2, size: 30 });
    expect(await pop.quit()).toBe("bye");
  });

  test("pipelined calls get their own responses in order", async () => {
    const { pop, mails } = await connected();
    const [list, one, two, stat] = await Promise.all([pop.list(), pop.retr(1), pop.retr(2), pop.stat()]);
    expect(list.length).toBe(2);
    expect(one).toBe(mails[0]!.text);
    expect(two).toBe(mails[1]!.text);
    expect(stat.count).toBe(2);
    await pop.quit();
  });

  test("commands go out before earlier responses arrive (RFC 2449 pipelining)", async () => {
    // Nothing is answered until both commands are in: a client that waits would stall here.
    const srv = startFake(async (c) => {
      c.send("+OK hi\r\n");
      const first = await c.readLine();
      const second = await c.readLine();
      c.send(`+OK\r\nX-First: ${first}\r\n.\r\n-ERR no ${second}\r\n`);
    });
    const pop = await Pop3Client.connect("127.0.0.1", srv.port, { timeoutMs: 5000 });
    const [a, b] = await Promise.allSettled([pop.top(1, 0), pop.top(2, 0)]);
    expect(a).toEqual({ status: "fulfilled", value: "X-First: TOP 1 0\r\n" });
    expect(b.status === "rejected" && b.reason).toMatchObject({ text: "no TOP 2 0" });
    pop.close();
  });

  test("a multi-line response that never ends is cut at the limit with one clear error, not held in memory", async () => {
    const srv = startFake(async (c) => {
      c.send("+OK hi\r\n");
      await c.readLine();
      c.send("+OK listing follows\r\n");
      // Bounded here; the client gives up long before.
      for (let i = 0; i < 2000; i++) c.send(`${i + 1} 100\r\n`);
    });
    const pop = await Pop3Client.connect("127.0.0.1", srv.port, { timeoutMs: 5000, maxBlockBytes: 10_000 });
    await expect(pop.list()).rejects.toThrow(/larger than 10000 bytes without its end/);
    pop.close();
  });

  test("short lines count what they cost, not their characters: 2000 lines of 'n 1' pass a limit of 100,000 characters, not of 100,000 bytes (helper-94)", async () => {
    const srv = startFake(async (c) => {
      c.send("+OK hi\r\n");
      await c.readLine();
      c.send("+OK listing follows\r\n");
      for (let i = 0; i < 2000; i++) c.send(`${i + 1} 1\r\n`);
      c.send(".\r\n");
    });
    const pop = await Pop3Client.connect("127.0.0.1", srv.port, { timeoutMs: 5000, maxBlockBytes: 100_000 });
    await expect(pop.list()).rejects.toThrow(/larger than 100000 bytes without its end/);
    pop.close();
  });

  test("a large RETR with many dot-stuffed lines round-trips byte for byte", async () => {
    const lines: string[] = ["From: big@x", "To: bob@y", "Subject: big"];
    for (let i = 0; i < 100_000; i++) lines.push([".", "..", ".x", "plain line " + i, ""][i % 5]!);
    const text = lines.join("\r\n") + "\r\n";
    const { pop } = await connected([{ text }]);
    const got = await pop.retr(1);
    expect(got.length).toBe(text.length);
    expect(got === text).toBe(true);
    await pop.quit();
  });

  test("a -ERR greeting rejects with Pop3Error", async () => {
    const srv = startFake((c) => c.send("-ERR too busy\r\n"));
    const err = await Pop3Client.connect("127.0.0.1", srv.port).catch((e) => e);
    expect(err).toBeInstanceOf(Pop3Error);
    expect(err.text).toBe("too busy");
  });

  test("a garbled response is a clear error", async () => {
    const srv = startFake((c) => c.send("220 this is SMTP\r\n"));
    await expect(Pop3Client.connect("127.0.0.1", srv.port)).rejects.toThrow(/malformed POP3 response to greeting/);
  });

  test("a connection dropped in the middle of RETR rejects instead of hanging", async () => {
    const srv = startFake(async (c) => {
      c.send("+OK hi\r\n");
      await c.readLine();
      c.send("+OK\r\nFrom: a@b\r\npart of the bo");
      await tick();
      c.drop();
    });
    const pop = await Pop3Client.connect("127.0.0.1", srv.port);
    await expect(pop.retr(1)).rejects.toThrow(/connection/);
  });

  test("refused port and timeout", async () => {
    const port = closedPort();
    await expect(Pop3Client.connect("127.0.0.1", port)).rejects.toThrow(`cannot connect to 127.0.0.1:${port}: connection refused`);
    const srv = startFake(() => {});
    await expect(Pop3Client.connect("127.0.0.1", srv.port, { timeoutMs: 200 })).rejects.toThrow(/timed out/);
  });

  test("arguments with CR or LF are refused", async () => {
    const { pop } = await connected();
    await expect(pop.user("bob\r\nDELE 1")).rejects.toThrow(/CR or LF/);
    expect((await pop.stat()).count).toBe(2);
    await pop.quit();
  });
});
