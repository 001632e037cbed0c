// A mailbox's messages as an index in typed arrays (offsets, lengths, sizes, UID hashes), and
// the numbers that keep the UIDs of repeated messages unique and stable over a rewrite.
import { writeNumber } from "./digits.ts";

const BLOCK_SHIFT = 12;
const BLOCK = 1 << BLOCK_SHIFT;
const BLOCK_MASK = BLOCK - 1;
/** A first block's first size: most mailboxes are small, and popserver keeps their indexes. */
const SMALLEST = 256;
/** Deleted messages without a copy left whose UIDs stay taken, per rewrite (the newest). */
const MAX_RETIRED = 1000;
/** How long the numbers of copies all deleted stay taken. */
const RETIRED_MS = 120_000;

export interface MessageEntry {
  /** File offset of the first byte of the message. */
  offset: number;
  /** Stored bytes including the "." line. */
  length: number;
  /** RFC 1939 size: octets with CRLF line ends, without stuffing dots. */
  size: number;
  /** Stored with bare LF line ends (hand-written): convert when sending. */
  lf: boolean;
  /**
   * A hand-written message (bare LF line ends) that is not dot-stuffed: a line starting with
   * "." and then no second "." says so. Each of its "." lines is text, sent with a dot added
   * (RFC 1939 3); sent as stored, ".x" reached poplib as ".x" and fetchmail as "x"
   * (helper-58). Only with lf: smtpmail's records are CRLF, and a ".x" line in one came
   * from an SMTP client that did not stuff, which RFC 5321 4.5.2 reads as "x" (as LIST
   * counts it, and as an RFC 1939 client reads it as sent).
   */
  stuff: boolean;
  uid: string;
}

/**
 * The numbers a repeated message's copies carry, in file order; copies after them count on
 * from next. `at`: when they were worked out.
 */
export interface FixedNumbers {
  kept: number[];
  next: number;
  at: number;
}

/**
 * The offsets, lengths and sizes of a mailbox's messages in typed arrays: 29 bytes a
 * message, so a POP3 session on 100,000 messages keeps an index of 3 MB, not objects.
 */
export class MessageIndex {
  private n = 0;
  /** Never goes down: blocks are found from it. */
  get count(): number {
    return this.n;
  }
  // In blocks of BLOCK entries: growing never copies what is there, and a finished index
  // holds at most one block of spare room. One array per field grown by doubling, then
  // trimmed by a copy, left up to 7 MB of freed arrays behind while 100,000 messages were
  // indexed, most of it still resident at the end (the 64 MiB target on a 1 GiB mailbox).
  private offsets: Float64Array[] = [];
  // Under 4 GiB: add() refuses a longer message (RETR and the rewrite would not cope either).
  private lengths: Uint32Array[] = [];
  private sizes: Float64Array[] = [];
  private hashes: Float64Array[] = [];
  /** Per message: 1 if lf, plus 2 if stuff (see MessageEntry). */
  private flags: Uint8Array[] = [];
  /** Occurrence number of each hash (only when some hash repeats, or numbers are fixed). */
  private dups: Uint32Array | null = null;
  /** Numbers of repeated messages carried over a rewrite (see renumbered()). */
  private fixed: ReadonlyMap<number, FixedNumbers> | null = null;
  /** Memory the fixed numbers hold (a Map entry and its object: ~154 bytes measured, plus the kept numbers). */
  private fixedBytes = 0;

  add(offset: number, length: number, size: number, lf: boolean, hash: number, stuff = false): void {
    if (length >= 2 ** 32) throw new Error("a message of 4 GiB or more");
    const i = this.n;
    const b = i >>> BLOCK_SHIFT;
    const j = i & BLOCK_MASK;
    if (b === this.offsets.length || j === this.offsets[b]!.length) this.resizeBlock(b, b > 0 ? BLOCK : Math.min(BLOCK, Math.max(SMALLEST, 2 * j)));
    this.offsets[b]![j] = offset;
    this.lengths[b]![j] = length;
    this.sizes[b]![j] = size;
    this.hashes[b]![j] = hash;
    this.flags[b]![j] = (lf ? 1 : 0) | (stuff ? 2 : 0);
    this.n = i + 1;
  }

