// `npm run build`: three standalone executables in dist/. Flags chosen by measurement
// (see README, "Building"): --minify cut start-up from ~82 to ~67 ms at the same size
// (~104 MiB, almost all of it the runtime) and RSS (~35 MiB); --bytecode gained nothing
// measurable and forbids top-level await. The autoload flags stop a binary from picking up
// a bunfig.toml or .env lying in whatever directory it is started from.
import { $ } from "bun";
import { resolve } from "node:path";

const PROJECT = resolve(import.meta.dir, "..");
const FLAGS = ["--compile", "--minify", "--no-compile-autoload-bunfig", "--no-compile-autoload-dotenv"];

for (const program of ["smtpmail", "popserver", "mailclient"]) {
  const out = resolve(PROJECT, "dist", program);
  await $`${process.execPath} build ${FLAGS} ${resolve(PROJECT, program + ".ts")} --outfile ${out}`.quiet();
  const version = (await $`${out} --version`.text()).trim();
  console.log(`built ${out} (${version})`);
}
