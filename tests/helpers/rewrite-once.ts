// Child of maildrop.test.ts: one POP3 session's rewrite of alice's mailbox under the root in
// argv[2], deleting message 1, with a rewrite flush step of argv[3] bytes; run under strace
// so the test sees the writes and syncs of the temp file.
import { FileMaildrop } from "../../lib/maildrop.ts";

FileMaildrop.syncStep = Number(process.argv[3]);
const d = await FileMaildrop.open(process.argv[2]!, "alice");
await d.commit(new Set([0]));
process.stdout.write(String(d.count));
