//! One connection to Redis, whichever kind the URL leads to: a single server (or a replica set's
//! primary) or a Redis Cluster, found out by asking the server (`INFO cluster`). Scripts and
//! pipelines run on either; in a cluster the redis crate's client follows MOVED and ASK and knows
//! the slots, so lull never routes by hand. Its keys make that possible: every call names keys of
//! one slot ([`super::keys`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::AsyncConnectionConfig;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::{redis_error, Store, StoreError, CALL_TIMEOUT};

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

/// Timeouts of every single-server connection.
pub(super) fn connection_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CALL_TIMEOUT))
        .set_response_timeout(Some(CALL_TIMEOUT))
}

impl Store {
    /// A fresh connection: to the whole cluster once a seed said it runs in cluster mode, else
    /// to the first seed that answers, asked whether it is a cluster node (so a cluster whose
    /// first seed is down is still found through the others).
    pub(super) async fn open(&self) -> Result<Conn, StoreError> {
        if self.clustered.load(Ordering::Relaxed) {
            return self.cluster_connection().await;
        }
        let mut failed = StoreError::Unavailable("REDIS_URL names no server".into());
        for index in 0..self.seeds.len() {
            match self.probe_seed(index).await {
                Ok((_, true)) => {
                    self.clustered.store(true, Ordering::Relaxed);
                    return self.cluster_connection().await;
                }
                Ok((single, false)) => return Ok(Conn::Single(single)),
                Err(e) => failed = e,
            }
        }
        Err(failed)
    }

    /// A connection to seed `index` of `REDIS_URL` (the pool's for the first, a plain one for
    /// the others), and whether that server runs in cluster mode.
    async fn probe_seed(&self, index: usize) -> Result<(MultiplexedConnection, bool), StoreError> {
        let mut single = if index == 0 {
            let pooled = self
                .pool
                .get()
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            deadpool_redis::Connection::take(pooled)
        } else {
            redis::Client::open(self.seeds[index].as_str())
                .map_err(|e| redis_error(&e))?
                .get_multiplexed_async_connection_with_config(&connection_config())
                .await
                .map_err(|e| redis_error(&e))?
        };
        let clustered = is_cluster_node(&mut single)
            .await
            .map_err(|e| redis_error(&e))?;
        Ok((single, clustered))
    }

    /// A connection to the cluster, through any of its seeds that answer.
    async fn cluster_connection(&self) -> Result<Conn, StoreError> {
        let seeds: Vec<&str> = self.seeds.iter().map(String::as_str).collect();
        cluster(&seeds, CALL_TIMEOUT)
            .await
            .map_err(|e| redis_error(&e))
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
/// A server that refuses INFO (an ACL user without it, which lull needed nothing of before
/// clusters) is taken for a single server, as it was then; only a broken connection fails.
pub async fn is_cluster_node(conn: &mut MultiplexedConnection) -> RedisResult<bool> {
    match redis::cmd("INFO")
        .arg("cluster")
        .query_async::<String>(conn)
        .await
    {
        Ok(info) => Ok(info.lines().any(|l| l.trim() == "cluster_enabled:1")),
        Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => Err(e),
        Err(_) => Ok(false),
    }
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
