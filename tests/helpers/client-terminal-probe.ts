// Reads through lib/terminal.ts as mailclient does and prints what each call returned, as JSON.
import { readKey, readLine, readPassword } from "../../lib/terminal.ts";

const calls: Record<string, (prompt: string) => Promise<string | null>> = { line: readLine, password: readPassword, key: readKey };
for (const kind of process.argv.slice(2)) {
  const got = await calls[kind]!(`[${kind}] `);
  process.stdout.write(JSON.stringify(got) + "\n");
}
