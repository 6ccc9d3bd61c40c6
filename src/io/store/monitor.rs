//! MONITOR tracing of lull's Redis keys, for debugging only.
//!
//! A dedicated connection runs `MONITOR` and every command that touches a key under the prefix —
//! from this process or any other — becomes a [`MonitorEvent`] with the client's address and, when
//! it is a lull process, its name (`lull:{instance}:{pid}`, set with `CLIENT SETNAME`). Commands a
//! script runs show up as coming from `lua`; they are attributed to the client whose `EVALSHA`
//! ran just before, and the script is named. MONITOR makes Redis copy every command to the
//! monitoring client and costs it real throughput: never leave it on in production.

use std::collections::HashMap;

use futures_util::StreamExt;
use tracing::{debug, warn};

use super::Script;

/// One command seen by MONITOR that touches lull's keys.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorEvent {
    /// Server time, Unix seconds with microseconds.
    pub time: f64,
    /// Address of the client that sent it (for script-internal commands: that ran the script).
    pub client: String,
    /// The client's name, when it set one (lull processes do).
    pub client_name: Option<String>,
    /// The script that issued it, if it ran inside one of lull's scripts.
    pub script: Option<&'static str>,
    /// The command and its arguments.
    pub args: Vec<String>,
}

impl MonitorEvent {
    /// The keys under `prefix` this command names.
    pub fn keys<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.args
            .iter()
            .map(String::as_str)
            .filter(move |a| a.starts_with(prefix))
    }
}

/// What a command did to one key, in words, for the timeline of `lull monitor`.
fn describe(command: &str, args: &[String], key: &str) -> String {
    let after = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
            .unwrap_or("?")
    };
    // Past the partition's hash tag, `{<topic>/<partition>}:`, when the key has one.
    let named = key
        .strip_prefix('{')
        .and_then(|k| k.split_once("}:"))
        .map_or(key, |(_, rest)| rest);
    let kind = named.split(':').next().unwrap_or("");
    // HMSET is the older spelling of HSET (some clients still send it).
    let command = if command == "HMSET" { "HSET" } else { command };
    match (command, kind) {
        ("HSET", "pending") => format!(
            "window updated: {} fragments, flush at {}",
            after("count"),
            after("flush_at")
        ),
        ("HSET", "owner") => format!(
            "partition claimed by {} (generation {})",
            after("instance"),
            after("generation")
        ),
        ("DEL", "pending") => "window closed: its batch was delivered".to_string(),
        ("HSET", "flushed") => format!(
            "flushed up to {}:{} (topic id {})",
            after("partition"),
            after("offset"),
            after("topic_id")
        ),
        ("DEL", "flushed") => "a value that is no record replaced".to_string(),
        // Admission records a sighting with SET NX, which keeps the first one: MONITOR shows the
        // command whether or not it took, so it cannot be called a first sighting. A sighting
        // that did not take is read back (GET) to compare: that line says "seen before".
        ("SET", "event") if args.iter().any(|a| a.eq_ignore_ascii_case("NX")) => format!(
            "event sighted at {}: recorded if it is the first sighting",
            args.get(2).map_or("?", String::as_str)
        ),
        ("SET", "event") => format!(
            "event first seen at {} (a sighting in an older topic replaced)",
            args.get(2).map_or("?", String::as_str)
        ),
        ("GET", "event") => {
            "event seen before: its first sighting is compared (another offset: dropped as a \
             duplicate)"
                .to_string()
        }
        ("PEXPIRE", _) => format!("TTL set to {} ms", args.get(2).map_or("?", String::as_str)),
        ("GET" | "HGET" | "HMGET" | "HGETALL" | "PTTL" | "EXISTS", _) => "read".to_string(),
        _ => args.join(" "),
    }
}

