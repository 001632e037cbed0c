#!/usr/bin/env bun
// smtpmail: the SMTP receiving server ("R" in the assignment). Receives mail and appends it
// to <root>/<user>/mymailbox for users listed in <root>/user.txt.
import { hostname } from "node:os";
import { resolve, join } from "node:path";
import { helpText, parseArgs, parseCount, parseNumber, parsePort, parseSize, runMain, securityOptions, securityFlags, UsageError, VERSION, type FlagSpec } from "./lib/cli.ts";
import { FileMailStore, type MailStore, type StoreStats } from "./lib/mail-store.ts";
import { journalDir } from "./lib/journal.ts";
import { createSmtpServer } from "./lib/smtp-server.ts";
import { Users } from "./lib/users.ts";
import { installShutdown, listenOrExplain } from "./lib/daemon.ts";
import { log } from "./lib/log.ts";
import { promptOnStderr, readPassword } from "./lib/terminal.ts";
import { HeldFiles } from "./lib/descriptors.ts";
import { restartWithoutFtl } from "./lib/jit.ts";

const FLAGS: FlagSpec = {
  "--root": { value: "DIR", help: "mail root holding user.txt and one directory per user (default: current directory)" },
  "--domain": { value: "NAME", help: "name used in the 220 and 221 replies (default: this host's name)" },
  "--host": { value: "ADDR", help: "address to listen on (default: 0.0.0.0)" },
  "--local-domains": { value: "LIST", help: "comma-separated domains to accept mail for; others get 550, no relaying (default: any domain, as the assignment routes by user name)" },
  "--postmaster": { value: "USER", help: "user who receives mail for postmaster (default: first user in user.txt)" },
  "--max-size": { value: "BYTES", help: "largest message accepted, e.g. 10M (default: 10M)" },
  "--max-data-memory": { value: "BYTES", help: "memory for messages received but not yet stored, all connections together; past it DATA gets 452, try later (default: 512M)" },
  "--max-recipients": { value: "N", help: "recipients per message (default: 1000)" },
  "--max-connections": { value: "N", help: "simultaneous connections (default: 20000)" },
  "--max-messages": { value: "N", help: "messages accepted per connection before it is closed (default: no limit)" },
  ...securityFlags("smtp"),
  "--require-auth": { help: "MAIL needs a prior AUTH (530), and the sender must be the authenticated user (553)" },
  "--allow-plain-auth": { help: "offer AUTH on unencrypted connections too (default: only over TLS)" },
  "--hash-password": { help: "read a password (not echoed) and print a hash to put in user.txt, then exit" },
  "--timeout": { value: "SECONDS", help: "idle timeout per connection (default: 300, RFC 5321 4.5.3.2)" },
  "--verbose": { help: "log every command and reply as C: / S: lines" },
  "--quiet": { help: "log only deliveries and errors, not every connection" },
  "--version": { help: "print the version and exit" },
  "--help": { help: "show this help" },
};

function parseDomains(list: string): string[] {
  const domains = list.split(",").map((d) => d.trim().toLowerCase().replace(/\.$/, "")).filter(Boolean);
  if (!domains.length) throw new UsageError("--local-domains needs at least one domain");
  return domains;
}

const USAGE = "usage: smtpmail [my_port] [options]     (port default 2525; 0 picks a free port)";

/** What smtpmail delivers into. The benchmark's protocol ceiling passes a no-op one. */
export interface DeliveryStore extends MailStore {
  readonly stats: StoreStats;
  recover(): Promise<number>;
  close(): Promise<void>;
}

