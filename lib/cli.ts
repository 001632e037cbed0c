// Command-line parsing shared by the three programs: one positional port or address,
// "--flag value" options, and one-line errors instead of stack traces.
import pkg from "../package.json" with { type: "json" };
import { DEFAULT_THROTTLE, LoginThrottle } from "./auth.ts";
import { loadServerTls, type ServerTls } from "./tls.ts";

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
    else if (a === "-V") flags.set("--version", true);
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

/** A whole number, for counts: "1.5" recipients is a typing error, not a limit. */
export function parseCount(text: string | true | undefined, fallback: number, name: string, min = 0): number {
  if (text === undefined) return fallback;
  if (text === true || !/^\d+$/.test(text) || Number(text) < min) throw new UsageError(`invalid ${name} "${text}": expected a whole number >= ${min}`);
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

const DEFAULT_PER_ADDRESS = 100;

/** TLS, login and connection-limit flags both servers take, worded for the protocol: SMTP
 *  upgrades with STARTTLS (implicit TLS on 465) and refuses mail too, POP3 with STLS (995). */
export function securityFlags(protocol: "smtp" | "pop3"): FlagSpec {
  const smtp = protocol === "smtp";
  return {
    "--tls-cert": { value: "FILE", help: `PEM certificate (chain): enables ${smtp ? "STARTTLS" : "STLS"}` },
    "--tls-key": { value: "FILE", help: "PEM private key of --tls-cert" },
    "--tls-port": { value: "PORT", help: `also serve TLS from the first byte on this port (${smtp ? "465" : "995"} style; 0 picks one)` },
    "--require-tls": { help: `refuse logins${smtp ? " and mail" : ""} until the connection is encrypted` },
    "--max-per-address": { value: "N", help: `simultaneous connections from one client address (default: ${DEFAULT_PER_ADDRESS}, loopback exempt)` },
    "--login-delay": { value: "MS", help: `delay before answering a failed login, doubled per failure from that address (default: ${DEFAULT_THROTTLE.baseDelayMs})` },
    "--max-login-delay": { value: "MS", help: `longest such delay (default: ${DEFAULT_THROTTLE.maxDelayMs})` },
    "--max-login-failures": { value: "N", help: `failed logins after which a connection is closed (default: ${DEFAULT_THROTTLE.maxFailuresPerConnection})` },
  };
}

export interface SecurityOptions {
  tlsFiles: ServerTls | null;
  tlsPort: number | undefined;
  requireTls: boolean;
  maxPerAddress: number;
  perAddressExemptsLoopback: boolean;
  throttle: LoginThrottle;
}

export function securityOptions(flags: Map<string, string | true>): SecurityOptions {
  const tlsFiles = loadServerTls(flags.get("--tls-cert"), flags.get("--tls-key"));
  const tlsPortFlag = flags.get("--tls-port");
  if (tlsPortFlag !== undefined && !tlsFiles) throw new UsageError("--tls-port needs --tls-cert and --tls-key");
  if (flags.has("--require-tls") && !tlsFiles) throw new UsageError("--require-tls needs --tls-cert and --tls-key");
  return {
    tlsFiles,
    tlsPort: tlsPortFlag === undefined ? undefined : parsePort(String(tlsPortFlag), 0, "--tls-port"),
    requireTls: flags.has("--require-tls"),
    // Given: for every address. Not given: 100 for remote addresses, loopback exempt (local
    // tools and benchmarks open thousands), as Postfix exempts $mynetworks from its limits.
    maxPerAddress: parseCount(flags.get("--max-per-address"), DEFAULT_PER_ADDRESS, "--max-per-address", 1),
    perAddressExemptsLoopback: !flags.has("--max-per-address"),
    throttle: new LoginThrottle({
      ...DEFAULT_THROTTLE,
      baseDelayMs: parseNumber(flags.get("--login-delay"), DEFAULT_THROTTLE.baseDelayMs, "--login-delay"),
      maxDelayMs: parseNumber(flags.get("--max-login-delay"), DEFAULT_THROTTLE.maxDelayMs, "--max-login-delay"),
      maxFailuresPerConnection: parseCount(flags.get("--max-login-failures"), DEFAULT_THROTTLE.maxFailuresPerConnection, "--max-login-failures", 1),
    }),
  };
}
