// Both servers start themselves again without the FTL JIT (lib/jit.ts): same PID, same
// arguments, and an option the user set is left alone. Runs on the compiled executables too.
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { makeRoot, removeRoot, startPop, startSmtp } from "./helpers/servers.ts";
import { FTL_OPTION } from "../lib/jit.ts";

const root = makeRoot();
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
] as const)("%s", (_name, start, greets) => {
  test("runs without FTL in the process that was started, with its arguments", async () => {
    const server = await start(root, ["--quiet"]);
    try {
      expect(procList(server.proc.pid, "environ")).toContain(`${FTL_OPTION}=0`);
      expect(procList(server.proc.pid, "cmdline").slice(-6)).toEqual(["0", "--root", root, "--host", "127.0.0.1", "--quiet"]);
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
