//! What `lull top` reads from one instance: its `/health/ready` answer and the per-partition
//! figures of its `/metrics` page, over plain HTTP/1 (hyper's client, the stack that serves them).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

/// How long one instance gets to answer one request.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// One partition's figures at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartitionFigures {
    /// `lull_partition_fragments_received_total`.
    pub fragments: f64,
    /// `lull_partition_batches_flushed_total`.
    pub batches: f64,
    /// `lull_partition_commits_total`.
    pub commits: f64,
    /// `lull_partition_open_windows`.
    pub open_windows: f64,
    /// `lull_partition_oldest_open_window_age_seconds`.
    pub oldest_age: f64,
    /// `lull_consumer_lag`, once known.
    pub lag: Option<f64>,
    /// The phase `lull_partition_phase` marks with 1.
    pub phase: Option<String>,
}

/// What one instance said at one moment.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// When the answer came.
    pub at: Instant,
    /// `/health/ready`: ready or not.
    pub ready: bool,
    /// Why not.
    pub reasons: Vec<String>,
    /// Problems that do not stop it (`redis_degraded`).
    pub warnings: Vec<String>,
    /// Its instance id.
    pub instance: String,
    /// Its Redis state.
    pub redis: String,
    /// Its partitions.
    pub partitions: BTreeMap<i32, PartitionFigures>,
}

/// `host:port` of an instance given as `http://host:port[/…]` or `host:port`.
pub fn authority(url: &str) -> Result<String, String> {
    if url.starts_with("https://") {
        return Err(format!(
            "{url}: lull serves /metrics over plain HTTP; give http://host:port"
        ));
    }
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || !authority.contains(':') {
        return Err(format!("{url}: expected host:port or http://host:port"));
    }
    Ok(authority.to_string())
}

/// GETs `path` from `authority`: status and body.
async fn get(authority: &str, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        let connection = tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        connection.abort();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    match tokio::time::timeout(ANSWER_WITHIN, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {}s", ANSWER_WITHIN.as_secs())),
    }
}

/// Reads one instance: `/health/ready`, then `/metrics`.
pub async fn scrape(authority: &str) -> Result<Scrape, String> {
    let (_, ready) = get(authority, "/health/ready").await?;
    let ready: serde_json::Value = serde_json::from_str(&ready)
        .map_err(|_| "/health/ready did not answer JSON: is this a lull?".to_string())?;
    let (status, metrics) = get(authority, "/metrics").await?;
    if status != 200 {
        return Err(format!("/metrics answered {status}"));
    }
    let strings = |field: &str| -> Vec<String> {
        ready[field]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(Scrape {
        at: Instant::now(),
        ready: ready["ready"].as_bool().unwrap_or(false),
        reasons: strings("reasons"),
        warnings: strings("warnings"),
        instance: ready["instance"].as_str().unwrap_or(authority).to_string(),
        redis: ready["redis"].as_str().unwrap_or("?").to_string(),
        partitions: partitions(&metrics),
    })
}

/// One sample of the text exposition: its family, its labels (name, value) and its value.
type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

/// One sample line of the text exposition.
fn sample(line: &str) -> Option<Sample<'_>> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}')?;
            // lull's label values are partitions, phases and reasons: no commas or quotes.
            let labels = inner
                .split(',')
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            (name, labels)
        }
        None => (series, Vec::new()),
    };
    Some((name, labels, value))
}

/// The per-partition figures of a `/metrics` page.
pub fn partitions(page: &str) -> BTreeMap<i32, PartitionFigures> {
    let mut by_partition: BTreeMap<i32, PartitionFigures> = BTreeMap::new();
    for (name, labels, value) in page.lines().filter_map(sample) {
        let label = |want: &str| labels.iter().find(|(k, _)| *k == want).map(|(_, v)| *v);
        let Some(partition) = label("partition").and_then(|p| p.parse().ok()) else {
            continue;
        };
        let known = matches!(
            name,
            "lull_partition_fragments_received_total"
                | "lull_partition_batches_flushed_total"
                | "lull_partition_commits_total"
                | "lull_partition_open_windows"
                | "lull_partition_oldest_open_window_age_seconds"
                | "lull_partition_phase"
                | "lull_consumer_lag"
        );
        if !known {
            continue;
        }
        let f = by_partition.entry(partition).or_default();
        match name {
            "lull_partition_fragments_received_total" => f.fragments = value,
            "lull_partition_batches_flushed_total" => f.batches = value,
            "lull_partition_commits_total" => f.commits = value,
            "lull_partition_open_windows" => f.open_windows = value,
            "lull_partition_oldest_open_window_age_seconds" => f.oldest_age = value,
            "lull_consumer_lag" => f.lag = Some(value),
            _ if value >= 1.0 => f.phase = label("phase").map(str::to_string),
            _ => {}
        }
    }
    by_partition
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_partition_families_of_a_metrics_page() {
        let page = "\
# HELP lull_partition_open_windows Open windows of the partition.
# TYPE lull_partition_open_windows gauge
lull_partition_open_windows{partition=\"3\"} 7
lull_partition_oldest_open_window_age_seconds{partition=\"3\"} 1.5
lull_partition_fragments_received_total{partition=\"3\"} 120
lull_partition_batches_flushed_total{partition=\"3\"} 30
lull_partition_commits_total{partition=\"3\"} 4
lull_partition_phase{partition=\"3\",phase=\"claiming\"} 0
lull_partition_phase{partition=\"3\",phase=\"running\"} 1
lull_consumer_lag{partition=\"3\"} 12
lull_consumer_lag{partition=\"5\"} 0
lull_open_windows 7
lull_fragments_invalid_total{reason=\"not_json\"} 2
";
        let p = partitions(page);
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[&3],
            PartitionFigures {
                fragments: 120.0,
                batches: 30.0,
                commits: 4.0,
                open_windows: 7.0,
                oldest_age: 1.5,
                lag: Some(12.0),
                phase: Some("running".to_string()),
            }
        );
        assert_eq!(p[&5].lag, Some(0.0));
        assert_eq!(p[&5].phase, None);
    }

    #[test]
    fn instances_are_named_by_host_and_port() {
        assert_eq!(
            authority("http://127.0.0.1:9898/metrics").unwrap(),
            "127.0.0.1:9898"
        );
        assert_eq!(authority("lull-1:9898").unwrap(), "lull-1:9898");
        assert!(authority("https://lull-1:9898").is_err());
        assert!(authority("lull-1").is_err());
    }
}
