// Starts the real programs as child processes for end-to-end tests. With MAIL_TEST_BIN=dist
// (or another directory) the compiled executables are used instead of the scripts, so the
// same tests check what users actually run.
import { mkdtempSync, mkdirSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";
import { own } from "./children.ts";

export const PROJECT = resolve(import.meta.dir, "../..");
const BIN_DIR = process.env.MAIL_TEST_BIN ? resolve(PROJECT, process.env.MAIL_TEST_BIN) : null;

/** The command line that runs one of the three programs. */
export function command(program: "smtpmail" | "popserver" | "mailclient", args: string[]): string[] {
  return BIN_DIR ? [join(BIN_DIR, program), ...args] : [process.execPath, join(PROJECT, `${program}.ts`), ...args];
}

/** A temporary mail root with user.txt and one directory per user. */
export function makeRoot(users: Record<string, string> = { alice: "alicepw", bob: "bobpw" }): string {
  const root = mkdtempSync(join(tmpdir(), "mailroot-"));
  writeFileSync(join(root, "user.txt"), Object.entries(users).map(([u, p]) => `${u} ${p}\n`).join(""));
  for (const u of Object.keys(users)) mkdirSync(join(root, u));
  return root;
}

export function removeRoot(root: string): void {
  rmSync(root, { recursive: true, force: true });
}

export interface Running {
  port: number;
  /** The implicit-TLS port, when started with --tls-port. */
  tlsPort: number;
  proc: Subprocess<"ignore", "pipe", "pipe">;
  /** Everything the server wrote to stderr so far. */
  log(): string;
  /** Sends the signal and waits for the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number>;
}

/** `prefix`: a command the server runs under, such as prlimit. */
async function start(program: "smtpmail" | "popserver", root: string, args: string[], prefix: string[] = []): Promise<Running> {
  // Recorded at once: the run's last hook (tests/helpers/preload.ts) stops a server its test left running.
  const proc = own(
    Bun.spawn([...prefix, ...command(program, ["0", "--root", root, "--host", "127.0.0.1", ...args])], {
      cwd: root,
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
    }),
  );
  let errText = "";
  void (async () => {
    const dec = new TextDecoder();
    for await (const chunk of proc.stderr) errText += dec.decode(chunk, { stream: true });
  })();
  const reader = proc.stdout.getReader();
  const dec = new TextDecoder();
  let out = "";
  // Bounded even when the server says nothing at all.
  const late = Bun.sleep(15_000).then(() => null);
  try {
    while (!/port (\d+).*\n/.test(out)) {
      const r = await Promise.race([reader.read(), late]);
      if (!r) throw new Error(`${program} did not start within 15 s: ${out} ${errText}`);
      if (r.done) throw new Error(`${program} exited before listening: ${out} ${errText}`);
      out += dec.decode(r.value, { stream: true });
    }
  } catch (e) {
    // No caller has it to stop: stopped here.
    proc.kill("SIGKILL");
    await proc.exited;
    throw e;
  }
  // Keep draining stdout so the child never blocks on a full pipe.
  void (async () => {
    for (;;) {
      const { done } = await reader.read();
      if (done) break;
    }
  })();
  const port = Number(/port (\d+)/.exec(out)![1]);
  return {
    port,
    tlsPort: Number(/TLS port (\d+)/.exec(out)?.[1] ?? 0),
    proc,
    log: () => errText,
    async stop(signal: NodeJS.Signals = "SIGTERM") {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return await proc.exited;
    },
  };
}

/** A command prefix that runs the rest under `ulimit -n limit` (the soft and hard open-file limit). */
export const underLimit = (limit: number) => ["sh", "-c", `ulimit -n ${limit} && exec "$@"`, "sh"];

export const startSmtp = (root: string, args: string[] = [], prefix: string[] = []) => start("smtpmail", root, args, prefix);
export const startPop = (root: string, args: string[] = [], prefix: string[] = []) => start("popserver", root, args, prefix);
