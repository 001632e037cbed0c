// Both servers start themselves again without the FTL JIT (lib/jit.ts): same PID, same
// command line and process name, the environment they were started with, and an option the
// user set is left alone. Runs on the compiled executables too.
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { command, makeRoot, PROJECT, removeRoot, startPop, startSmtp } from "./helpers/servers.ts";
import { FTL_OPTION } from "../lib/jit.ts";

const root = makeRoot();
// Bun reads a script's .env from the working directory (the servers run in the root).
writeFileSync(join(root, ".env"), "MAILTEST_DOTENV_SECRET=hunter2\n");
afterAll(() => removeRoot(root));

function procList(pid: number, file: "environ" | "cmdline"): string[] {
  return readFileSync(`/proc/${pid}/${file}`, "latin1").split("\0").filter(Boolean);
}

async function greeting(port: number): Promise<string> {
  const { promise, resolve } = Promise.withResolvers<string>();
  const s = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      data(sock, chunk) {
        resolve(chunk.toString());
        sock.end();
      },
    },
  });
  const text = await promise;
  s.end();
  return text;
}

describe.each([
  ["smtpmail", startSmtp, /^220 /],
  ["popserver", startPop, /^\+OK /],
] as const)("%s", (program, start, greets) => {
  test("runs without FTL in the process that was started, with its command line, name and environment", async () => {
    // Whatever the test runner's own environment holds.
    const server = await start(root, ["--quiet"], ["env", "-u", FTL_OPTION]);
    try {
      const env = procList(server.proc.pid, "environ");
      expect(env).toContain(`${FTL_OPTION}=0`);
      expect(env.some((v) => v.startsWith("MAILTEST_DOTENV_SECRET="))).toBe(false);
      const cmd = command(program, ["0", "--root", root, "--host", "127.0.0.1", "--quiet"]);
      expect(procList(server.proc.pid, "cmdline")).toEqual(cmd);
      expect(readFileSync(`/proc/${server.proc.pid}/comm`, "latin1").trim()).toBe(basename(cmd[0]!).slice(0, 15));
      expect(await greeting(server.port)).toMatch(greets);
    } finally {
      expect(await server.stop()).toBe(0);
    }
  });

  test("an environment value that is not UTF-8 (a latin1 path): no restart, the value kept byte for byte", async () => {
    const server = await start(root, [], ["env", "-u", FTL_OPTION, "sh", "-c", 'export MAILTEST_LATIN1="caf$(printf "\\351")"; exec "$0" "$@"']);
    try {
      const raw = readFileSync(`/proc/${server.proc.pid}/environ`);
      expect(raw.includes(Buffer.from("MAILTEST_LATIN1=caf\xe9\0", "latin1"))).toBe(true);
      expect(raw.includes(Buffer.from(`${FTL_OPTION}=`))).toBe(false);
      expect(await greeting(server.port)).toMatch(greets);
    } finally {
      expect(await server.stop()).toBe(0);
    }
  });

  test("an FTL option set by the user is kept", async () => {
    const server = await start(root, [], ["env", `${FTL_OPTION}=1`]);
    try {
      const env = procList(server.proc.pid, "environ").filter((v) => v.startsWith(`${FTL_OPTION}=`));
      expect(env).toEqual([`${FTL_OPTION}=1`]);
      expect(await greeting(server.port)).toMatch(greets);
    } finally {
      expect(await server.stop()).toBe(0);
    }
  });
});

test.skipIf(!!process.env.MAIL_TEST_BIN)("bun --cwd with a relative directory: the restart does not apply it twice", async () => {
  const proc = Bun.spawn([process.execPath, "--cwd", basename(root), join(PROJECT, "smtpmail.ts"), "0", "--root", root, "--host", "127.0.0.1"], {
    cwd: dirname(root),
    env: Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== FTL_OPTION)),
    stdout: "pipe",
    stderr: "pipe",
  });
  try {
    const reader = proc.stdout.getReader();
    let out = "";
    const deadline = Date.now() + 15_000;
    while (!/\n/.test(out) && Date.now() < deadline) {
      const { value, done } = await reader.read();
      if (done) break;
      out += new TextDecoder().decode(value);
    }
    expect(out).toMatch(/listening on 127\.0\.0\.1 port \d+/);
  } finally {
    proc.kill();
    await proc.exited;
  }
});
