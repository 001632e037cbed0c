// Drive a program in a real terminal: a private tmux server, send-keys, capture-pane.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const tmuxPath = Bun.which("tmux");

export class TmuxSession {
  // A private server on a socket in our own temp dir: no clash with the user's tmux, nothing left behind.
  private readonly dir = mkdtempSync(join(tmpdir(), "mailclient-tmux-"));
  private readonly socket = join(this.dir, "sock");
  private panePid = 0;

  private async tmux(...args: string[]): Promise<string> {
    const proc = Bun.spawn([tmuxPath!, "-S", this.socket, "-f", "/dev/null", ...args], { stdout: "pipe", stderr: "pipe" });
    const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    if (code !== 0) throw new Error(`tmux ${args[0]} failed: ${err.trim()}`);
    return out;
  }

  /** Start `command` (argv) in a detached pane (120x50 unless told); the pane stays after it exits. */
  async start(command: string[], cwd: string, columns = 120): Promise<void> {
    const quoted = command.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(" ");
    await this.tmux("new-session", "-d", "-x", String(columns), "-y", "50", "-c", cwd, `${quoted}; echo "EXIT=$?"; sleep 600`);
    this.panePid = Number((await this.tmux("display-message", "-p", "#{pane_pid}")).trim());
  }

  /** Type text literally (no key-name lookup, so "-1" is not taken for a flag). */
  async type(text: string): Promise<void> {
    await this.tmux("send-keys", "-l", "--", text);
  }

  /** Press named keys: "Enter", "BSpace", "C-c"... */
  async press(...keys: string[]): Promise<void> {
    await this.tmux("send-keys", ...keys);
  }

  async line(text: string): Promise<void> {
    await this.type(text);
    await this.press("Enter");
  }

  async screen(): Promise<string> {
    return this.tmux("capture-pane", "-p", "-S", "-2000");
  }

  /** Wait until `needle` appears `times` times on screen; throws with the screen after `limitMs`. */
  async waitFor(needle: string, times = 1, limitMs = 15_000): Promise<string> {
    needle = needle.trimEnd(); // capture-pane drops trailing blanks, e.g. after a prompt
    const deadline = Date.now() + limitMs;
    for (;;) {
      const text = await this.screen();
      if (text.split(needle).length - 1 >= times) return text;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${JSON.stringify(needle)} x${times}; screen:\n${text}`);
      await Bun.sleep(50);
    }
  }

  async stop(): Promise<void> {
    if (this.panePid > 0) {
      try {
        process.kill(this.panePid, "SIGKILL");
      } catch {}
    }
    await this.tmux("kill-server").catch(() => {});
    rmSync(this.dir, { recursive: true, force: true });
  }
}