/** The whole program, given its arguments; the store is a parameter, never a flag. */
export async function smtpmail(argv: string[], makeStore: (root: string, held: HeldFiles) => DeliveryStore = (root, held) => new FileMailStore(root, log, undefined, held)): Promise<void> {
  const { positional, flags } = parseArgs(argv, FLAGS);
  if (flags.has("--help")) {
    process.stdout.write(helpText(USAGE, "SMTP server: receives mail and stores it in <root>/<user>/mymailbox.", FLAGS));
    return;
  }
  if (flags.has("--version")) {
    process.stdout.write(`smtpmail ${VERSION}\n`);
    return;
  }
  if (flags.has("--hash-password")) {
    promptOnStderr();
    const password = await readPassword("Password: ");
    if (!password) throw new Error("no password given");
    process.stdout.write((await Bun.password.hash(password)) + "\n");
    return;
  }
  if (positional.length > 1) throw new UsageError(`unexpected argument "${positional[1]}"`);
  const port = parsePort(positional[0], 2525, "port");
  const root = resolve(String(flags.get("--root") ?? "."));
  const postmaster = flags.get("--postmaster");
  const users = new Users(join(root, "user.txt"), log, typeof postmaster === "string" ? postmaster : undefined);
  users.load();
  // Mailbox descriptors past the store's share of the open-file limit: counted with the sockets.
  const held = new HeldFiles(false);
  const store = makeStore(root, held);
  const domain = String(flags.get("--domain") ?? hostname());
  const host = String(flags.get("--host") ?? "0.0.0.0");
  const sec = securityOptions(flags);
  const maxMessageSize = parseSize(flags.get("--max-size"), 10 * 1024 * 1024, "--max-size");
  const dataMemoryLimit = flags.has("--max-data-memory") ? parseSize(flags.get("--max-data-memory"), 0, "--max-data-memory") : undefined;
  // Otherwise a message between the two sizes would get "try again later" forever.
  if (dataMemoryLimit !== undefined && dataMemoryLimit < maxMessageSize) throw new UsageError("--max-data-memory must be at least --max-size");
  if (flags.has("--require-auth") && !sec.tlsFiles && !flags.has("--allow-plain-auth"))
    throw new UsageError("--require-auth needs --tls-cert/--tls-key (AUTH is offered over TLS only) or --allow-plain-auth");
  const server = createSmtpServer(
    {
      domain,
      host,
      port,
      heldFiles: held,
      maxMessageSize,
      dataMemoryLimit,
      localDomains: flags.has("--local-domains") ? parseDomains(String(flags.get("--local-domains"))) : undefined,
      maxRecipients: parseCount(flags.get("--max-recipients"), 1000, "--max-recipients", 1),
      maxConnections: parseCount(flags.get("--max-connections"), 20000, "--max-connections", 1),
      maxMessagesPerConnection: parseCount(flags.get("--max-messages"), Infinity, "--max-messages", 1),
      maxPerAddress: sec.maxPerAddress,
      perAddressExemptsLoopback: sec.perAddressExemptsLoopback,
      tlsFiles: sec.tlsFiles,
      tlsPort: sec.tlsPort,
      requireTls: sec.requireTls,
      requireAuth: flags.has("--require-auth"),
      allowPlainAuth: flags.has("--allow-plain-auth"),
      idleTimeoutMs: parseNumber(flags.get("--timeout"), 300, "--timeout", 0.1) * 1000,
      verbose: flags.has("--verbose"),
      quiet: flags.has("--quiet"),
      log,
    },
    users,
    store,
    { check: (name, password) => users.check(name, password), throttle: sec.throttle },
  );
  // Every option is checked by now: a start that fails on one must not leave journals behind.
  await store.recover().catch((e: Error) => {
    // Before listening: a server that cannot journal must not take mail it cannot keep.
    throw new Error(`cannot prepare the delivery journal in ${journalDir(root)}: ${e.message}`);
  });
  try {
    listenOrExplain(server, host, port);
  } catch (e) {
    // The journals recover() made are this process's; a port in use must not leave them (helper-103).
    await store.close();
    throw e;
  }
  const tlsNote = sec.tlsFiles ? `, STARTTLS${server.tlsPort ? `, TLS port ${server.tlsPort}` : ""}` : "";
  // Before the line that says it listens: a stop sent as soon as it is read must be graceful.
  installShutdown("smtpmail", server, async () => {
    await store.close();
    const { messages, fsyncs, batches, locks, journals, roundMs, journalMs } = store.stats;
    const perRound = batches ? `; a round took ${(roundMs / batches).toFixed(3)} ms on average, ${(journalMs / batches).toFixed(3)} ms of it the journal write and fsync` : "";
    log(`smtpmail: stored ${messages} message copies with ${fsyncs} fsyncs (${batches} commit rounds, mailbox locks taken ${locks} times, ${journals} journal files made${perRound})`);
  }, log);
  process.stdout.write(`smtpmail: listening on ${host} port ${server.port} (root ${root}, domain ${domain}, users ${users.summary()}${tlsNote})\n`);
}

if (import.meta.main) {
  restartWithoutFtl();
  void runMain("smtpmail", () => smtpmail(Bun.argv.slice(2)));
}
