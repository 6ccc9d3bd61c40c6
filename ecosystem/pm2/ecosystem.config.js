// PM2 ecosystem for lull: N instances of `lull run` in one consumer group.
//
// Kafka gives each instance a share of the input partitions, so every user's burst is batched by
// exactly one process; more instances = more throughput, up to the partition count.
//
//   KAFKA_BROKERS=kafka:9092 REDIS_URL=redis://127.0.0.1:6379 \
//     LULL_BIN=/usr/local/bin/lull npx pm2 start ecosystem.config.js
//
// PM2 stops a process with SIGINT, then SIGKILL after kill_timeout. lull drains on SIGINT (it
// delivers what is due, waits for acknowledgements up to LULL_DRAIN_TIMEOUT_MS, commits and exits 0),
// so kill_timeout must be longer than the drain: 15 s against the default 10 s.
// Every other setting (KAFKA_BROKERS, REDIS_URL, LULL_*) comes from the environment PM2 starts in.
const os = require("os");

const instances = parseInt(process.env.LULL_PM2_INSTANCES || "2", 10);
const basePort = parseInt(process.env.LULL_PM2_BASE_PORT || "9898", 10);
const binary = process.env.LULL_BIN || "/usr/local/bin/lull";
const drainMs = parseInt(process.env.LULL_DRAIN_TIMEOUT_MS || "10000", 10);

module.exports = {
  apps: Array.from({ length: instances }, (_, i) => ({
    name: `lull-${i}`,
    script: binary,
    args: "run",
    interpreter: "none",
    exec_mode: "fork",
    autorestart: true,
    // Exit 2 is a configuration error (lull names the bad variable on stderr): restarting cannot
    // fix it, so PM2 leaves the process stopped instead of looping. 0 is a clean stop.
    stop_exit_codes: [0, 2],
    // Give lull its full drain before PM2 resorts to SIGKILL.
    kill_timeout: drainMs + 5000,
    // A process that exits within 10 s of starting is counted as a crash loop.
    min_uptime: 10000,
    max_restarts: 20,
    restart_delay: 1000,
    merge_logs: true,
    env: {
      // Distinct per instance: shown in every log line and in Redis ownership records.
      LULL_INSTANCE_ID: `${os.hostname()}-lull-${i}`,
      // Distinct per instance: /metrics and /health/* for each.
      LULL_HTTP_ADDR: `127.0.0.1:${basePort + i}`,
      LULL_LOG_FORMAT: process.env.LULL_LOG_FORMAT || "json",
    },
  })),
};
