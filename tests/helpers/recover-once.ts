// Child of journal.test.ts: a restarted smtpmail's recovery of the root in argv[2], run
// under strace so the test sees which fsync/sync calls it makes. Prints how many copies it put back.
import { FileMailStore } from "../../lib/mail-store.ts";

const store = new FileMailStore(process.argv[2]!);
const restored = await store.recover();
await store.close();
process.stdout.write(String(restored));
