// Dot-unstuffing (RFC 5321 4.5.2) of a wire-form message, for tests that compare what a
// server stored or sent with the text that went in.

const DOT = 0x2e;

/** Removes dot-stuffing from a wire-form message (without its final "." line). */
export function unstuff(wire: Buffer): Buffer {
  const out: Buffer[] = [];
  let start = 0;
  if (wire[0] === DOT) start = 1;
  let from = start;
  for (let i = wire.indexOf("\n.", from); i >= 0; i = wire.indexOf("\n.", from)) {
    out.push(wire.subarray(start, i + 1));
    start = i + 2;
    from = start;
  }
  out.push(wire.subarray(start));
  return Buffer.concat(out);
}
