// Logins: the SASL PLAIN and LOGIN exchange (RFC 4616, the LOGIN draft) for SMTP and POP3
// AUTH, and the throttle that slows failed logins from one client address. Pure code; the
// sessions decide what to reply and the socket adapter does the waiting.
import { trimSp } from "./lines.ts";

// Strict: two different byte strings must never decode to the same password (RFC 4616).
const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Base64 of UTF-8 text as SASL carries it; null when it is not (a 501 / -ERR, not a failed login). */
export function decodeBase64(text: string): string | null {
  const t = text.trim();
  if (t === "=") return "";
  if (t.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(t)) return null;
  try {
    return utf8.decode(Buffer.from(t, "base64"));
  } catch {
    return null;
  }
}

/** RFC 4954 section 4: a SASL response line may be up to 12288 octets; commands stay short. */
export const MAX_SASL_LINE = 12288;

/** A command line or SASL response for the log: what follows "AUTH <mechanism>", and any response, hidden. */
export function maskAuth(line: string, isResponse: boolean): string {
  if (isResponse) return "********";
  return line.replace(/^(\s*AUTH\s+\S+)\s.*$/i, "$1 ********");
}

export const encodeBase64 = (text: string) => Buffer.from(text, "utf8").toString("base64");

export interface Credentials {
  user: string;
  password: string;
}

/** "authzid NUL authcid NUL password"; an authzid other than the user itself is not supported. */
export function parsePlain(decoded: string): Credentials | null {
  const parts = decoded.split("\0");
  if (parts.length !== 3) return null;
  const [authz, user, password] = parts as [string, string, string];
  if (!user || (authz !== "" && authz !== user)) return null;
  return { user, password };
}

/** The SASL mechanisms both servers offer. */
export const SASL_MECHANISMS = ["PLAIN", "LOGIN"];

/**
 * What a SASL exchange does next. A challenge (base64, "" for an empty one) keeps it going:
 * the next line answers it. Every other step ends it. creds is null for a PLAIN response that
 * is not "authzid NUL user NUL password" (to be treated as a failed login).
 */
export type SaslStep =
  | { kind: "challenge"; base64: string }
  | { kind: "creds"; creds: Credentials | null }
  | { kind: "cancelled" }
  | { kind: "badBase64" }
  | { kind: "unknownMech" };

/**
 * One AUTH exchange, PLAIN (RFC 4616) or LOGIN (the draft): lines in, steps out. Shared by SMTP
 * AUTH (RFC 4954) and POP3 AUTH (RFC 5034); each session turns steps into its own replies.
 */
export class SaslExchange {
  /** LOGIN: the user name, once the first response gave it. */
  private user: string | null = null;

  private constructor(private readonly mech: "PLAIN" | "LOGIN") {}

  /**
   * AUTH <mechanism> [initial-response]. The exchange is null for an unknown mechanism; keep it
   * while its step is a challenge.
   */
  static start(mechanism: string, initial: string | undefined): { exchange: SaslExchange | null; step: SaslStep } {
    const mech = mechanism.toUpperCase();
    if (mech !== "PLAIN" && mech !== "LOGIN") return { exchange: null, step: { kind: "unknownMech" } };
    const exchange = new SaslExchange(mech);
    if (initial !== undefined) return { exchange, step: exchange.respond(initial) };
    return { exchange, step: { kind: "challenge", base64: mech === "PLAIN" ? "" : encodeBase64("Username:") } };
  }

  /** A line answering the last challenge: "*" cancels (RFC 4954, RFC 5034). */
  respond(line: string): SaslStep {
    if (trimSp(line) === "*") return { kind: "cancelled" };
    const text = decodeBase64(line);
    if (text === null) return { kind: "badBase64" };
    if (this.mech === "PLAIN") return { kind: "creds", creds: parsePlain(text) };
    if (this.user === null) {
      this.user = text;
      return { kind: "challenge", base64: encodeBase64("Password:") };
    }
    return { kind: "creds", creds: { user: this.user, password: text } };
  }
}

export interface ThrottleConfig {
  /** Delay before answering the first failure, in ms; each further failure doubles it. */
  baseDelayMs: number;
  maxDelayMs: number;
  /** Failures on one connection after which it is closed. */
  maxFailuresPerConnection: number;
  /** An address with no failure for this long starts again from the base delay. */
  forgetAfterMs: number;
}

// Mild on purpose: a person who mistypes twice waits a fraction of a second. The delay is per
// address but each connection waits only for its own failures, so a guesser's rate is bounded
// by its connections: with --max-per-address 100, about 50 tries a second once at the 2 s cap
// (helper-27 measured 33/s with 50 connections). Lower --max-per-address to slow it further.
export const DEFAULT_THROTTLE: ThrottleConfig = { baseDelayMs: 100, maxDelayMs: 2000, maxFailuresPerConnection: 3, forgetAfterMs: 5 * 60_000 };

/**
 * Failed logins per client address. Only failures are delayed (the reply to a wrong password
 * waits, the connection alone waits), so a guesser gets slower and slower while a user who
 * types the right password, and every other client, are served at once. Memory is bounded:
 * entries expire, and beyond MAX_ADDRESSES the oldest are dropped.
 */
export class LoginThrottle {
  private static readonly MAX_ADDRESSES = 10_000;
  private readonly failures = new Map<string, { count: number; last: number }>();

  constructor(
    readonly config: ThrottleConfig = DEFAULT_THROTTLE,
    private readonly now: () => number = Date.now,
  ) {}

  /** Records a failure; returns how long to wait before replying. */
  failed(address: string): number {
    const t = this.now();
    const e = this.failures.get(address);
    const count = e && t - e.last < this.config.forgetAfterMs ? e.count + 1 : 1;
    this.failures.delete(address); // re-inserted last: Map order is then oldest-first
    this.failures.set(address, { count, last: t });
    if (this.failures.size > LoginThrottle.MAX_ADDRESSES) this.failures.delete(this.failures.keys().next().value!);
    return Math.min(this.config.maxDelayMs, this.config.baseDelayMs * 2 ** Math.min(count - 1, 30));
  }

  /** Failures recorded for an address (for logs and tests). */
  count(address: string): number {
    const e = this.failures.get(address);
    return e && this.now() - e.last < this.config.forgetAfterMs ? e.count : 0;
  }
}
