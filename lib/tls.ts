// Certificates for the servers' TLS (STARTTLS / STLS upgrades and the implicit-TLS port) and
// the client side's options. Files are read once at start-up, so a bad path or a key that
// does not match the certificate stops the server with one line instead of failing every
// handshake later.
import { readFileSync } from "node:fs";

export interface ServerTls {
  key: string;
  cert: string;
}

export function loadServerTls(certFile: string | true | undefined, keyFile: string | true | undefined): ServerTls | null {
  if (certFile === undefined && keyFile === undefined) return null;
  if (typeof certFile !== "string" || typeof keyFile !== "string") throw new Error("--tls-cert and --tls-key go together");
  const read = (f: string, what: string) => {
    try {
      return readFileSync(f, "utf8");
    } catch (e) {
      throw new Error(`cannot read ${what} ${f}: ${(e as Error).message}`);
    }
  };
  const tls = { cert: read(certFile, "certificate"), key: read(keyFile, "key") };
  try {
    // Loaded only here: importing node:tls grew a server without TLS by 3.5 MiB resident.
    (require("node:tls") as typeof import("node:tls")).createSecureContext(tls);
  } catch (e) {
    throw new Error(`unusable certificate or key (${certFile}, ${keyFile}): ${(e as Error).message}`);
  }
  return tls;
}

/** How a client protects its connection: none, implicit TLS, or STARTTLS / STLS after the greeting. */
export type TlsMode = "none" | "implicit" | "starttls";

export interface ClientTls {
  /** Name checked against the certificate (and sent as SNI). */
  serverName: string;
  /** Accept any certificate: only for self-signed test setups. */
  insecure?: boolean;
  /** Extra trusted CA certificates, PEM. */
  ca?: string;
}

export function bunClientTls(t: ClientTls): { serverName: string; rejectUnauthorized: boolean; ca?: string } {
  return { serverName: t.serverName, rejectUnauthorized: !t.insecure, ...(t.ca ? { ca: t.ca } : {}) };
}
