// A mail root on a small tmpfs that fills up: nothing acknowledged is lost, nothing unstored is
// acknowledged, nothing is left behind, and delivery goes on once there is room again. Needs
// root (to mount a tmpfs); skipped elsewhere.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { scanBuffer } from "../lib/mailbox-scanner.ts";
import { sendMail } from "../lib/smtp-client.ts";
import { Pop3Client, Pop3Error } from "../lib/pop3-client.ts";
import { command, startPop, startSmtp, type Running } from "./helpers/servers.ts";

const mnt = mkdtempSync(join(tmpdir(), "fulldisk-"));
const mount = (...opts: string[]) => spawnSync("mount", ["-t", "tmpfs", "-o", opts.join(","), "tmpfs", mnt]).status === 0;
const canMount = process.getuid?.() === 0 && mount("size=12m");
if (!canMount) console.warn("SKIP full-disk tests: mounting a tmpfs needs root");
const root = join(mnt, "root");

beforeAll(() => {
  if (!canMount) return;
  mkdirSync(join(root, "alice"), { recursive: true });
  writeFileSync(join(root, "user.txt"), "alice alicepw\n");
});
afterAll(() => {
  if (canMount) spawnSync("umount", ["-l", mnt]);
  rmSync(mnt, { recursive: true, force: true });
});

const box = () => readFileSync(join(root, "alice", "mymailbox"));
/** Fills the disk with a file "filler" but for about `left` bytes. */
function fillAllBut(left: number): void {
  const free = Number(spawnSync("df", ["-B1", "--output=avail", mnt]).stdout.toString().trim().split("\n")[1]);
  writeFileSync(join(mnt, "filler"), Buffer.alloc(Math.max(0, free - left)));
}
function subjects(file: Buffer): string[] {
  return scanBuffer(file).messages.map((m) => /Subject: (m\d+)/.exec(file.toString("latin1", m.offset, m.offset + 100))![1]!);
}
/** Files beside the mailbox other than torn tails set aside and a running server's lock temp file. */
const litter = (running?: Running) =>
  readdirSync(join(root, "alice")).filter((f) => f !== "mymailbox" && !f.startsWith("mymailbox.torn-") && !(running && f.includes(`.${running.proc.pid}.`)));
const body = ("x".repeat(76) + "\r\n").repeat(1300); // ~100 KB

async function send(port: number, n: number): Promise<{ ok: boolean; code: number }> {
  const r = await sendMail({ host: "127.0.0.1", port, helo: "test", from: "a@b", to: ["alice@x"], message: `Subject: m${n}\r\n\r\n${body}` });
  return { ok: r.ok, code: r.ok ? 250 : r.reply.code };
}

describe.skipIf(!canMount)("a mail root on a disk that fills up", () => {
  let smtp: Running | undefined;
  const acked: string[] = [];
  // Stopped by the second test; a failure before that must not leave it running.
  afterAll(async () => {
    await smtp?.stop();
  });

  test("SMTP: every 250 is stored; once full, 451 and nothing half-written is left behind", async () => {
    smtp = await startSmtp(root);
    const codes = new Set<number>();
    for (let n = 0; n < 80; n++) {
      const r = await send(smtp.port, n);
      codes.add(r.code);
      if (r.ok) acked.push(`m${n}`);
    }
    expect(acked.length).toBeGreaterThan(10);
    expect(acked.length).toBeLessThan(80);
    expect([...codes].sort()).toEqual([250, 451]);
    expect(subjects(box())).toEqual(acked);
    // A failed append is cut off at once: the file ends with a whole message (a partial one
    // stayed until the next append set it aside, helper-83), no lock temp file per attempt.
    expect(scanBuffer(box()).validEnd).toBe(box().length);
    expect(litter(smtp)).toEqual([]);
    expect(readdirSync(join(root, "alice")).filter((f) => f.startsWith("mymailbox.torn-"))).toEqual([]);
  });

  test("with room again, delivery goes on, with nothing to set aside", async () => {
    expect(mount("remount", "size=24m")).toBe(true);
    for (let n = 100; n < 105; n++) {
      expect((await send(smtp!.port, n)).ok).toBe(true);
      acked.push(`m${n}`);
    }
    expect(subjects(box())).toEqual(acked);
    expect(scanBuffer(box()).validEnd).toBe(box().length);
    expect(readdirSync(join(root, "alice")).filter((f) => f.startsWith("mymailbox.torn-"))).toEqual([]);
    await smtp!.stop();
    expect(litter()).toEqual([]);
  });

  test("POP3: a QUIT whose rewrite finds no room answers -ERR and leaves the mailbox as it was", async () => {
    const before = box();
    fillAllBut(256 * 1024);
    const pop = await startPop(root);
    try {
      const c = await Pop3Client.connect("127.0.0.1", pop.port);
      await c.login("alice", "alicepw");
      await c.dele(1);
      const quit = await c.quit().then(
        () => "ok",
        (e: Pop3Error) => e.text,
      );
      expect(quit).toContain("ENOSPC");
      expect(box().equals(before)).toBe(true);
      expect(litter()).toEqual([]);
    } finally {
      await pop.stop();
      rmSync(join(mnt, "filler"));
    }
  });

  test("smtpmail does not start where it cannot make its journal: one line, exit 1", async () => {
    fillAllBut(64 * 1024);
    try {
      const p = Bun.spawn(command("smtpmail", ["0", "--root", root, "--host", "127.0.0.1"]), { stdout: "pipe", stderr: "pipe" });
      // One that starts after all is stopped, not waited for.
      const timer = setTimeout(() => p.kill("SIGKILL"), 15_000);
      const [err, code] = await Promise.all([new Response(p.stderr).text(), p.exited]).finally(() => clearTimeout(timer));
      expect(code).toBe(1);
      expect(err.trim().split("\n")).toHaveLength(1);
      expect(err).toContain("cannot prepare the delivery journal");
      expect(err).toContain("ENOSPC");
      expect(existsSync(join(root, "alice", "mymailbox"))).toBe(true);
      expect(subjects(box())).toEqual(acked);
    } finally {
      rmSync(join(mnt, "filler"));
    }
  });
});
