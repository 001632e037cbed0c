// user.txt: "name password" per line, separated by spaces or tabs. The file is re-read
// whenever it changes on disk, so adding a user needs no restart. Only names listed here
// ever become a path, which is why names are restricted to safe path components.
import { isUtf8 } from "node:buffer";
import { decodeUtf8, UNDECODABLE } from "./lines.ts";
import { statSync } from "node:fs";
import { readRegularFile } from "./fsio.ts";

/** The longest user name (a mailbox's local part, RFC 5321 4.5.3.1.1). */
export const MAX_NAME_LENGTH = 64;
const VALID_NAME = new RegExp(`^[A-Za-z0-9_][A-Za-z0-9._+-]{0,${MAX_NAME_LENGTH - 1}}$`);
const HASH_PREFIXES = ["$argon2", "$2a$", "$2b$", "$2y$"];
/** What "PASS " and CRLF leave of a POP3 command line (pop3-server.ts MAX_POP_LINE, 512; a test ties the two); a SASL response may be longer. */
export const MAX_PASSWORD = 505;
const REMOVED_GRACE_MS = 2000;
/** How long a user.txt whose last line has no newline yet is taken as still being written. */
const UNTERMINATED_SETTLE_MS = 1000;

const isHash = (stored: string) => HASH_PREFIXES.some((p) => stored.startsWith(p));

export function isSafeUserName(name: string): boolean {
  return VALID_NAME.test(name) && name !== "." && name !== "..";
}

export interface UserTable {
  /** Names in file order. */
  readonly names: string[];
  readonly passwords: Map<string, string>;
  readonly problems: string[];
  /** A stored hash to check refused passwords against, so every refusal costs a hash check. */
  readonly decoy?: string;
  /** Lower-cased name to the one listed name it matches, or null when several do. */
  readonly byLowerCase?: Map<string, string | null>;
}

export function parseUserTable(text: string, fileName = "user.txt"): UserTable {
  const names: string[] = [];
  const passwords = new Map<string, string>();
  const problems: string[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const fields = line.split(/[ \t]+/);
    const where = `${fileName} line ${i + 1}`;
    if (fields.length !== 2) {
      problems.push(`${where}: expected "name password", skipped`);
    } else if (fields[0] === "user.txt") {
      // Its mailbox directory would be this file (helper-94: every delivery 450, every login -ERR).
      problems.push(`${where}: user name "user.txt" is the user list's own file, skipped`);
    } else if (!isSafeUserName(fields[0]!)) {
      problems.push(`${where}: invalid user name "${fields[0]!.slice(0, 40)}", skipped`);
    } else if (passwords.has(fields[0]!)) {
      problems.push(`${where}: duplicate user "${fields[0]}", skipped`);
    } else {
      if (fields[1]!.includes(UNDECODABLE)) problems.push(`${where}: the password of "${fields[0]}" is not valid UTF-8: that user gets mail but cannot log in`);
      else if (!isHash(fields[1]!) && Buffer.byteLength(fields[1]!) > MAX_PASSWORD) problems.push(`${where}: the password of "${fields[0]}" is longer than a PASS line carries (${MAX_PASSWORD} bytes): that user can log in with AUTH only, not with USER/PASS (mailclient)`);
      else if (fields[1]!.includes("\0")) problems.push(`${where}: the password of "${fields[0]}" holds a NUL byte: AUTH PLAIN cannot carry it (USER/PASS and AUTH LOGIN can)`);
      names.push(fields[0]!);
      passwords.set(fields[0]!, fields[1]!);
    }
  });
  const decoy = [...passwords.values()].find(isHash);
  // Built once per load: a scan of every name per RCPT cost 1.2 ms with 100,000 users.
  const byLowerCase = new Map<string, string | null>();
  for (const n of names) {
    const key = n.toLowerCase();
    byLowerCase.set(key, byLowerCase.has(key) ? null : n);
  }
  return { names, passwords, problems, decoy, byLowerCase };
}

export class UserFileError extends Error {}

/** user.txt as text, each line decoded on its own (decodeUtf8): a line that is not UTF-8 taints only itself. */
function decodeUserFile(bytes: Buffer): string {
  if (isUtf8(bytes)) return bytes.toString("utf8");
  const lines: string[] = [];
  for (let start = 0; start <= bytes.length; ) {
    const nl = bytes.indexOf(0x0a, start);
    const end = nl < 0 ? bytes.length : nl;
    lines.push(decodeUtf8(bytes, start, end));
    start = end + 1;
  }
  return lines.join("\n");
}

/** The user.txt of a mail root, reloaded when its size, mtime or inode change. */
export class Users {
  private table: UserTable = { names: [], passwords: new Map(), problems: [] };
  private stamp = "";
  /**
   * Names reloads dropped, and when each was first missed: see recentlyRemoved(). Kept across
   * reloads: a file written in several pieces is read several times, and a name still
   * missing from the second read was once forgotten here and got 550 (helper-26).
   */
  private removed = new Map<string, number>();
  /** A version of the file that ended mid-line when read, and until when it is not taken. */
  private unsettled: { stamp: string; until: number } | null = null;

  constructor(
    readonly path: string,
    private readonly warn: (msg: string) => void = () => {},
    private readonly postmasterUser?: string,
  ) {}

