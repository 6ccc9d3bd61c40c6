//! The HTTP endpoints: `/metrics` (Prometheus text), `/health/live` and `/health/ready` (JSON).
//!
//! * **Live** means the consumer poll loop is actually turning (it turns at least every commit
//!   interval even when idle), not merely that the process exists. A wedged loop fails liveness
//!   so a supervisor restarts the process.
//! * **Ready** means this instance is doing its job: it is in the consumer group (with
//!   partitions, or with none because the group has more members than partitions), Kafka is
//!   reachable, the producer is healthy, and it is not shutting down. When not ready the body
//!   says why. Redis being unreachable is reported (`redis_degraded`) but does not make lull
//!   unready: it keeps batching in memory.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::future::IntoFuture;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, Instrument};

use crate::ops::clock::now_ms;
use crate::ops::health::Health;
use crate::ops::metrics::metrics;
use crate::ops::supervisor::Supervisor;

/// The poll loop must have turned within this long for `/health/live` to pass.
pub const LIVENESS_WINDOW_MS: i64 = 30_000;

/// The `/health/ready` body.
#[derive(Debug, Serialize)]
pub struct Readiness {
    /// Whether the instance is ready.
    pub ready: bool,
    /// Why not, when not ready (`worker_failed`, `not_in_group`, `kafka_unreachable`,
    /// `producer_failing`, `partition_fenced`, `transactions_unavailable`, `shutting_down`).
    pub reasons: Vec<&'static str>,
    /// Problems that do not stop lull (`redis_degraded`).
    pub warnings: Vec<&'static str>,
    /// Input partitions owned now.
    pub assigned_partitions: usize,
    /// Redis state: `connected`, `degraded` or `disabled`.
    pub redis: &'static str,
    /// This process.
    pub instance: String,
}

/// The `/health/live` body.
#[derive(Debug, Serialize)]
pub struct Liveness {
    /// Whether the poll loop turned recently.
    pub live: bool,
    /// Milliseconds since the poll loop last turned.
    pub last_poll_ms_ago: i64,
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    instance: String,
}

/// Readiness as the endpoint reports it.
pub fn readiness(health: &Health, instance: &str) -> Readiness {
    let mut reasons = Vec::new();
    let mut warnings = Vec::new();
    if health.failed() {
        reasons.push("worker_failed");
    }
    if health.shutting_down() {
        reasons.push("shutting_down");
    }
    if !health.in_group() {
        reasons.push("not_in_group");
    }
    if !health.kafka_reachable() {
        reasons.push("kafka_unreachable");
    }
    if !health.producer_ok() {
        reasons.push("producer_failing");
    }
    if health.fenced_partitions() > 0 {
        reasons.push("partition_fenced");
    }
    if health.partitions_starting() > 0 {
        reasons.push("transactions_unavailable");
    }
    let redis = match health.redis() {
        None => "disabled",
        Some(true) => "connected",
        Some(false) => {
            warnings.push("redis_degraded");
            "degraded"
        }
    };
    Readiness {
        ready: reasons.is_empty(),
        reasons,
        warnings,
        assigned_partitions: health.assigned_partitions(),
        redis,
        instance: instance.to_string(),
    }
}

async fn live(State(s): State<AppState>) -> Response {
    let ago = now_ms() - s.health.last_poll_ms();
    let live = s.health.last_poll_ms() > 0 && ago <= LIVENESS_WINDOW_MS;
    let code = if live {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Liveness {
            live,
            last_poll_ms_ago: ago,
        }),
    )
        .into_response()
}

async fn ready(State(s): State<AppState>) -> Response {
    let r = readiness(&s.health, &s.instance);
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(r)).into_response()
}

async fn prometheus() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics().render(),
    )
        .into_response()
}

/// Binds `addr` (port 0 picks a free one) and serves, under `supervisor`, until `stop` (the
/// run's end: readiness stays served through a graceful drain, saying `shutting_down`); returns
/// the bound address.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    instance: String,
    supervisor: &Supervisor,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(prometheus))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(AppState { health, instance });
    info!(addr = %bound, "serving /metrics, /health/live, /health/ready");
    supervisor.spawn(
        "http server",
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .into_future()
            .in_current_span(),
    );
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_task_makes_the_instance_unready_and_says_so() {
        let health = Health::new();
        health.set_in_group(true);
        health.set_kafka_reachable(true);
        assert!(readiness(&health, "i").ready);
        health.set_failed();
        let r = readiness(&health, "i");
        assert!(!r.ready);
        assert_eq!(r.reasons, vec!["worker_failed"]);
    }
}
