// A throwaway self-signed certificate for localhost, made with openssl at test time (no keys
// in git). null when openssl is missing, so TLS tests can skip with a message.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface TestCert {
  dir: string;
  cert: string;
  key: string;
  /** The certificate's PEM text, to trust it as a CA. */
  pem: string;
  remove(): void;
}

export const hasOpenssl = Bun.which("openssl") !== null;

export function makeCert(): TestCert | null {
  if (!hasOpenssl) return null;
  const dir = mkdtempSync(join(tmpdir(), "mailcert-"));
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
  const r = Bun.spawnSync(
    ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert],
    { stdout: "ignore", stderr: "pipe" },
  );
  if (r.exitCode !== 0) throw new Error(`openssl failed: ${r.stderr.toString()}`);
  return { dir, cert, key, pem: readFileSync(cert, "utf8"), remove: () => rmSync(dir, { recursive: true, force: true }) };
}