/// The timeline lines of one event: one per lull key it touches, each saying what happened to
/// the key and who did it.
pub fn timeline(event: &MonitorEvent, prefix: &str) -> Vec<String> {
    let command = event
        .args
        .first()
        .map(|c| c.to_ascii_uppercase())
        .unwrap_or_default();
    let needle = format!("{prefix}:");
    let secs = event.time as i64;
    let micros = ((event.time - secs as f64) * 1e6).round() as u64;
    let t = humantime::format_rfc3339_micros(
        std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(secs.max(0) as u64)
            + std::time::Duration::from_micros(micros),
    );
    let who = match &event.client_name {
        Some(n) => format!("{n} ({})", event.client),
        None => event.client.clone(),
    };
    let via = event
        .script
        .map(|s| format!(" via {s}.lua"))
        .unwrap_or_default();
    event
        .args
        .iter()
        .filter_map(|a| a.strip_prefix(&needle))
        .map(|key| {
            format!(
                "{t}  {key:<32}  {:<48}  by {who}{via}",
                describe(&command, &event.args, key)
            )
        })
        .collect()
}

/// Parses one MONITOR line: `1700000000.123456 [0 127.0.0.1:6000] "SET" "k" "v"`.
pub fn parse_line(line: &str) -> Option<(f64, String, Vec<String>)> {
    let (time, rest) = line.split_once(' ')?;
    let time: f64 = time.parse().ok()?;
    let rest = rest.strip_prefix('[')?;
    let (inside, rest) = rest.split_once(']')?;
    let client = inside
        .split_once(' ')
        .map_or(inside, |(_, c)| c)
        .to_string();
    let mut args = Vec::new();
    let mut chars = rest.trim_start().chars().peekable();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut arg = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('x') => {
                        let hex: String = chars.by_ref().take(2).collect();
                        match u8::from_str_radix(&hex, 16) {
                            Ok(b) if b.is_ascii() => arg.push(b as char),
                            _ => {
                                arg.push_str("\\x");
                                arg.push_str(&hex);
                            }
                        }
                    }
                    Some('n') => arg.push('\n'),
                    Some('r') => arg.push('\r'),
                    Some('t') => arg.push('\t'),
                    Some(other) => arg.push(other),
                    None => break,
                },
                other => arg.push(other),
            }
        }
        args.push(arg);
    }
    Some((time, client, args))
}

/// Follows every command on `prefix:` keys, calling `on_event` for each: on the server `urls`
/// (`REDIS_URL`: one URL, or seeds of a cluster, comma-separated) names, or, when it is a Redis
/// Cluster node, on every primary of the cluster — one MONITOR each, since a node shows only the
/// commands it serves. When a primary's MONITOR ends (a failover promoted its replica), the
/// cluster's nodes are read again. Returns when a single server's connection ends.
pub async fn follow(
    urls: &str,
    prefix: &str,
    mut on_event: impl FnMut(MonitorEvent),
) -> redis::RedisResult<()> {
    loop {
        let Some(nodes) = primaries(urls).await? else {
            let first = super::client::seed_urls(urls)
                .first()
                .copied()
                .unwrap_or(urls);
            return follow_node(first, prefix, on_event).await;
        };
        debug!(
            primaries = nodes.len(),
            "following MONITOR on every primary of the cluster"
        );
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut followers = tokio::task::JoinSet::new();
        for node in nodes {
            let (tx, prefix) = (tx.clone(), prefix.to_string());
            followers.spawn(async move {
                let ended = follow_node(&node, &prefix, |e| {
                    let _ = tx.send(e);
                })
                .await;
                (node, ended)
            });
        }
        drop(tx);
        loop {
            tokio::select! {
                Some(event) = rx.recv() => on_event(event),
                Some(ended) = followers.join_next() => {
                    if let Ok((node, result)) = ended {
                        let error = result.err().map(|e| e.to_string()).unwrap_or_default();
                        warn!(node = %crate::config::mask_url_password(&node), error, "MONITOR of a cluster primary ended; reading the cluster's nodes again");
                    }
                    break;
                }
            }
        }
        followers.abort_all();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// The URLs of every primary of the cluster the first answering seed of `urls` belongs to
/// (`CLUSTER NODES`), each with the seed's scheme and credentials; `None` when that seed is a
/// single server.
async fn primaries(urls: &str) -> redis::RedisResult<Option<Vec<String>>> {
    let mut failed = None;
    for seed in super::client::seed_urls(urls) {
        let asked = async {
            let mut conn = redis::Client::open(seed)?
                .get_multiplexed_async_connection_with_config(&super::client::connection_config())
                .await?;
            if !super::client::is_cluster_node(&mut conn).await? {
                return Ok(None);
            }
            let nodes: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut conn)
                .await?;
            Ok(Some(
                primary_addresses(&nodes)
                    .into_iter()
                    .map(|addr| with_address(seed, addr))
                    .collect(),
            ))
        };
        match asked.await {
            Ok(found) => return Ok(found),
            Err(e) => failed = Some(e),
        }
    }
    Err(failed.unwrap_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "REDIS_URL names no server",
        ))
    }))
}

