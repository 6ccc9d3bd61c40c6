//! A partition's exactly_once start: its transactional producer registered (fencing any earlier
//! owner) and its state records read, both retried while the brokers cannot say yet — with
//! readiness false meanwhile.

use super::*;

/// Keeps readiness false while a worker's transactions cannot start or its state cannot be
/// read, whatever way it ends.
struct Starting<'s> {
    status: &'s Status,
    on: bool,
    /// Failed attempts so far.
    attempt: u32,
}

impl<'s> Starting<'s> {
    fn new(status: &'s Status) -> Self {
        Self {
            status,
            on: false,
            attempt: 0,
        }
    }

    fn waiting(&mut self) {
        if !self.on {
            self.status.phase(Phase::Waiting);
            self.on = true;
        }
    }
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        if self.on {
            self.status.phase(Phase::Claiming);
        }
    }
}

impl Worker {
    /// After a start step failed with `error`: readiness false, one line (`cannot {what} yet`),
    /// then a backoff; `false` if the partition is taken away or the process stops meanwhile.
    async fn retry_after(
        &self,
        starting: &mut Starting<'_>,
        error: impl std::fmt::Display,
        what: &str,
    ) -> bool {
        starting.attempt += 1;
        starting.waiting();
        let delay = RETRY.delay(starting.attempt);
        warn!(
            partition = self.partition,
            error = %error,
            retry_in_ms = delay.as_millis() as u64,
            "cannot {what} yet"
        );
        tokio::select! {
            _ = self.revoked.cancelled() => false,
            _ = self.shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// Creates the partition's transactional producer and registers its id (fencing any earlier
    /// owner), retrying while the brokers cannot say yet; `None` if the partition is taken away
    /// or the process stops meanwhile.
    pub(in crate::flow::worker) async fn start_transactions(
        &self,
    ) -> Result<Option<Arc<TxnProducer>>, Stop> {
        let producer = TxnProducer::create(&self.config, self.partition)
            .map_err(|e| Stop::Fatal(SinkError::Fatal(e.to_string())))?;
        let producer = Arc::new(producer);
        let mut starting = Starting::new(&self.status);
        loop {
            let p = producer.clone();
            let init = tokio::task::spawn_blocking(move || p.init(INIT_TIMEOUT));
            let outcome = tokio::select! {
                _ = self.revoked.cancelled() => return Ok(None),
                _ = self.shutdown.cancelled() => return Ok(None),
                outcome = init => outcome,
            };
            let error = match outcome {
                Ok(Ok(())) => {
                    info!(
                        partition = self.partition,
                        transactional_id = producer.id(),
                        "transactions started"
                    );
                    return Ok(Some(producer));
                }
                Ok(Err(TxnError::Fenced(why))) => return Err(Stop::Fenced(why)),
                Ok(Err(e @ (TxnError::Retriable(_) | TxnError::Abortable(_)))) => e,
                Ok(Err(e)) => return Err(Stop::Fatal(SinkError::Fatal(e.to_string()))),
                Err(join) => return Err(Stop::Fatal(SinkError::Fatal(join.to_string()))),
            };
            if !self
                .retry_after(&mut starting, error, "start this partition's transactions")
                .await
            {
                return Ok(None);
            }
        }
    }

    /// Reads what the partition's state records and the group's committed offset say now (the
    /// producer has fenced any earlier owner, so both are final); retries while Kafka cannot
    /// answer; `None` if the partition is taken away or the process stops meanwhile. `identity`
    /// is the input topic's identity when an earlier start of this worker learned it (a replay
    /// does not ask again).
    pub(in crate::flow::worker) async fn restore(
        &self,
        producer: &Arc<TxnProducer>,
        identity: Option<String>,
    ) -> Result<Option<EosState>, Stop> {
        let horizon = (self.config.followup + self.config.grace).as_millis() as i64;
        let mut starting = Starting::new(&self.status);
        loop {
            let (config, consumer, producer) =
                (self.config.clone(), self.consumer.clone(), producer.clone());
            let (topic, partition) = (self.topic.to_string(), self.partition);
            let known = identity.clone();
            let job = tokio::task::spawn_blocking(move || {
                // Records written under another identity are ignored: an identity that cannot
                // be learned now is an error to retry, never a guess.
                let topic_id = match known {
                    Some(id) => Some(id),
                    None => producer
                        .topic_identity(&topic, REQUEST_TIMEOUT)
                        .map_err(|e| format!("cannot learn the input topic's identity: {e}"))?,
                }
                .filter(|id| !id.is_empty());
                let (_, end) = consumer
                    .fetch_watermarks(&topic, partition, REQUEST_TIMEOUT)
                    .map_err(|e| format!("cannot read the input partition's end: {e}"))?;
                let committed = committed_offset(&consumer, &topic, partition)?;
                let mut keys = FlushedKeys::new(partition, horizon);
                let restored = crate::io::state_topic::read(
                    &config,
                    partition,
                    topic_id.as_deref(),
                    Some(end),
                    &mut keys,
                    std::time::Instant::now() + RESTORE_TIMEOUT,
                )?;
                Ok::<_, String>((keys, topic_id, committed, restored))
            });
            let outcome = tokio::select! {
                _ = self.revoked.cancelled() => return Ok(None),
                _ = self.shutdown.cancelled() => return Ok(None),
                outcome = job => outcome,
            };
            let error = match outcome {
                Ok(Ok((keys, topic_id, committed, restored))) => {
                    let m = metrics();
                    m.state_restore_seconds.observe(restored.took.as_secs_f64());
                    m.state_records_read.inc_by(restored.read);
                    info!(
                        partition = self.partition,
                        from = restored.from,
                        end = restored.end,
                        records_read = restored.read,
                        keys = keys.len(),
                        ignored = restored.ignored,
                        committed = committed.unwrap_or(-1),
                        took_ms = restored.took.as_millis() as u64,
                        "state restored"
                    );
                    return Ok(Some(EosState {
                        keys,
                        topic_id: topic_id.unwrap_or_default(),
                        committed,
                        settled_below: committed,
                        first_read: None,
                        last_commit: Instant::now(),
                        committing_since: None,
                        state_end: restored.end,
                        restore_from: Some(restored.from),
                    }));
                }
                Ok(Err(e)) => e,
                Err(join) => return Err(Stop::Fatal(SinkError::Fatal(join.to_string()))),
            };
            if !self
                .retry_after(&mut starting, error, "read this partition's state")
                .await
            {
                return Ok(None);
            }
        }
    }
}
