// A per-user debounce done in Redis alone, with BullMQ: what teams write when they have a job
// queue and no stream processor. Each fragment is appended to its user's list and (re)schedules
// the user's flush job — one job per user, deduplicated by the user id, replaced and delayed again
// by every new fragment (BullMQ's debounce mode: `deduplication` with `extend` and `replace`). The
// worker that runs a flush job takes the user's list (LRANGE + DEL in one MULTI): one batch.
//
// It reports, as JSON, what BENCHMARKS.md compares with lull: fragments per second, Redis
// commands per fragment (every command, those inside BullMQ's Lua scripts included, from
// `INFO commandstats`) and Redis CPU per fragment (`INFO cpu`).
//
//   REDIS_URL=redis://127.0.0.1:6379 node debounce.mjs [fragments] [users] [quiet_ms]
//
// Use a Redis of its own: it resets the server's command statistics.

import { Queue, Worker } from "bullmq";
import IORedis from "ioredis";

const url = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const fragments = Number(process.argv[2] ?? 100_000);
const users = Number(process.argv[3] ?? 5_000);
const quietMs = Number(process.argv[4] ?? 500);
const name = `debounce-${process.pid}`;

const admin = new IORedis(url, { maxRetriesPerRequest: null });
const connection = { url, maxRetriesPerRequest: null };

function stats(info) {
  const calls = {};
  for (const line of info.split("\n")) {
    const m = line.match(/^cmdstat_([^:]+):calls=(\d+)/);
    if (m) calls[m[1]] = Number(m[2]);
  }
  return calls;
}

async function cpu() {
  const info = await admin.info("cpu");
  const get = (k) => Number(info.match(new RegExp(`${k}:([\\d.]+)`))[1]);
  return get("used_cpu_user") + get("used_cpu_sys");
}

const queue = new Queue(name, { connection });
let batched = 0;
let batches = 0;
let done;
const finished = new Promise((resolve) => (done = resolve));
const worker = new Worker(
  name,
  async (job) => {
    const key = `${name}:buf:${job.data.user}`;
    const [[, items]] = await admin.multi().lrange(key, 0, -1).del(key).exec();
    batched += items.length;
    batches += 1;
    if (batched >= fragments) done();
  },
  { connection, concurrency: 50 },
);
await worker.waitUntilReady();

await admin.config("RESETSTAT");
const cpuBefore = await cpu();
const started = Date.now();
// Fragments go out in rounds of one per user, a few hundred in flight at once.
const inFlight = 500;
let pending = [];
for (let i = 0; i < fragments; i++) {
  const user = `u${i % users}`;
  const text = JSON.stringify({ user_id: user, event_id: `${user}-${i}`, text: "x".repeat(60) });
  pending.push(
    admin.rpush(`${name}:buf:${user}`, text).then(() =>
      queue.add(
        "flush",
        { user },
        {
          delay: quietMs,
          deduplication: { id: user, ttl: quietMs, extend: true, replace: true },
          removeOnComplete: true,
          removeOnFail: true,
        },
      ),
    ),
  );
  if (pending.length >= inFlight) {
    await Promise.all(pending);
    pending = [];
  }
}
await Promise.all(pending);
const sent = Date.now();
await finished;
const seconds = (Date.now() - started) / 1000;
const redisCpu = (await cpu()) - cpuBefore;
const calls = stats(await admin.info("commandstats"));
delete calls["config|resetstat"];
const total = Object.values(calls).reduce((a, b) => a + b, 0);
const top = Object.entries(calls)
  .sort((a, b) => b[1] - a[1])
  .slice(0, 12)
  .map(([c, n]) => `${c} ${(n / fragments).toFixed(2)}`)
  .join(", ");
console.log(
  JSON.stringify(
    {
      fragments,
      users,
      quiet_ms: quietMs,
      batches,
      seconds_to_send: (sent - started) / 1000,
      seconds,
      fragments_per_sec: Math.round(fragments / seconds),
      redis_commands_per_fragment: +(total / fragments).toFixed(2),
      redis_cpu_us_per_fragment: +((redisCpu * 1e6) / fragments).toFixed(1),
      top_commands_per_fragment: top,
    },
    null,
    1,
  ),
);
await worker.close();
await queue.obliterate({ force: true });
await queue.close();
admin.disconnect();
