// Server log lines go to stderr, gathered per event-loop turn: one write for many lines
// instead of a write per line (a delivery under load logs thousands of lines a second).
const pending: string[] = [];
let scheduled = false;

function flush(): void {
  scheduled = false;
  if (!pending.length) return;
  const text = pending.join("");
  pending.length = 0;
  process.stderr.write(text);
}

export function log(line: string): void {
  pending.push(line + "\n");
  if (pending.length >= 1000) flush();
  else if (!scheduled) {
    scheduled = true;
    setImmediate(flush);
  }
}

process.on("exit", flush);