  /** Memory held by the arrays. */
  get bytes(): number {
    let n = (this.dups?.byteLength ?? 0) + this.fixedBytes;
    for (const o of this.offsets) n += o.length * 29;
    return n;
  }

  /** A new index of a's messages then b's, as they are (b's offsets already count from the file's start). */
  static joined(a: MessageIndex, b: MessageIndex): MessageIndex {
    const j = new MessageIndex();
    for (let i = 0; i < a.count; i++) j.addFrom(a, i, a.offset(i));
    for (let i = 0; i < b.count; i++) j.addFrom(b, i, b.offset(i));
    j.fixed = a.fixed;
    j.fixedBytes = a.fixedBytes;
    return j.trim().finish();
  }

  /** Block b at `capacity` entries, new or keeping what it holds. */
  private resizeBlock(b: number, capacity: number): void {
    const to = <T extends Float64Array | Uint32Array | Uint8Array>(blocks: T[], make: new (n: number) => T): void => {
      const old = blocks[b];
      const fresh = new make(capacity);
      if (old) fresh.set(old.subarray(0, Math.min(old.length, capacity)));
      blocks[b] = fresh;
    };
    to(this.offsets, Float64Array);
    to(this.lengths, Uint32Array);
    to(this.sizes, Float64Array);
    to(this.hashes, Float64Array);
    to(this.flags, Uint8Array);
  }

  /** Lets go of the last block's spare room, when that is worth a copy. */
  trim(): this {
    const b = this.offsets.length - 1;
    const used = this.count - b * BLOCK;
    if (b >= 0 && this.offsets[b]!.length - used >= 1024) this.resizeBlock(b, Math.max(SMALLEST, used));
    return this;
  }

  /** Adds b's messages after these (b's offsets already count from the file's start). */
  extend(b: MessageIndex): this {
    for (let i = 0; i < b.count; i++) this.addFrom(b, i, b.offset(i));
    // A few new messages must not leave a kept index with a block of room it never uses.
    return this.trim().finish();
  }

  /** The last message's stored bytes go on `bytes` further (its "." line got its newline). */
  lengthenLast(bytes: number): void {
    const i = this.n - 1;
    this.lengths[i >>> BLOCK_SHIFT]![i & BLOCK_MASK]! += bytes;
  }

  /** Adds another index's message i, placed at `offset`. */
  addFrom(other: MessageIndex, i: number, offset: number): void {
    this.add(offset, other.length(i), other.size(i), other.lf(i), other.hash(i), other.stuff(i));
  }

  /**
   * Numbers repeated hashes in file order, so UIDs stay unique within the mailbox; a hash
   * with fixed numbers takes them instead (its k-th copy the k-th kept number, the copies
   * after those next, next + 1, ...).
   */
  finish(): this {
    const sorted = new Float64Array(this.count);
    for (let b = 0; b < this.hashes.length; b++) sorted.set(this.hashes[b]!.subarray(0, Math.min(BLOCK, this.count - b * BLOCK)), b * BLOCK);
    sorted.sort();
    const repeated = new Set<number>();
    for (let i = 1; i < sorted.length; i++) if (sorted[i] === sorted[i - 1]) repeated.add(sorted[i]!);
    this.dups = null;
    if (!repeated.size && !this.fixed?.size) return this;
    this.dups = new Uint32Array(this.count);
    const seen = new Map<number, number>();
    for (let i = 0; i < this.count; i++) {
      const h = this.hash(i);
      const f = this.fixed?.get(h);
      if (!f && !repeated.has(h)) continue;
      const k = seen.get(h) ?? 0;
      seen.set(h, k + 1);
      this.dups[i] = !f ? k + 1 : k < f.kept.length ? f.kept[k]! : f.next + k - f.kept.length;
    }
    return this;
  }

