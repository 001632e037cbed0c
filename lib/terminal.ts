// The one owner of stdin. It reads raw chunks and splits lines itself, so that prompts and reads
// stay in step whether a person types at a terminal or a script pipes everything in at once
// (Bun's prompt() and `for await (line of console)` lose buffered lines on pipes).

const stdin = process.stdin;
const isTTY = Boolean(stdin.isTTY);
const decoder = new TextDecoder("utf-8");

let buffer = ""; // received text; everything before `pos` is consumed
let pos = 0;
/**
 * Text before this offset in `buffer` was typed ahead while a one-key or password read had the
 * terminal in raw mode: it was never echoed, and its Enter came as "\r" (made "\n" since).
 */
let typedAhead = 0;
let ended = false;
let listening = false;
let wake: (() => void) | null = null;

function onData(chunk: Buffer | string): void {
  // Dropping the consumed prefix only here keeps reading a big piped input linear.
  buffer = buffer.slice(pos) + (typeof chunk === "string" ? chunk : decoder.decode(chunk, { stream: true }));
  typedAhead = Math.max(0, typedAhead - pos);
  pos = 0;
  notify();
}

function onEnd(): void {
  buffer += decoder.decode();
  ended = true;
  notify();
}

function notify(): void {
  const w = wake;
  wake = null;
  w?.();
}

/** Wait until more input (or EOF) arrives. Stdin is paused in between so the process can exit. */
function more(): Promise<void> {
  if (!listening) {
    listening = true;
    stdin.on("data", onData);
    stdin.on("end", onEnd);
  }
  stdin.resume();
  return new Promise<void>((resolve) => {
    wake = () => {
      stdin.pause();
      resolve();
    };
  });
}

let prompts: NodeJS.WritableStream = process.stdout;

/** Prompts (and what is echoed) go to stderr: for a command whose stdout is its result, as `H=$(smtpmail --hash-password)`. */
export function promptOnStderr(): void {
  prompts = process.stderr;
}

function write(text: string): void {
  prompts.write(text);
}

/**
 * An empty line arriving this soon after its prompt was typed before the prompt could be seen:
 * the Enter after a one-key answer, out of getchar() habit (a person needs 200 ms or more).
 */
const TYPED_BEFORE_PROMPT_MS = 100;

/**
 * Print the prompt and read one line (without its line end); null at end of input. With
 * `dropEarlyEmpty` (where an empty answer means nothing), at a terminal an empty line typed
 * before the prompt appeared is dropped without a trace: answered with the prompt again, it
 * showed the prompt twice on one line (helper-103).
 */
export async function readLine(prompt = "", dropEarlyEmpty = false): Promise<string | null> {
  write(prompt);
  const shown = performance.now();
  // Part of a line typed ahead in raw mode, its Enter not yet pressed: the terminal's own line
  // editor never saw it, so it could neither show it nor erase it (helper-43). This line is
  // edited here instead, starting from what was typed.
  if (isTTY && typedAhead > pos && !buffer.slice(pos, typedAhead).includes("\n")) return withRawMode(() => rawLine(true));
  for (;;) {
    const nl = buffer.indexOf("\n", pos);
    if (nl >= 0) {
      const line = buffer.slice(pos, nl);
      pos = nl + 1;
      if (dropEarlyEmpty && isTTY && (line === "" || line === "\r") && performance.now() - shown < TYPED_BEFORE_PROMPT_MS) continue;
      // Shown now, after its prompt, as the terminal would have shown it.
      if (nl < typedAhead) write(line + "\n");
      return line.endsWith("\r") ? line.slice(0, -1) : line;
    }
    if (ended) {
      if (pos >= buffer.length) return null;
      const line = buffer.slice(pos); // a last line without a newline still counts
      pos = buffer.length;
      return line;
    }
    await more();
  }
}

/** Run `body` with the TTY in raw mode, restoring cooked mode however it ends. */
async function withRawMode<T>(body: () => Promise<T>): Promise<T> {
  stdin.setRawMode(true);
  try {
    return await body();
  } finally {
    stdin.setRawMode(false);
    // Keys typed on after the one read (type-ahead, a paste): Enter in raw mode is "\r",
    // which a line read would wait past for ever.
    if (pos < buffer.length) {
      buffer = buffer.slice(0, pos) + buffer.slice(pos).replace(/\r\n?/g, "\n");
      typedAhead = buffer.length;
    }
  }
}

async function nextChar(): Promise<string | null> {
  for (;;) {
    if (pos < buffer.length) {
      const ch = String.fromCodePoint(buffer.codePointAt(pos)!);
      pos += ch.length;
      return ch;
    }
    if (ended) return null;
    await more();
  }
}

function interrupted(): never {
  stdin.setRawMode(false);
  write("^C\n");
  process.exit(130);
}

/** Read a password: no echo at a terminal (backspace and Ctrl-C work), a plain line on a pipe. */
export async function readPassword(prompt = ""): Promise<string | null> {
  if (!isTTY) return readLine(prompt);
  write(prompt);
  return withRawMode(() => rawLine(false));
}

/** Swallows the rest of an escape sequence (arrow keys...), which arrives in one chunk. */
function skipEscape(): void {
  pos += /^(?:\[[0-9;]*[A-Za-z~]|O[A-Za-z])?/.exec(buffer.slice(pos))![0].length;
}

/** A line read in raw mode and edited here (Backspace, Ctrl-U, Ctrl-C, Ctrl-D), echoed or not. */
async function rawLine(echo: boolean): Promise<string | null> {
  let text = "";
  const erase = (chars: number) => {
    if (echo) write("\b \b".repeat(chars));
  };
  for (;;) {
    const ch = await nextChar();
    if (ch === null) return text === "" ? null : text;
    if (ch === "\r" || ch === "\n") break;
    if (ch === "\x03") interrupted();
    if (ch === "\x04") {
      if (text === "") {
        write("\n");
        return null;
      }
      continue;
    }
    if (ch === "\x1b") skipEscape();
    else if (ch === "\x7f" || ch === "\b") {
      const chars = [...text];
      if (chars.length) erase(1);
      text = chars.slice(0, -1).join("");
    } else if (ch === "\x15") {
      erase([...text].length); // Ctrl-U, as in a cooked terminal
      text = "";
    } else if (ch >= " ") {
      text += ch;
      if (echo) write(ch);
    }
  }
  write("\n");
  return text;
}

/**
 * Read one key, like getchar(): at a terminal a single key press (Enter gives "\n"); on a pipe
 * the next line's first character ("\n" for an empty line). null at end of input.
 */
export async function readKey(prompt = ""): Promise<string | null> {
  if (!isTTY) {
    const line = await readLine(prompt);
    if (line === null) return null;
    return line === "" ? "\n" : String.fromCodePoint(line.codePointAt(0)!);
  }
  write(prompt);
  return withRawMode(async () => {
    const ch = await nextChar();
    if (ch === "\x03") interrupted();
    if (ch === null || ch === "\x04") {
      write("\n");
      return null;
    }
    if (ch === "\x1b") skipEscape();
    const key = ch === "\r" ? "\n" : ch;
    write(key === "\n" || key < " " ? "\n" : key + "\n");
    return key;
  });
}

/** Whether the user is at a terminal (for hints only; behaviour is the same otherwise). */
export const interactive = isTTY;
