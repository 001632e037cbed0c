// Run mailclient.ts as a child process with all of its input piped in at once.

import { join } from "node:path";
import { command } from "./servers.ts";

export const ROOT = join(import.meta.dir, "..", "..");

/** mailclient's command line: the script, or the compiled binary under MAIL_TEST_BIN. */
export const clientCommand = (args: string[]) => command("mailclient", args);

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export async function runClient(args: string[], input: string, opts: { limitMs?: number; timeoutMs?: number } = {}): Promise<RunResult> {
  const proc = Bun.spawn(clientCommand(args), {
    cwd: ROOT,
    stdin: new TextEncoder().encode(input),
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, MAILCLIENT_TIMEOUT_MS: String(opts.timeoutMs ?? 10_000), NO_COLOR: "1" },
  });
  // A hung client must fail the test, not the whole run.
  const killer = setTimeout(() => proc.kill("SIGKILL"), opts.limitMs ?? 30_000);
  try {
    const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    return { code, stdout, stderr };
  } finally {
    clearTimeout(killer);
  }
}

/** Input lines joined with newlines, as a person (or a script) would type them. */
export function typed(...lines: string[]): string {
  return lines.map((l) => l + "\n").join("");
}
