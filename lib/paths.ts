// Where a user's files live under the mail root. Callers pass only names that came out of
// user.txt (see users.ts), never a name straight from the network.
import { join } from "node:path";

export const mailboxPath = (root: string, user: string) => join(root, user, "mymailbox");
/** Short-held lock: one writer at a time (SMTP append, POP3 rewrite). */
export const writeLockPath = (root: string, user: string) => join(root, user, "mymailbox.lock");
/** Held for a whole POP3 session (RFC 1939's exclusive-access lock). */
export const popLockPath = (root: string, user: string) => join(root, user, "mymailbox.pop3.lock");
