// Property test (review of 497e2eb): random sessions against FileMaildrop + one IndexCache.
import { afterAll, describe, expect, test } from "bun:test";
import { appendFileSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { IndexCache } from "../lib/index-cache.ts";
import { FileMaildrop } from "../lib/maildrop.ts";
import { buildRecord } from "../lib/mailbox.ts";
import { mailboxPath } from "../lib/paths.ts";
import { seeded } from "./helpers/random.ts";
import { makeRoot, removeRoot } from "./helpers/servers.ts";

const roots: string[] = [];
afterAll(() => roots.forEach(removeRoot));

const record = (n: number) => buildRecord(Buffer.from(`From: bob@example.com\r\nSubject: m${n}\r\n\r\nbody ${n}\r\n`), "Received: 2024-01-02 : 03 : 04");

interface Opts {
  seed: number;
  sessions: number;
  pool: number;
  cache: () => IndexCache;
  /** Check persistence of survivors' UIDs (off when the cache cannot keep the index). */
  persist: boolean;
  /** Check deleted UIDs never come back. */
  retire: boolean;
  /** Before some sessions, do something to the cache/file (eviction, hand edit). */
  disturb?: (rand: (n: number) => number, path: string, cache: IndexCache) => void;
}

async function run(o: Opts): Promise<string[]> {
  const r = makeRoot({ alice: "pw" });
  roots.push(r);
  const path = mailboxPath(r, "alice");
  writeFileSync(path, "");
  const rand = seeded(o.seed);
  const cache = o.cache();
  // What the last session left: the UID of each message in file order (null: appended since, not yet seen).
  let model: (string | null)[] = [];
  const deletedUids = new Set<string>();
  const problems: string[] = [];
  const appendSome = (max: number) => {
    const k = rand(max + 1);
    for (let j = 0; j < k; j++) {
      appendFileSync(path, record(rand(o.pool)));
      model.push(null);
    }
  };
  for (let s = 0; s < o.sessions; s++) {
    appendSome(4);
    o.disturb?.(rand, path, cache);
    const d = await FileMaildrop.open(r, "alice", () => {}, cache);
    const uids = Array.from({ length: d.count }, (_, i) => d.uid(i));
    if (uids.length !== model.length) problems.push(`s${s}: count ${uids.length} != model ${model.length}`);
    if (new Set(uids).size !== uids.length) problems.push(`s${s}: duplicate UIDs ${JSON.stringify(uids)}`);
    for (let i = 0; i < uids.length; i++) {
      const was = model[i];
      if (o.persist && was != null && was !== uids[i]) problems.push(`s${s}: message ${i} was ${was}, now ${uids[i]}`);
      if (o.retire && was == null && deletedUids.has(uids[i]!)) problems.push(`s${s}: new message ${i} got deleted UID ${uids[i]}`);
    }
    if (problems.length) break;
    // Delete a random subset (sometimes everything, sometimes nothing).
    const mode = rand(10);
    const deleted = new Set<number>();
    for (let i = 0; i < d.count; i++) if (mode === 0 || (mode > 2 && rand(3) === 0)) deleted.add(i);
    // Copies delivered during the session: the rewrite's tail.
    model = uids.slice();
    if (rand(2)) appendSome(3);
    const how = rand(6);
    if (how === 0) d.release(); // connection dropped / QUIT in AUTHORIZATION
    else await d.commit(how === 1 ? new Set() : deleted); // QUIT after RSET, or QUIT
    if (how >= 2 && deleted.size) {
      for (const i of deleted) deletedUids.add(uids[i]!);
      model = model.filter((_, i) => !deleted.has(i));
    }
  }
  return problems;
}

describe("UID property (helper-54)", () => {
  const SWEEP = Number(process.env.SWEEP ?? 0);
  if (SWEEP)
    test("sweep", async () => {
      const bad: string[] = [];
      for (let seed = 100; seed < 100 + SWEEP; seed++) {
        const p = await run({ seed, sessions: 300, pool: 1 + (seed % 8), cache: () => new IndexCache(), persist: true, retire: true });
        if (p.length) bad.push(`seed ${seed}: ${p.slice(0, 3).join("; ")}`);
      }
      expect(bad).toEqual([]);
    }, 600_000);
  for (const seed of [1, 2, 3, 4, 5, 6, 7, 8]) {
    test(`seed ${seed}: unique, persistent, deleted never reused`, async () => {
      const p = await run({ seed, sessions: 150, pool: 3 + (seed % 4), cache: () => new IndexCache(), persist: true, retire: true });
      expect(p).toEqual([]);
    });
  }
  // Uniqueness only: without the cached index (evicted) or after a hand edit (a new file), the
  // copies are counted afresh.
  const disturbed = (seed: number, disturb: NonNullable<Opts["disturb"]>) =>
    run({ seed, sessions: 150, pool: 4, cache: () => new IndexCache(), persist: false, retire: false, disturb });
  for (const seed of [11, 12, 13]) {
    test(`seed ${seed}: cache evicted at random: still unique`, async () => {
      expect(await disturbed(seed, (rand, path, cache) => rand(5) === 0 && cache.drop(path))).toEqual([]);
    });
    test(`seed ${seed}: hand-edited (rewritten as a new file): still unique`, async () => {
      const edit = (rand: (n: number) => number, path: string) => {
        if (rand(5) !== 0) return;
        writeFileSync(path + ".new", readFileSync(path));
        renameSync(path + ".new", path);
      };
      expect(await disturbed(seed, edit)).toEqual([]);
    });
  }
});
