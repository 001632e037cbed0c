// Manage Mail on a big mailbox: time from choosing "1" until the list is on screen and
// the client asks "Enter mail no. to see:", with stdin a pipe.
import { join } from "node:path";
import { PROJECT } from "./lib.ts";

export async function clientListTime(smtpPort: number, popPort: number, user: string, password: string, timeLimitMs: number): Promise<{ ms: number; lines: number }> {
  const proc = Bun.spawn([process.execPath, join(PROJECT, "mailclient.ts"), "127.0.0.1", String(smtpPort), String(popPort)], { stdin: "pipe", stdout: "pipe", stderr: "ignore" });
  const reader = (proc.stdout as ReadableStream<Uint8Array>).getReader();
  const dec = new TextDecoder();
  let out = "";
  const waitFor = async (text: string, from: number) => {
    const deadline = Date.now() + timeLimitMs;
    while (out.indexOf(text, from) < 0) {
      if (Date.now() > deadline) throw new Error(`mailclient did not show "${text}"`);
      const { value, done } = await reader.read();
      if (done) throw new Error(`mailclient exited before "${text}"`);
      out += dec.decode(value, { stream: true });
    }
  };
  proc.stdin.write(`${user}\n${password}\n`);
  await waitFor("Enter option", 0);
  const mark = out.length;
  const t0 = performance.now();
  proc.stdin.write("1\n");
  await waitFor("Enter mail no. to see:", mark);
  const ms = performance.now() - t0;
  const lines = out.slice(mark).split("\n").length;
  proc.stdin.write("-1\n3\n");
  proc.stdin.end();
  await proc.exited;
  return { ms, lines };
}
