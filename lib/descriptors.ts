// The open-file budget: how many descriptors the limit (ulimit -n) leaves for sockets, and the
// files that count against them (popserver's open maildrops, smtpmail's mailboxes past their
// share), so that accept() and open() never meet EMFILE where a reply could have been given.
import { readFileSync } from "node:fs";

/** The open-file limit in force (Bun raises the soft limit to the hard one at start), or null where unknown. */
export function openFileLimit(): number | null {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync("/proc/self/limits", "utf8"));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/**
 * Descriptors kept for everything but sockets and HeldFiles: half of them for smtpmail's
 * mailboxes kept open between deliveries (mailboxRoom() in open-boxes.ts, at most
 * MAX_OPEN_BOXES), the rest for journals, lock files, listeners, the runtime's own. REFUSAL_ROOM
 * of the sockets are for telling clients "too many connections". A POP3 session's mailbox
 * counts (HeldFiles) only while open: 10,000 idle connections must fit in a limit of 20,000.
 */
const FD_RESERVE = 128;
const REFUSAL_ROOM = 32;

/**
 * Descriptors held besides the sockets: popserver's open maildrops (one per logged-in
 * session), smtpmail's mailboxes open past their share of FD_RESERVE. The open-file bound
 * counts them with the sockets: with logged-in sessions' mailboxes filling the limit, accept()
 * failed again and the server spun (helper-49).
 */
export class HeldFiles {
  count = 0;
  /** Set by the server: whether one more fits within the open-file bound. */
  room: () => boolean = () => true;
  /**
   * Set by the server: whether one more fits in the sockets kept for refusals, or taking at most
   * half of the sessions' sockets not in use, so that clients arriving meanwhile still find a
   * session (smtpmail's mailboxes past their share of FD_RESERVE, which a checkpoint closes).
   */
  spare: () => boolean = () => true;
  /** `perSession`: a session holds them (popserver's logged-in maildrops), as its capacity line says. */
  constructor(readonly perSession = true) {}
}

/**
 * Sockets, then sessions, that an open-file limit leaves room for. Under a small limit the
 * reserves shrink with it: at `ulimit -n 64` the fixed ones left one socket, and clients were
 * served one at a time, the others cut off without a word (helper-94).
 */
export function connectionRoom(limit: number): { sockets: number; sessions: number } {
  const sockets = Math.max(1, limit - Math.min(FD_RESERVE, Math.floor(limit / 2)));
  return { sockets, sessions: Math.max(1, sockets - Math.min(REFUSAL_ROOM, Math.floor(sockets / 4))) };
}