/// The `host:port` of every primary that is not failed, from `CLUSTER NODES`.
fn primary_addresses(nodes: &str) -> Vec<&str> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let address = fields.nth(1)?.split(['@', ',']).next()?;
            let flags = fields.next()?;
            let primary = flags.split(',').any(|f| f == "master")
                && !flags.split(',').any(|f| f == "fail" || f == "noaddr");
            (primary && !address.starts_with(':')).then_some(address)
        })
        .collect()
}

/// `seed` with its `host:port` replaced by `address` (scheme, credentials and the rest kept).
fn with_address(seed: &str, address: &str) -> String {
    let (scheme, rest) = seed.split_once("://").unwrap_or(("redis", seed));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let credentials = authority.rfind('@').map_or("", |at| &authority[..=at]);
    format!("{scheme}://{credentials}{address}{tail}")
}

/// Follows MONITOR on `url`, calling `on_event` for every command touching `prefix:` keys, until
/// the connection ends. Client names are looked up with `CLIENT LIST` when a new address appears.
async fn follow_node(
    url: &str,
    prefix: &str,
    mut on_event: impl FnMut(MonitorEvent),
) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let mut lookup = client.get_multiplexed_async_connection().await?;
    // `get_async_monitor` has already sent MONITOR and read its OK.
    let monitor = client.get_async_monitor().await?;
    let mut stream = monitor.into_on_message::<String>();
    let needle = format!("{prefix}:");
    let mut names: HashMap<String, String> = HashMap::new();
    let mut last_script: Option<(String, Option<&'static str>)> = None;
    while let Some(line) = stream.next().await {
        let Some((time, addr, args)) = parse_line(&line) else {
            continue;
        };
        let command = args
            .first()
            .map(|c| c.to_ascii_uppercase())
            .unwrap_or_default();
        if addr != "lua" && (command == "EVALSHA" || command == "EVAL") {
            let script = args
                .get(1)
                .and_then(|sha| Script::by_sha(sha))
                .map(Script::name);
            last_script = Some((addr.clone(), script));
        }
        if !args.iter().any(|a| a.starts_with(&needle)) {
            continue;
        }
        let (client_addr, script) = if addr == "lua" {
            last_script
                .clone()
                .unwrap_or_else(|| ("lua".to_string(), None))
        } else {
            (addr, None)
        };
        if client_addr != "lua" && !names.contains_key(&client_addr) {
            if let Ok(list) = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async::<String>(&mut lookup)
                .await
            {
                for entry in list.lines() {
                    let field = |k: &str| {
                        entry
                            .split(' ')
                            .find_map(|f| f.strip_prefix(k))
                            .map(str::to_string)
                    };
                    if let (Some(a), Some(n)) = (field("addr="), field("name=")) {
                        names.insert(a, n);
                    }
                }
            }
        }
        let client_name = names.get(&client_addr).filter(|n| !n.is_empty()).cloned();
        on_event(MonitorEvent {
            time,
            client: client_addr,
            client_name,
            script,
            args,
        });
    }
    Ok(())
}