  /**
   * This index (of a mailbox's snapshot) less the `deleted` messages: the numbers the repeated
   * ones must keep in the rewritten file, where counting copies afresh would shift them (the
   * second of two identical messages would take the first's UID once that is deleted) and
   * give a deleted copy's UID to the next identical one (RFC 1939 7: a client that keeps mail
   * on the server skips it as seen). Also a message deleted without a copy left, among the
   * last MAX_RETIRED deleted: mail delivered again byte for byte comes within the minute of
   * its Received line. Null when nothing needs fixing.
   */
  renumbered(deleted: ReadonlySet<number>, now = Date.now()): Map<number, FixedNumbers> | null {
    const number = (i: number) => this.dups?.[i] ?? 0;
    // Deleted messages without a copy count from this one on (the newest MAX_RETIRED).
    let singlesFrom = 0;
    for (let i = this.count - 1, seen = 0; i >= 0; i--) {
      if (deleted.has(i) && number(i) === 0 && ++seen > MAX_RETIRED) {
        singlesFrom = i + 1;
        break;
      }
    }
    const out = new Map<number, FixedNumbers>();
    for (let i = 0; i < this.count; i++) {
      const n = Math.max(1, number(i));
      if (number(i) === 0 && !(deleted.has(i) && i >= singlesFrom)) continue;
      const h = this.hash(i);
      let f = out.get(h);
      if (!f) out.set(h, (f = { kept: [], next: this.fixed?.get(h)?.next ?? 1, at: now }));
      if (!deleted.has(i)) f.kept.push(n);
      f.next = Math.max(f.next, n + 1);
    }
    // Numbers of copies all gone stay taken while an identical copy can still come: within the
    // minute of its Received line, so for RETIRED_MS.
    for (const [h, f] of this.fixed ?? []) if (!out.has(h) && now - f.at < RETIRED_MS) out.set(h, f);
    // What counting afresh would give anyway needs no fixing.
    for (const [h, f] of out) if (f.next === f.kept.length + 1 && f.kept.every((n, k) => n === k + 1)) out.delete(h);
    return out.size ? out : null;
  }

  /** The numbers renumber() gave, for another index of the same file. */
  get numbers(): ReadonlyMap<number, FixedNumbers> | null {
    return this.fixed;
  }

  /** Whether some numbers are fixed (an empty index can hold them: the UIDs of deleted copies). */
  get hasFixed(): boolean {
    return !!this.fixed?.size;
  }

  /** Kept empty only for numbers of deleted copies, all of which may be given out again by now. */
  lapsed(now = Date.now()): boolean {
    if (this.count) return false;
    for (const f of this.fixed?.values() ?? []) if (f.kept.length || now - f.at < RETIRED_MS) return false;
    return true;
  }

  /** Takes the numbers renumbered() gave for this, the rewritten file's index. */
  renumber(fixed: ReadonlyMap<number, FixedNumbers> | null): this {
    this.fixed = fixed;
    this.fixedBytes = 0;
    for (const f of fixed?.values() ?? []) this.fixedBytes += 160 + 8 * f.kept.length;
    return this.finish();
  }

  offset(i: number): number {
    return this.offsets[i >>> BLOCK_SHIFT]![i & BLOCK_MASK]!;
  }
  length(i: number): number {
    return this.lengths[i >>> BLOCK_SHIFT]![i & BLOCK_MASK]!;
  }
  size(i: number): number {
    return this.sizes[i >>> BLOCK_SHIFT]![i & BLOCK_MASK]!;
  }
  lf(i: number): boolean {
    return (this.flags[i >>> BLOCK_SHIFT]![i & BLOCK_MASK]! & 1) !== 0;
  }
  stuff(i: number): boolean {
    return (this.flags[i >>> BLOCK_SHIFT]![i & BLOCK_MASK]! & 2) !== 0;
  }
  hash(i: number): number {
    return this.hashes[i >>> BLOCK_SHIFT]![i & BLOCK_MASK]!;
  }
  uid(i: number): string {
    const base = this.hash(i).toString(36);
    const n = this.dups?.[i] ?? 0;
    return n > 1 ? `${base}-${n}` : base;
  }
  /**
   * uid(i) written into buf at pos; returns the new pos. UIDL of 100,000 messages would
   * otherwise leave 100,000 strings (5 MB) for the collector.
   */
  writeUid(i: number, buf: Buffer, pos: number): number {
    pos = writeNumber(buf, pos, this.hash(i), 36);
    const n = this.dups?.[i] ?? 0;
    if (n > 1) {
      buf[pos++] = 0x2d;
      pos = writeNumber(buf, pos, n);
    }
    return pos;
  }
  entry(i: number): MessageEntry {
    return { offset: this.offset(i), length: this.length(i), size: this.size(i), lf: this.lf(i), stuff: this.stuff(i), uid: this.uid(i) };
  }
}
