//! `lull demo`: the whole path on nothing but this binary.
//!
//! It starts librdkafka's mock cluster in-process, creates the topics, runs the real worker
//! against it, and drives simulated users typing in bursts. Then it reads every batch back and
//! checks, itself, that every fragment is in exactly one batch, none lost, none duplicated, and
//! each user's fragments in order. The result decides the exit code.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use lull::config::Config;
use lull::devkit::batches::{reader, Tally};
use lull::devkit::load::{
    channel_max_wait_ms, channel_quiet_ms, Plan, PlanArgs, Writer, PLAN_CHANNEL,
};
use lull::devkit::mock::MockBroker;
use lull::ops::clock::now_ms;

/// The demo's knobs (all have defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Simulated users.
    #[arg(long, default_value_t = 1_000)]
    pub users: usize,
    /// Fragments to send in total (about; spread over the users).
    #[arg(long, default_value_t = 20_000)]
    pub fragments: usize,
    /// Partitions of each topic on the mock cluster.
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// Sample batches to print.
    #[arg(long, default_value_t = 5)]
    pub samples: usize,
    /// Random seed for the typing simulation.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Write the whole typing session to Kafka first (timestamped in the past), then start the
    /// worker: it batches a lagged log in catch-up, as after an outage. Shows throughput and the
    /// Redis round trips per fragment under load; flush lateness does not apply.
    #[arg(long)]
    pub backlog: bool,
    /// Share of users who type slowly (pauses longer than the quiet period) and whose chat client
    /// sends `typing` signals meanwhile (0 to 1).
    #[arg(long, default_value_t = 0.2)]
    pub typing_share: f64,
    /// Share of bursts that end with a `"final": true` fragment.
    #[arg(long, default_value_t = 0.05)]
    pub final_share: f64,
    /// Share of fragments that are bot commands (`/status`), which bypass batching.
    #[arg(long, default_value_t = 0.01)]
    pub command_share: f64,
    /// Share of users who write from the `whatsapp` channel, whose quiet period is twice the
    /// global one (`LULL_CHANNEL_WHATSAPP_QUIET_MS`, set by the demo) and who pause for longer
    /// than the global quiet period inside their bursts (0 to 1).
    #[arg(long, default_value_t = 0.1)]
    pub channel_share: f64,
    /// Share of fragments the user corrects with an `edit` signal: half soon after (changed in
    /// place), half after the batch went out (sent alone, naming the batch in `amends`).
    #[arg(long, default_value_t = 0.02)]
    pub edit_share: f64,
    /// Share of fragments the user takes back with a `delete` signal (timed like the edits).
    #[arg(long, default_value_t = 0.01)]
    pub delete_share: f64,
    /// Settings (flags over environment variables).
    #[command(flatten)]
    pub settings: super::settings::SettingsArgs,
}

/// Why the demo could not run (as opposed to its check failing).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The mock cluster did not start.
    #[error(transparent)]
    Mock(#[from] lull::devkit::mock::MockError),
    /// A Kafka client of the demo failed.
    #[error("demo Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The worker stopped with an error.
    #[error("the worker failed: {0}")]
    Worker(#[from] lull::RunError),
    /// The worker's task died (a panic).
    #[error("the worker's task failed: {0}")]
    Task(String),
}

/// The figures the demo ends with.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    /// Fragments produced.
    pub fragments_in: usize,
    /// Batches read back.
    pub batches_out: usize,
    /// Bursts the simulation meant to type.
    pub bursts_planned: usize,
    /// Fragments never seen in a batch.
    pub lost: usize,
    /// Fragments seen in more than one batch (extra copies).
    pub duplicated: usize,
    /// Fragments seen out of their user's order.
    pub out_of_order: usize,
    /// Edits and deletes sent that no batch shows (neither in place nor alone).
    pub changes_lost: usize,
    /// Flush lateness p50 and p99 in milliseconds.
    pub lateness_ms: (i64, i64),
    /// Last fragment to flush, p50 and p99 in milliseconds.
    pub end_to_end_ms: (i64, i64),
}

impl DemoReport {
    /// Whether the end-to-end check passed.
    pub fn passed(&self) -> bool {
        self.fragments_in > 0
            && self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.changes_lost == 0
    }
}

/// The quiet period of the demo and the benchmark when the operator chose none: short, so they
/// finish in seconds (the service's default is 2 s).
pub const TOOL_QUIET_MS: u64 = 500;

