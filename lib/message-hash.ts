// The hash a message's UID is made of: messageHash() of a stored message held whole, and
// MessageHasher for the same number fed a piece at a time.
//
// UIDs hash the whole stored message (at several GB/s, so even a 1 GiB mailbox hashes in
// well under a second). Identical messages get a counter, so UIDs stay unique.

/** 53 bits from two independent 32-bit hashes of a stored message (without its "." line). */
export function messageHash(content: Uint8Array): number {
  return Bun.hash.crc32(content) * 2 ** 21 + (Bun.hash.cityHash32(content) & 0x1fffff);
}

/** The crc32 part of a messageHash(). */
export const crcOfHash = (hash: number): number => Math.floor(hash / 2 ** 21);

const C1 = 0xcc9e2d51 | 0;
const C2 = 0x1b873593 | 0;
const rot = (v: number, s: number) => (v >>> s) | (v << (32 - s));
const bswap = (v: number) => ((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | (v >>> 24);
const fetch32 = (b: Uint8Array, i: number) => b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24);
const mur = (x: number) => Math.imul(rot(Math.imul(x, C1), 17), C2);
const step5 = (h: number, s: number) => (Math.imul(rot(h, s), 5) + 0xe6546b64) | 0;

/**
 * messageHash() of a message fed a piece at a time, for one too large to hold: its length and
 * last 20 bytes given first (CityHash32 starts from them, then takes the bytes from the start
 * in 20-byte blocks), its crc32 carried from piece to piece (Bun.hash.crc32's seed). The same
 * number as messageHash() of the whole bytes: UIDs must not change.
 */
export class MessageHasher {
  private crc = 0;
  private h = 0;
  private g = 0;
  private f = 0;
  /** Bytes fed so far, and the 20-byte blocks CityHash32 still takes. */
  private fed = 0;
  private blocks: number;
  /** A block cut by the end of a piece (or the whole message when it is short). */
  private part: Buffer;
  private partLen = 0;

  constructor(
    private readonly length: number,
    tail: Uint8Array,
  ) {
    this.blocks = length > 24 ? Math.floor((length - 1) / 20) : 0;
    this.part = Buffer.allocUnsafe(length > 24 ? 20 : length);
    if (length <= 24) return;
    if (tail.length !== 20) throw new Error("MessageHasher: the last 20 bytes are needed");
    const n = length | 0;
    let h = n;
    let g = Math.imul(C1, n);
    let f = g;
    h = step5(h ^ mur(fetch32(tail, 16)), 19);
    h = step5(h ^ mur(fetch32(tail, 4)), 19);
    g = step5(g ^ mur(fetch32(tail, 12)), 19);
    g = step5(g ^ mur(fetch32(tail, 8)), 19);
    f = step5((f + mur(fetch32(tail, 0))) | 0, 19);
    this.h = h;
    this.g = g;
    this.f = f;
  }

  update(piece: Uint8Array): this {
    if (this.fed + piece.length > this.length) throw new Error("MessageHasher: more bytes than the length given");
    this.crc = Bun.hash.crc32(piece, this.crc);
    this.fed += piece.length;
    if (this.length <= 24) {
      this.part.set(piece, this.partLen);
      this.partLen += piece.length;
      return this;
    }
    let p = 0;
    if (this.partLen) {
      const k = Math.min(20 - this.partLen, piece.length);
      this.part.set(piece.subarray(0, k), this.partLen);
      this.partLen += k;
      p = k;
      if (this.partLen < 20) return this;
      this.partLen = 0;
      if (this.blocks > 0) this.blocks20(this.part, 0, 1);
    }
    // Whole blocks straight from the piece, the rest kept for the next one.
    const whole = Math.min(this.blocks, Math.floor((piece.length - p) / 20));
    if (whole > 0) {
      this.blocks20(piece, p, whole);
      p += 20 * whole;
    }
    if (this.blocks > 0 && p < piece.length) {
      this.part.set(piece.subarray(p), 0);
      this.partLen = piece.length - p;
    }
    return this;
  }

  /**
   * CityHash32's loop over n blocks of s from p. Locals and a DataView: without the FTL tier
   * (as the servers run), reading the state from fields and the words byte by byte took
   * twice as long as Bun's own cityHash32.
   */
  private blocks20(s: Uint8Array, p: number, n: number): void {
    const v = new DataView(s.buffer, s.byteOffset, s.byteLength);
    let h = this.h;
    let g = this.g;
    let f = this.f;
    for (const end = p + 20 * n; p < end; p += 20) {
      const a0 = mur(v.getInt32(p, true));
      const a1 = v.getInt32(p + 4, true);
      const a2 = mur(v.getInt32(p + 8, true));
      const a3 = mur(v.getInt32(p + 12, true));
      const a4 = v.getInt32(p + 16, true);
      h = step5(h ^ a0, 18);
      f = Math.imul(rot((f + a1) | 0, 19), C1);
      g = step5((g + a2) | 0, 18);
      h = step5(h ^ ((a3 + a1) | 0), 19);
      g = Math.imul(bswap(g ^ a4), 5);
      h = bswap((h + Math.imul(a4, 5)) | 0);
      f = (f + a0) | 0;
      // CityHash's PERMUTE3(f, h, g).
      const t = f;
      f = g;
      g = h;
      h = t;
    }
    this.h = h;
    this.g = g;
    this.f = f;
    this.blocks -= n;
  }

  digest(): number {
    if (this.fed !== this.length) throw new Error(`MessageHasher: fed ${this.fed} bytes of ${this.length}`);
    if (this.length <= 24) return messageHash(this.part);
    let { h, g, f } = this;
    g = Math.imul(rot(Math.imul(rot(g, 11), C1), 17), C1);
    f = Math.imul(rot(Math.imul(rot(f, 11), C1), 17), C1);
    h = Math.imul(rot(step5((h + g) | 0, 19), 17), C1);
    h = Math.imul(rot(step5((h + f) | 0, 19), 17), C1);
    return this.crc * 2 ** 21 + ((h >>> 0) & 0x1fffff);
  }
}
