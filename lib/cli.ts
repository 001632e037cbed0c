// Command-line parsing shared by the three programs: one positional port or address,
// "--flag value" options, and one-line errors instead of stack traces.
import pkg from "../package.json" with { type: "json" };

export const VERSION: string = pkg.version;

export class UsageError extends Error {}

export interface FlagSpec {
  [flag: string]: { value?: string; help: string };
}

export interface Parsed {
  positional: string[];
  flags: Map<string, string | true>;
}

export function parseArgs(argv: string[], spec: FlagSpec): Parsed {
  const positional: string[] = [];
  const flags = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a.startsWith("--")) {
      const [name, inline] = a.includes("=") ? [a.slice(0, a.indexOf("=")), a.slice(a.indexOf("=") + 1)] : [a, undefined];
      const s = spec[name];
      if (!s) throw new UsageError(`unknown option ${name}`);
      if (s.value) {
        const v = inline ?? argv[++i];
        if (v === undefined) throw new UsageError(`${name} needs a value (${s.value})`);
        flags.set(name, v);
      } else flags.set(name, true);
    } else if (a === "-h") flags.set("--help", true);
    else positional.push(a);
  }
  return { positional, flags };
}

export function parsePort(text: string | undefined, fallback: number, what = "port"): number {
  if (text === undefined) return fallback;
  if (!/^\d+$/.test(text) || Number(text) > 65535) throw new UsageError(`invalid ${what} "${text}": expected a number from 0 to 65535`);
  return Number(text);
}

export function parseNumber(text: string | true | undefined, fallback: number, name: string, min = 0): number {
  if (text === undefined) return fallback;
  if (text === true || !/^\d+(\.\d+)?$/.test(text) || Number(text) < min) throw new UsageError(`invalid ${name} "${text}": expected a number >= ${min}`);
  return Number(text);
}

/** Parses a size such as 10485760, 512K, 10M. */
export function parseSize(text: string | true | undefined, fallback: number, name: string): number {
  if (text === undefined) return fallback;
  const m = typeof text === "string" ? /^(\d+)([KkMmGg]?)$/.exec(text) : null;
  if (!m) throw new UsageError(`invalid ${name} "${text}": expected bytes, or a number with K, M or G`);
  const mult = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2]!.toLowerCase()]!;
  return Number(m[1]) * mult;
}

export function helpText(usage: string, about: string, spec: FlagSpec): string {
  const rows = Object.entries(spec).map(([f, s]) => `  ${(f + (s.value ? " " + s.value : "")).padEnd(26)} ${s.help}`);
  return `${usage}\n\n${about}\n\nOptions:\n${rows.join("\n")}\n`;
}

/** Runs main, turning expected failures into one line on stderr and an exit code. */
export async function runMain(prog: string, main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (e) {
    const err = e as Error & { code?: string };
    const msg = err instanceof UsageError ? `${err.message} (try --help)` : err.message;
    process.stderr.write(`${prog}: ${msg}\n`);
    process.exit(err instanceof UsageError ? 2 : 1);
  }
}
