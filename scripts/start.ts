// `npm start`: both servers in one terminal. Serves the directory npm was started from if
// it has a user.txt (as the assignment runs things); otherwise a demo mail root with demo
// users, created on first use. Ctrl-C stops both cleanly.
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs, parsePort, runMain, type FlagSpec } from "../lib/cli.ts";
import { hangupIgnored, STOP_WITH_PARENT } from "../lib/daemon.ts";
import { parseUserTable } from "../lib/users.ts";

const PROJECT = resolve(import.meta.dir, "..");
const DEMO_USERS: [string, string][] = [["alice", "alice123"], ["bob", "bob123"], ["carol", "carol123"]];
const FLAGS: FlagSpec = {
  "--smtp-port": { value: "PORT", help: "SMTP port (default 2525)" },
  "--pop-port": { value: "PORT", help: "POP3 port (default 1100)" },
  "--root": { value: "DIR", help: "mail root to serve" },
  "--host": { value: "ADDR", help: "address to listen on (default: all, as the servers)" },
  "--help": { help: "show this help" },
};

await runMain("start", async () => {
  const { flags } = parseArgs(Bun.argv.slice(2), FLAGS);
  if (flags.has("--help")) {
    console.log("usage: npm start [-- --smtp-port P --pop-port P --root DIR --host ADDR]");
    return;
  }
  const smtpPort = parsePort(flags.get("--smtp-port") as string | undefined, 2525, "SMTP port");
  const popPort = parsePort(flags.get("--pop-port") as string | undefined, 1100, "POP3 port");
  // Checked by the servers, which say what is wrong with it.
  const host = flags.has("--host") ? ["--host", String(flags.get("--host"))] : [];
  // npm runs scripts in the package directory; INIT_CWD is where the user typed the command.
  const here = process.env.INIT_CWD ?? process.cwd();
  let root = flags.has("--root") ? resolve(here, String(flags.get("--root"))) : existsSync(join(here, "user.txt")) ? here : join(PROJECT, "demo-root");
  let created = false;
  if (!existsSync(join(root, "user.txt"))) {
    created = true;
    mkdirSync(root, { recursive: true });
    writeFileSync(join(root, "user.txt"), DEMO_USERS.map(([u, p]) => `${u} ${p}\n`).join(""));
    for (const [u] of DEMO_USERS) mkdirSync(join(root, u), { recursive: true });
    console.log(`Created demo mail root ${root}`);
  }
  console.log(`Mail root: ${root}`);
  const userText = await Bun.file(join(root, "user.txt")).text();
  // Passwords only for the demo root: a real one's would end up on the screen and in scrollback.
  const demo = created || root === join(PROJECT, "demo-root");
  console.log(demo ? "Users (name password):" : "Users:");
  // As the servers read the file: a line they skip (their warning says why) is no user.
  const { names, passwords } = parseUserTable(userText);
  for (const name of names) console.log(`  ${demo ? `${name} ${passwords.get(name)}` : name}`);

  // The handlers go in before the servers start: a SIGTERM that came in between ended this
  // process by the default action, and both servers ran on, adopted by init, with nobody to
  // stop them (9 of 100 SIGTERMs sent as soon as "Press Ctrl-C" was read; helper-104).
  const servers: ReturnType<typeof Bun.spawn>[] = [];
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    for (const p of servers) if (p.exitCode === null) p.kill("SIGTERM");
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  const nohup = hangupIgnored();
  if (!nohup) process.on("SIGHUP", stop);
  const spawn = (script: string, port: number) =>
    Bun.spawn([process.execPath, join(PROJECT, script), String(port), "--root", root, ...host], {
      stdio: ["ignore", "inherit", "inherit"],
      // Killed by SIGKILL, this process stops nobody: each server watches for that itself.
      env: { ...process.env, [STOP_WITH_PARENT]: String(process.pid) },
    });
  const smtp = spawn("smtpmail.ts", smtpPort);
  const pop = spawn("popserver.ts", popPort);
  servers.push(smtp, pop);
  // Port 0 lets each server pick one: the ports are in their own "listening" lines then.
  // Bun comes from npm and is not on PATH: the hint names the copy that is there.
  const client = here === PROJECT ? "node_modules/.bin/bun mailclient.ts" : `${join(PROJECT, "node_modules/.bin/bun")} ${join(PROJECT, "mailclient.ts")}`;
  // Servers on one address are reached there; on all of them, through this machine's own.
  const given = host[1];
  const address = !given || given === "0.0.0.0" || given === "::" ? "127.0.0.1" : given;
  if (smtpPort && popPort) console.log(`SMTP on port ${smtpPort}, POP3 on port ${popPort}. Try: ${client} ${address} ${smtpPort} ${popPort}`);
  else console.log(`Each server prints the port it picked in its "listening" line below; then: ${client} ${address} <smtp port> <pop3 port>`);
  console.log("Press Ctrl-C to stop both servers.");

  // npm passes a SIGTERM on to its shell, not to us: left alone we would keep both servers
  // running with nobody to stop them (helper-26). An orphan is adopted by another process.
  // Only under npm, and not under nohup: a start put in the background on purpose must
  // outlive its shell (helper-28).
  const parent = process.ppid;
  const watch = setInterval(() => {
    if (process.env.npm_lifecycle_event && !nohup && process.ppid !== parent) stop();
  }, 500);
  // If either server fails (port in use...), stop the other and report.
  const first = await Promise.race([smtp.exited.then((c) => ["smtpmail", c] as const), pop.exited.then((c) => ["popserver", c] as const)]);
  if (!stopping) {
    console.error(`${first[0]} exited with code ${first[1]}; stopping the other server`);
    stop();
  }
  const codes = await Promise.all([smtp.exited, pop.exited]);
  clearInterval(watch);
  process.exit(stopping && codes.every((c) => c === 0) ? 0 : 1);
});