/// The quiet period a tool with its own default plans and runs with: `LULL_QUIET_MS` (or
/// `--quiet-ms`) when given, else [`TOOL_QUIET_MS`].
pub fn tool_quiet_ms(config: &Config, settings: &super::settings::SettingsArgs) -> u64 {
    if settings.given("LULL_QUIET_MS") {
        (config.quiet.as_millis() as u64).max(1)
    } else {
        TOOL_QUIET_MS
    }
}

/// Writes the whole of `plan` at once, each message timestamped `base` + its planned time, and
/// waits for every acknowledgement: a backlog for lull to catch up on (the demo's `--backlog`,
/// the benchmark's throughput phases), with a bar on a terminal.
pub async fn write_backlog(
    writer: &mut Writer,
    plan: &Plan,
    base: i64,
) -> Result<(), rdkafka::error::KafkaError> {
    let written = super::progress::bar(plan.events.len() as u64, "writing the backlog");
    for e in &plan.events {
        let (key, value) = plan.message(e, "");
        writer
            .send(&key, &value, Some(base + e.at_ms as i64))
            .await?;
        written.inc(1);
    }
    writer.finish().await?;
    written.finish_and_clear();
    Ok(())
}

/// Runs the demo; returns its report (check [`DemoReport::passed`]).
pub async fn run(base: Config, args: DemoArgs) -> Result<DemoReport, DemoError> {
    let quiet_ms = tool_quiet_ms(&base, &args.settings);
    let mut config = base;
    config.quiet = Duration::from_millis(quiet_ms);
    if config.max_wait < config.quiet {
        config.max_wait = config.quiet;
    }
    let partitions = args.partitions.max(1);
    config.group_id = format!("lull-demo-{}", std::process::id());
    let broker = MockBroker::start(
        1,
        &[
            (config.input_topic.clone(), partitions),
            (config.output_topic.clone(), partitions),
            (config.dlq_topic.clone(), partitions),
            (config.state_topic(), partitions),
        ],
    )?;
    config.brokers = broker.bootstrap().to_string();
    // The demo must not collide with a `lull run` on the same machine.
    config.http_addr.set_port(0);

    println!("lull demo");
    println!(
        "  mock Kafka cluster at {} ({} partitions per topic, in memory)",
        broker.bootstrap(),
        partitions
    );
    match &config.redis_url {
        None => println!("  REDIS_URL is unset: running without shared state (batching is in memory; Kafka is the log of record)"),
        Some(url) => {
            // Keys of this run only, so an earlier demo's keys are never read.
            config.redis_prefix = format!(
                "{}:demo-{}-{}",
                config.redis_prefix,
                std::process::id(),
                now_ms()
            );
            println!(
                "  REDIS_URL is set: shared state in Redis at {} under {}:*",
                lull::config::mask_url_password(url.expose()),
                config.redis_prefix
            );
        }
    }
    // Commands bypass batching, as a bot would configure it.
    if config.bypass_pattern.is_none() {
        config.bypass_pattern = regex::Regex::new("^/").ok();
    }
    // The channel the plan's channel users write from, with its own quiet period.
    let channel_name = lull::model::fragment::channel_name(PLAN_CHANNEL);
    let quiet_ms = config.quiet.as_millis() as u64;
    if args.channel_share > 0.0 && !config.channels.iter().any(|c| c.name == channel_name) {
        config.channels.push(lull::config::channels::Channel {
            name: channel_name.clone(),
            quiet: Some(Duration::from_millis(channel_quiet_ms(quiet_ms))),
            max_wait: Some(Duration::from_millis(
                channel_max_wait_ms(quiet_ms).max(config.max_wait.as_millis() as u64),
            )),
            ..Default::default()
        });
        config.channels.sort_by(|a, b| a.name.cmp(&b.name));
    }
    let plan = Plan::new(PlanArgs {
        typing_share: args.typing_share,
        final_share: args.final_share,
        command_share: args.command_share,
        channel_share: args.channel_share,
        edit_share: args.edit_share,
        delete_share: args.delete_share,
        ..PlanArgs::plain(args.users, args.fragments, quiet_ms, args.seed)
    });
    let changes = plan.changes_in_window.len() + plan.changes_after.len();
    let signals = plan.events.len() - plan.fragments() - changes;
    println!(
        "  {} users typing {} fragments in {} bursts ({signals} typing signals from slow typists, \
         {changes} edits and deletes, commands matching {}); quiet {} ms, max wait {} ms, grace {} ms",
        args.users,
        plan.fragments(),
        plan.bursts,
        config
            .bypass_pattern
            .as_ref()
            .map_or("nothing", |r| r.as_str()),
        config.quiet.as_millis(),
        config.max_wait.as_millis(),
        config.grace.as_millis()
    );

    let mut writer = Writer::new(&config, &config.input_topic)?;
    let total = plan.fragments();
    let mut next = 0;
    let mut read_started: Option<std::time::Instant> = None;
    if args.backlog {
        write_backlog(
            &mut writer,
            &plan,
            now_ms() - plan.span_ms() as i64 - 10_000,
        )
        .await?;
        next = plan.events.len();
        println!("  backlog of {total} fragments written; starting the worker on it");
    }

    let token = CancellationToken::new();
    let health = Arc::new(lull::ops::health::Health::new());
    let mut worker = tokio::spawn(lull::run_with_health(
        config.clone(),
        token.clone(),
        health.clone(),
    ));
    let mut worker_result = None;

    // Type only once the worker owns its partitions, so the first bursts are not read late.
    let join_deadline = Instant::now() + Duration::from_secs(60);
    let joining = super::progress::spinner("starting the worker: waiting for its partitions");
    while health.assigned_partitions() < partitions as usize {
        if worker.is_finished() || Instant::now() > join_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    joining.finish_and_clear();
    if args.backlog {
        read_started = Some(std::time::Instant::now());
    }

    let reader = reader(
        &config,
        &config.output_topic,
        &format!("{}-check", config.group_id),
    )?;
    let mut tally = Tally::new(config.quiet, config.max_wait, config.grace)
        .without_lateness_of(plan.slow_users.clone())
        .with_other_channel(
            plan.channel_users
                .iter()
                .map(|&u| lull::devkit::load::user_name(u))
                .collect(),
        );
    let progress = super::progress::bar(total as u64, "");
    let start = Instant::now();
    let deadline = start
        + Duration::from_millis(plan.span_ms())
        + config.max_wait
        + config.grace
        + Duration::from_secs(60);
    let mut all_batched_at = None;
    let mut settle_until: Option<Instant> = None;
    let never = start + Duration::from_secs(86_400 * 365);

    loop {
        let next_at = plan
            .events
            .get(next)
            .map(|e| start + Duration::from_millis(e.at_ms));
        tokio::select! {
            _ = tokio::time::sleep_until(next_at.unwrap_or(never)), if next_at.is_some() => {
                // Send everything due now in one go.
                let now = Instant::now();
                while let Some(e) = plan.events.get(next) {
                    if start + Duration::from_millis(e.at_ms) > now {
                        break;
                    }
                    let (key, value) = plan.message(e, "");
                    writer.send(&key, &value, None).await?;
                    next += 1;
                }
            }
            received = reader.recv() => {
                let m = received?;
                if let Some(payload) = m.payload() {
                    tally.add(payload);
                }
                let changes_seen = tally.changed_in_place.len() + tally.amended_alone.len();
                if tally.distinct() >= total && changes_seen >= changes && settle_until.is_none() {
                    all_batched_at = Some(std::time::Instant::now());
                    // Everything arrived: wait a little longer for any duplicate to show up.
                    settle_until = Some(Instant::now() + Duration::from_secs(1));
                }
            }
            _ = tokio::time::sleep_until(settle_until.unwrap_or(never)), if settle_until.is_some() => break,
            _ = tokio::time::sleep_until(deadline) => break,
            r = &mut worker, if worker_result.is_none() => {
                worker_result = Some(r);
                break;
            }
        }
        writer.poll_acks()?;
        progress.set_position(tally.distinct().min(total) as u64);
        progress.set_message(format!("batched (typed {})", writer.acked()));
    }
    progress.finish_and_clear();

    token.cancel();
    let finished = match worker_result {
        Some(r) => r,
        None => worker.await,
    };
    match finished {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(DemoError::Worker(e)),
        Err(e) => return Err(DemoError::Task(e.to_string())),
    }
    drop(reader);
    drop(writer);
    drop(broker);

    let (lateness, e2e) = (tally.lateness_ms(), tally.end_to_end_ms());
    let in_place = plan
        .changes_in_window
        .iter()
        .filter(|c| tally.changed_in_place.get(&c.target) == Some(&c.edit))
        .count();
    let alone = plan
        .changes_after
        .iter()
        .filter(|c| tally.amended_alone.contains_key(&c.target))
        .count();
    // Alone, naming the very batch that carried the target.
    let named = plan
        .changes_after
        .iter()
        .filter(|c| {
            let seen = tally.amended_alone.get(&c.target);
            tally.batch_id_of(&c.target).is_some_and(|carried| {
                seen.is_some_and(|seen| seen.iter().all(|a| a.amends.as_deref() == Some(carried)))
            })
        })
        .count();
    let changes_lost = plan
        .changes_in_window
        .iter()
        .chain(&plan.changes_after)
        .filter(|c| {
            !tally.changed_in_place.contains_key(&c.target)
                && !tally.amended_alone.contains_key(&c.target)
        })
        .count();
    let report = DemoReport {
        fragments_in: total,
        batches_out: tally.batches,
        bursts_planned: plan.bursts,
        lost: total.saturating_sub(tally.distinct()),
        duplicated: tally.duplicated(),
        out_of_order: tally.out_of_order,
        changes_lost,
        lateness_ms: (lateness.0 as i64, lateness.1 as i64),
        end_to_end_ms: (e2e.0 as i64, e2e.1 as i64),
    };

    println!();
    println!("sample batches:");
    for b in tally.samples.iter().take(args.samples) {
        let text = b.text.as_deref().unwrap_or("").replace('\n', " ⏎ ");
        println!(
            "  {}  {} fragments  {:<11}  \"{}\"",
            b.key,
            b.fragments.len(),
            b.reason,
            text
        );
    }
    println!();
    println!("summary:");
    println!("  fragments in            {}", report.fragments_in);
    println!(
        "  batches out             {} ({})",
        report.batches_out,
        tally
            .reasons
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  bursts typed            {}", report.bursts_planned);
    let held = plan
        .held
        .iter()
        .filter(|(first, last)| tally.same_batch(first, last))
        .count();
    println!(
        "  kept whole by typing    {held} of {} slow typists' bursts that a plain quiet period would have split",
        plan.held.len()
    );
    println!(
        "  without typing signals  {} batches instead of {} (the same traffic, cut by quiet alone)",
        report.batches_out + plan.held_splits,
        report.batches_out
    );
    if !plan.channel_held.is_empty() {
        let kept = plan
            .channel_held
            .iter()
            .filter(|(first, last)| tally.same_batch(first, last))
            .count();
        println!(
            "  kept whole by channel   {kept} of {} {PLAN_CHANNEL} bursts with pauses over the global \
             quiet period, under LULL_CHANNEL_{}_QUIET_MS",
            plan.channel_held.len(),
            channel_name
        );
    }
    if changes > 0 {
        println!(
            "  edits and deletes       {in_place} of {} sent while the window was open changed \
             in place; {alone} of {} sent after the batch went out alone, {named} naming that \
             batch in amends (the rest: the key's last batch, a command after the target)",
            plan.changes_in_window.len(),
            plan.changes_after.len()
        );
    }
    println!(
        "  fragments per batch     {:.2}",
        report.fragments_in as f64 / report.batches_out.max(1) as f64
    );
    if let (Some(start), Some(end)) = (read_started, all_batched_at) {
        let secs = (end - start).as_secs_f64();
        println!(
            "  catch-up                {:.2} s for the backlog, {:.0} fragments/s (debug builds are far slower)",
            secs,
            report.fragments_in as f64 / secs.max(1e-9)
        );
    } else {
        println!(
            "  flush lateness          p50 {} ms, p99 {} ms (after close time + grace; users without typing signals)",
            report.lateness_ms.0, report.lateness_ms.1
        );
        println!(
            "  last fragment -> batch  p50 {} ms, p99 {} ms",
            report.end_to_end_ms.0, report.end_to_end_ms.1
        );
        let typists = tally.held_end_to_end_ms();
        println!(
            "  ... for typists         p50 {} ms, p99 {} ms (users who send typing signals; a \
             fragment ends the hold of the typing before it)",
            typists.0, typists.1
        );
    }
    if config.redis_url.is_some() {
        let calls = lull::io::store::round_trips();
        println!(
            "  redis round trips       {} (script calls and pipelines), {:.3} per fragment",
            calls,
            calls as f64 / report.fragments_in.max(1) as f64
        );
    }
    println!(
        "  check                   lost {}, duplicated {}, out of order {}, changes lost {}: {}",
        report.lost,
        report.duplicated,
        report.out_of_order,
        report.changes_lost,
        if report.passed() { "PASS" } else { "FAIL" }
    );
    Ok(report)
}

/// `lull demo`: exit 0 when its check passed.
pub async fn main(config: Config, args: DemoArgs) -> std::process::ExitCode {
    super::init_tracing(config.log_format, "warn");
    match run(config, args).await {
        Ok(report) if report.passed() => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