/// `LULL_DEBUG_REDIS_MONITOR=true`: logs every command on lull's keys at debug level, alongside
/// this process's instance id and pid, until the run stops; a lost MONITOR connection (Redis
/// restarted) is followed again after a pause. Runs under `supervisor` (a panic stops lull).
pub fn spawn_trace(
    supervisor: &crate::ops::supervisor::Supervisor,
    url: String,
    prefix: String,
    instance: String,
) {
    let stop = supervisor.stopping();
    let trace = async move {
        let pid = std::process::id();
        warn!("LULL_DEBUG_REDIS_MONITOR is on: MONITOR costs Redis throughput; use it for debugging only");
        loop {
            let follow = follow(&url, &prefix, |e| {
                crate::ops::fault::panic_if_armed("monitor");
                debug!(
                    target: "lull::redis_monitor",
                    instance = %instance,
                    pid,
                    client = %e.client,
                    client_name = e.client_name.as_deref().unwrap_or(""),
                    script = e.script.unwrap_or(""),
                    command = %e.args.join(" "),
                    "redis command"
                );
            });
            tokio::select! {
                _ = stop.cancelled() => return Ok::<(), std::convert::Infallible>(()),
                result = follow => {
                    if let Err(e) = result {
                        warn!(error = %e, "redis MONITOR trace lost; following again in 5 s");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            }
        }
    };
    supervisor.spawn("redis monitor trace", trace);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_primaries_of_a_cluster_are_read_from_cluster_nodes() {
        let nodes = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1 4 connected
67ed 127.0.0.1:30002@40002,node-2 master - 0 1 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master,fail - 0 1 3 disconnected
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
";
        assert_eq!(
            primary_addresses(nodes),
            ["127.0.0.1:30002", "127.0.0.1:30001"]
        );
        assert_eq!(
            with_address(
                "rediss://lull:s3cret@10.0.0.1:7000/0#insecure",
                "10.0.0.2:7001"
            ),
            "rediss://lull:s3cret@10.0.0.2:7001/0#insecure"
        );
        assert_eq!(
            with_address("redis://10.0.0.1:7000", "10.0.0.2:7001"),
            "redis://10.0.0.2:7001"
        );
    }

    #[test]
    fn timeline_says_what_happened_to_each_key() {
        let e = MonitorEvent {
            time: 1_700_000_000.5,
            client: "127.0.0.1:5000".into(),
            client_name: Some("lull:host-1:42".into()),
            script: Some("flush"),
            args: vec![
                "HSET".into(),
                "lull:{t/3}:flushed:user-1".into(),
                "topic_id".into(),
                "Vgz4yQp5QnqVv1GtYm9s2g".into(),
                "partition".into(),
                "3".into(),
                "offset".into(),
                "15".into(),
            ],
        };
        let lines = timeline(&e, "lull");
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("flushed:user-1"));
        assert!(
            lines[0].contains("flushed up to 3:15 (topic id Vgz4yQp5QnqVv1GtYm9s2g)"),
            "{lines:?}"
        );
        assert!(lines[0].contains("by lull:host-1:42 (127.0.0.1:5000) via flush.lua"));
    }

    #[test]
    fn a_sighting_of_a_known_event_is_not_called_a_first_sighting() {
        let event = |args: &[&str]| MonitorEvent {
            time: 1_700_000_000.5,
            client: "lua".into(),
            client_name: None,
            script: Some("admit"),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        let nx = timeline(
            &event(&["SET", "lull:g:event:e1", "tid:0:7", "NX", "PX", "600000"]),
            "lull:g",
        );
        assert!(
            nx[0].contains("recorded if it is the first sighting"),
            "{nx:?}"
        );
        assert!(!nx[0].contains("first seen"), "{nx:?}");
        let read_back = timeline(&event(&["GET", "lull:g:event:e1"]), "lull:g");
        assert!(read_back[0].contains("event seen before"), "{read_back:?}");
    }

    #[test]
    fn parses_monitor_lines() {
        let (t, client, args) = parse_line(
            r#"1700000000.123456 [0 127.0.0.1:60866] "SET" "lull:flushed:u \"1\"" "0:15""#,
        )
        .unwrap();
        assert!((t - 1700000000.123456).abs() < 1e-6);
        assert_eq!(client, "127.0.0.1:60866");
        assert_eq!(args, vec!["SET", "lull:flushed:u \"1\"", "0:15"]);
        let (_, client, args) =
            parse_line(r#"1700000000.1 [0 lua] "PEXPIRE" "lull:x" "100""#).unwrap();
        assert_eq!(client, "lua");
        assert_eq!(args[0], "PEXPIRE");
        let (_, _, args) = parse_line(r#"1.0 [0 unix:/tmp/r.sock] "GET" "a\x41\n""#).unwrap();
        assert_eq!(args[1], "aA\n");
    }
}
