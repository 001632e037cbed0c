// The protocol ceiling: smtpmail itself (same arguments, user.txt lookups, delivery log,
// framing, session, adapter) with only the store replaced by a no-op. A separate bench-only
// entry point, so the no-op store can never be switched on from smtpmail's command line.
import { runMain } from "../lib/cli.ts";
import { smtpmail } from "../smtpmail.ts";
import { restartWithoutFtl } from "../lib/jit.ts";

// The same runtime options as smtpmail.
restartWithoutFtl();

void runMain("null-smtp", () =>
  smtpmail(process.argv.slice(2), () => ({
    stats: { messages: 0, fsyncs: 0, batches: 0, locks: 0, journals: 0, checkpoints: 0, roundMs: 0, journalMs: 0 },
    deliver: async () => {},
    recover: async () => 0,
    close: async () => {},
  })),
);
