// A downstream team's consumer of lull, with KafkaJS and no codec plugins: reads the output and
// DLQ topics from the beginning until it has `want_batches` batches and `want_dead` dead letters
// (or the deadline passes), then prints what it saw as one JSON line. Used by tests/kafkajs.rs.
//
//   node read.js BROKERS OUTPUT_TOPIC DLQ_TOPIC WANT_BATCHES WANT_DEAD DEADLINE_MS [fail-fast]
// fail-fast: no retries, so a message KafkaJS cannot decode ends the run at once.
const { Kafka, logLevel } = require("kafkajs");

const [brokers, output, dlq, wantBatches, wantDead, deadlineMs, mode] = process.argv.slice(2);
const failFast = mode === "fail-fast";
const kafka = new Kafka({
  clientId: "lull-kafkajs-check",
  brokers: brokers.split(","),
  logLevel: logLevel.ERROR,
});
const consumer = kafka.consumer({
  groupId: `kafkajs-check-${process.pid}-${Date.now()}`,
  ...(failFast ? { retry: { retries: 0 } } : {}),
});
const seen = { batches: [], dead: [], errors: [] };

async function main() {
  await consumer.connect();
  await consumer.subscribe({ topics: [output, dlq], fromBeginning: true });
  let finish;
  const done = new Promise((resolve) => {
    finish = resolve;
    const timer = setTimeout(resolve, Number(deadlineMs));
    consumer.run({
      eachMessage: async ({ topic, message }) => {
        const headers = Object.fromEntries(
          Object.entries(message.headers || {}).map(([k, v]) => [k, v === null ? null : v.toString()]),
        );
        if (topic === output) {
          const batch = JSON.parse(message.value.toString());
          seen.batches.push({
            key: message.key.toString(),
            batch_id: batch.batch_id,
            count: batch.count,
            text: batch.text,
            header_batch_id: headers["lull-batch-id"],
          });
        } else {
          seen.dead.push({
            key: message.key ? message.key.toString() : null,
            value: message.value ? message.value.toString() : null,
            error: headers["x-error-message"],
          });
        }
        if (seen.batches.length >= Number(wantBatches) && seen.dead.length >= Number(wantDead)) {
          clearTimeout(timer);
          resolve();
        }
      },
    }).catch((e) => { seen.errors.push(String(e)); resolve(); });
  });
  // A codec KafkaJS cannot read surfaces as a crash of the consumer: record it, don't hang.
  consumer.on(consumer.events.CRASH, (e) => {
    seen.errors.push(String(e.payload.error));
    finish();
  });
  await done;
  await consumer.disconnect();
  // Exit now: a pending deadline timer would keep Node alive.
  process.stdout.write(JSON.stringify(seen) + "\n", () => process.exit(0));
}

main().catch((e) => {
  seen.errors.push(String(e));
  process.stdout.write(JSON.stringify(seen) + "\n", () => process.exit(1));
});