  /** Loads the file now; throws UserFileError with a one-line reason when unusable. */
  load(): void {
    let st;
    try {
      st = statSync(this.path);
    } catch {
      throw new UserFileError(`cannot read ${this.path}: no such file`);
    }
    const stamp = `${st.ino}:${st.size}:${st.mtimeMs}`;
    if (stamp === this.stamp) return;
    if (this.unsettled?.stamp === stamp && Date.now() < this.unsettled.until) return;
    let text: string;
    try {
      text = decodeUserFile(readRegularFile(this.path));
    } catch (e) {
      throw new UserFileError(`cannot read ${this.path}: ${(e as Error).message}`);
    }
    // A last line without its newline may be a write still going on: "bob secret" read as
    // "bob sec" made "sec" a valid password for a moment (helper-26). The list in use stays
    // until the line ends or the file has stood still for a second (some files never end
    // with a newline). The first load takes the file as it is.
    if (this.table.names.length && text.length && !text.endsWith("\n")) {
      if (this.unsettled?.stamp !== stamp) {
        this.unsettled = { stamp, until: Date.now() + UNTERMINATED_SETTLE_MS };
        return;
      }
      if (Date.now() < this.unsettled.until) return;
    }
    this.unsettled = null;
    const table = parseUserTable(text, this.path);
    for (const p of table.problems) this.warn(p);
    if (table.names.length === 0) throw new UserFileError(`${this.path}: no valid "name password" lines`);
    if (this.postmasterUser && !table.passwords.has(this.postmasterUser))
      this.warn(`postmaster user "${this.postmasterUser}" is not in ${this.path}; using ${table.names[0]}`);
    const now = Date.now();
    for (const [n, at] of this.removed) if (table.passwords.has(n) || now - at >= REMOVED_GRACE_MS) this.removed.delete(n);
    for (const n of this.table.names) if (!table.passwords.has(n) && !this.removed.has(n)) this.removed.set(n, now);
    this.table = table;
    this.stamp = stamp;
  }

  /** Keeps serving the last good table if the file turns bad while running. */
  private refresh(): void {
    try {
      this.load();
    } catch (e) {
      if (this.stamp !== "bad") this.warn(`${(e as Error).message}; keeping the previous user list`);
      this.stamp = "bad";
    }
  }

  get names(): string[] {
    this.refresh();
    return this.table.names;
  }

  /**
   * Maps the local part of an address to a listed user: exact match first, then a unique
   * case-insensitive match; "postmaster" in any case goes to the postmaster user.
   */
  resolve(localPart: string): string | null {
    this.refresh();
    const { passwords, names } = this.table;
    if (localPart.toLowerCase() === "postmaster" && !passwords.has(localPart)) {
      if (this.postmasterUser && passwords.has(this.postmasterUser)) return this.postmasterUser;
      return names[0] ?? null;
    }
    // Refreshed above: one stat of user.txt per recipient, not two.
    return this.listed(localPart);
  }

  /** The names for a log line: all of a short list, the first ones and a count of a long one. */
  summary(shown = 20): string {
    const { names } = this.table;
    return names.length <= shown ? names.join(" ") : `${names.slice(0, shown).join(" ")} ... (${names.length} in all)`;
  }

  /**
   * The listed user a login name means: the exact name, else a unique case-insensitive match,
   * as RCPT TO finds the same user (Dovecot lower-cases login names too). A map lookup, not a
   * scan of the names.
   */
  account(name: string): string | null {
    this.refresh();
    return this.listed(name);
  }

  private listed(name: string): string | null {
    if (this.table.passwords.has(name)) return name;
    // ASCII only: Unicode folding maps the Kelvin sign to "k", a name no one listed.
    if (!/^[\x21-\x7e]+$/.test(name)) return null;
    return this.table.byLowerCase?.get(name.toLowerCase()) ?? null;
  }

  /**
   * Whether the name was dropped by a reload in the last REMOVED_GRACE_MS. A file rewritten
   * in place (an editor, `cat >`) can be read half-written; a user missing from it then gets a
   * temporary 450, not a 550 that bounces the mail for good. A real removal is a 550 after.
   */
  recentlyRemoved(localPart: string): boolean {
    const lower = localPart.toLowerCase();
    // In any case, as the name would have been found (a handful of entries at most).
    for (const [name, at] of this.removed) if (name.toLowerCase() === lower && Date.now() - at < REMOVED_GRACE_MS) return true;
    return false;
  }

  /**
   * The user name if name and password match (plain text compared in constant time, or a
   * Bun.password hash). A password with bytes that are not UTF-8 (UNDECODABLE once decoded)
   * matches nothing: decoded, any such byte would match any other.
   */
  async check(login: string, password: string): Promise<string | null> {
    const name = this.account(login);
    const stored = name === null ? undefined : this.table.passwords.get(name);
    // Every refusal costs the same (a hash check when the file has hashes, else a compare),
    // so the time taken tells neither which names exist nor how their password is stored.
    const refuse = async () => {
      if (this.table.decoy) await Bun.password.verify(password, this.table.decoy).catch(() => false);
      return null;
    };
    if (stored === undefined) {
      equalConstantTime(password, password);
      return refuse();
    }
    if (isHash(stored)) {
      try {
        return (await Bun.password.verify(password, stored)) && !password.includes(UNDECODABLE) ? name : null;
      } catch {
        return null;
      }
    }
    // Both sides: a lone surrogate hashes as U+FFFD would.
    return equalConstantTime(password, stored) && !password.includes(UNDECODABLE) && !stored.includes(UNDECODABLE) ? name : refuse();
  }
}

function equalConstantTime(a: string, b: string): boolean {
  // Hash first: timingSafeEqual needs equal lengths and would otherwise leak the length.
  // Bun's native hasher and compare, not node:crypto: importing that grew every server's
  // resident memory by 3 MiB.
  const ha = new Bun.CryptoHasher("sha256").update(a).digest();
  const hb = new Bun.CryptoHasher("sha256").update(b).digest();
  return crypto.timingSafeEqual(ha, hb);
}
