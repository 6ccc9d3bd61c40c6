//! One connection to Redis, whichever kind the URL leads to: a single server (or a replica set's
//! primary) or a Redis Cluster, found out by asking the server (`INFO cluster`). Scripts and
//! pipelines run on either; in a cluster the redis crate's client follows MOVED and ASK and knows
//! the slots, so lull never routes by hand. Its keys make that possible: every call names keys of
//! one slot ([`super::keys`]).

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// A connection to a single Redis or to a Redis Cluster; cheap to clone (both multiplex).
#[derive(Clone)]
pub enum Conn {
    /// A single server.
    Single(MultiplexedConnection),
    /// A Redis Cluster (every primary and replica it announces).
    Cluster(ClusterConnection),
}

impl Conn {
    /// Whether this is a Redis Cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The comma-separated URLs of `REDIS_URL` (more seed nodes of a cluster), trimmed.
pub fn seed_urls(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// Whether the server behind `conn` runs in cluster mode (`INFO cluster`: `cluster_enabled:1`).
pub async fn is_cluster_node(conn: &mut MultiplexedConnection) -> RedisResult<bool> {
    let info: String = redis::cmd("INFO").arg("cluster").query_async(conn).await?;
    Ok(info.lines().any(|l| l.trim() == "cluster_enabled:1"))
}

/// A connection to the cluster that `seeds` belong to. Redirections are followed by the client;
/// a few retries cover a failover's moments, after which the call fails and lull degrades.
pub async fn cluster(seeds: &[&str], timeout: Duration) -> RedisResult<Conn> {
    let client = ClusterClient::builder(seeds.iter().copied())
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(3)
        .build()?;
    Ok(Conn::Cluster(client.get_async_connection().await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_split_on_commas_and_trimmed() {
        assert_eq!(
            seed_urls("redis://a:1, redis://b:2,,redis://c:3 "),
            ["redis://a:1", "redis://b:2", "redis://c:3"]
        );
        assert_eq!(seed_urls("redis://a:1"), ["redis://a:1"]);
    }
}
