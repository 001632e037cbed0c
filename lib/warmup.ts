// popserver's first session, rehearsed at start on a mailbox of its own in a temporary directory,
// so that the first real client does not pay for the JIT. Cold, on a 10,000-message mailbox,
// the first login took 37-42 ms and the first LIST 5-7 ms, against 18-29 and 2-3 ms once the
// scanner, the hasher and the listing writers had run (JavaScriptCore compiles a function only
// after it has run a while, and compiles on a thread that shares the two cores).
import { mkdtempSync, mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { IndexCache } from "./index-cache.ts";
import { alive } from "./lock.ts";
import { FileMaildrop } from "./maildrop.ts";
import { Pop3Session, type PopResult, type PopStore } from "./pop3-session.ts";

const USER = "warmup";
const PREFIX = "popserver-warmup-";
const MESSAGES = 4000;
const SESSIONS = 3;

/**
 * Runs sessions (login, STAT, LIST, UIDL, RETR, TOP, QUIT) over a throwaway mailbox. Never
 * throws: what it did, or null when it could not (no usable temporary directory).
 */
export async function warmUpPop3(): Promise<{ messages: number; sessions: number } | null> {
  let root: string | null = null;
  // A stop during the rehearsal exits the process from its signal handler: removed then too.
  const remove = () => {
    if (root) rmSync(root, { recursive: true, force: true });
  };
  process.on("exit", remove);
  try {
    removeLeftovers();
    root = mkdtempSync(join(tmpdir(), `${PREFIX}${process.pid}-`));
    mkdirSync(join(root, USER));
    const line = "x".repeat(76) + "\r\n";
    const messages: string[] = [];
    for (let i = 0; i < MESSAGES; i++) messages.push(`From: a${i}@example.org\r\nSubject: ${i}\r\n\r\n${line.repeat(4)}.${line}.\r\n`);
    writeFileSync(join(root, USER, "mymailbox"), messages.join(""));
    const at = root;
    const store: PopStore = {
      findUser: (name) => (name === USER ? USER : null),
      checkPassword: async () => true,
      open: (user) => FileMaildrop.open(at, user, () => {}, new IndexCache()),
    };
    for (let round = 0; round < SESSIONS; round++) {
      const session = new Pop3Session(store, "warmup");
      for (const command of [`USER ${USER}`, "PASS -", "STAT", "LIST", "UIDL", "LIST", "UIDL", "LIST", "UIDL", "LIST 1", "UIDL 2", "RETR 3", "TOP 4 1", "QUIT"]) {
        const r = await session.handleLine(command);
        if (!r.reply.ok) return null;
        await drain(r);
      }
    }
    return { messages: MESSAGES, sessions: SESSIONS };
  } catch {
    // Only speed is at stake.
    return null;
  } finally {
    remove();
    process.off("exit", remove);
    // Its mailbox text and indexes go back before the first client comes.
    Bun.gc(true);
  }
}

/** Rehearsal directories of popservers stopped before they removed theirs (a stop during the rehearsal). */
function removeLeftovers(): void {
  for (const name of readdirSync(tmpdir())) {
    const pid = Number(/^popserver-warmup-(\d+)-/.exec(name)?.[1]);
    if (!pid || pid === process.pid || alive(pid)) continue;
    try {
      rmSync(join(tmpdir(), name), { recursive: true, force: true });
    } catch {
      // Another user's (a shared /tmp): theirs to remove; it must not stop this rehearsal.
    }
  }
}

async function drain({ body }: PopResult): Promise<void> {
  if (body && Symbol.asyncIterator in body) for await (const _ of body);
}
