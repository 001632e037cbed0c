// Runs before every npm script: on a fresh machine with only Node and npm, installs the
// pinned Bun from npm. Plain Node on purpose: Bun is what it installs.
import { existsSync } from "node:fs";
import { execFileSync, spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const bun = join(root, "node_modules", ".bin", process.platform === "win32" ? "bun.exe" : "bun");
const works = () => existsSync(bun) && spawnSync(bun, ["--version"], { stdio: "ignore" }).status === 0;

if (!works()) {
  console.error("Installing the pinned Bun and dev dependencies (npm install)...");
  execFileSync("npm", ["install", "--no-audit", "--no-fund"], { cwd: root, stdio: "inherit", shell: process.platform === "win32" });
  // npm may skip install scripts; the bun package then holds only a placeholder binary.
  if (!works()) execFileSync(process.execPath, [join(root, "node_modules", "bun", "install.js")], { cwd: join(root, "node_modules", "bun"), stdio: "inherit" });
  if (!works()) {
    console.error("Bun could not be installed from npm; see README.md");
    process.exit(1);
  }
}
