//! The effective configuration as the start-up log shows it: every setting in the table's order,
//! secrets masked.

use super::*;

impl Config {
    /// The effective settings as `name = value` pairs, secrets masked, for the start-up log:
    /// every setting of [`settings::SETTINGS`], in its order, then each channel's overrides, then
    /// the `LULL_KAFKA_*` properties.
    pub fn summary(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = settings::SETTINGS
            .iter()
            .map(|s| (s.name.to_string(), self.shown(s.name)))
            .collect();
        out.extend(self.channels.iter().flat_map(|c| c.summary()));
        for (property, value) in &self.kafka {
            let shown = match value {
                KafkaProperty::Plain(v) => v.clone(),
                KafkaProperty::Secret(_) => "***".to_string(),
            };
            out.push((format!("kafka:{property}"), shown));
        }
        out
    }

    /// The effective value of setting `name`, as it would be written in the environment
    /// (secrets masked); `None` for a name this configuration does not have.
    pub(super) fn value_of(&self, name: &str) -> Option<String> {
        let ms = |d: Duration| d.as_millis().to_string();
        Some(match name {
            "KAFKA_BROKERS" => self.brokers.clone(),
            "LULL_INPUT_TOPIC" => self.input_topic.clone(),
            "LULL_OUTPUT_TOPIC" => self.output_topic.clone(),
            "LULL_DLQ_TOPIC" => self.dlq_topic.clone(),
            "LULL_GROUP_ID" => self.group_id.clone(),
            "LULL_BATCHING" => match self.batching {
                Batching::On => "on".into(),
                Batching::Off => "off".into(),
            },
            "LULL_QUIET_MS" => ms(self.quiet),
            "LULL_MAX_WAIT_MS" => ms(self.max_wait),
            "LULL_MAX_FRAGMENTS" => self.max_fragments.to_string(),
            "LULL_MAX_BATCH_BYTES" => self.max_batch_bytes.to_string(),
            "LULL_MAX_FRAGMENT_BYTES" => self.max_fragment_bytes.to_string(),
            "LULL_GRACE_MS" => ms(self.grace),
            "LULL_TIMESTAMP" => match self.timestamp {
                TimestampSource::Kafka => "kafka".into(),
                TimestampSource::Arrival => "arrival".into(),
            },
            "LULL_TYPING_MS" => ms(self.typing),
            "LULL_FOLLOWUP_MS" => ms(self.followup),
            "LULL_BYPASS_PATTERN" => self
                .bypass_pattern
                .as_ref()
                .map(|r| r.as_str().to_string())
                .unwrap_or_default(),
            "LULL_EVENTS_TOPIC" => self.events_topic.clone().unwrap_or_default(),
            "LULL_DELIVERY" => self.delivery.as_str().into(),
            "LULL_TRANSACTION_MS" => ms(self.transaction),
            "LULL_STATE_TOPIC" => self.state_topic(),
            "REDIS_URL" => self
                .redis_url
                .as_ref()
                .map(|u| mask_url_password(u.expose()))
                .unwrap_or_default(),
            "LULL_REDIS_PREFIX" => self.redis_prefix.clone(),
            "LULL_DEBUG_REDIS_MONITOR" => self.debug_redis_monitor.to_string(),
            "LULL_EVENT_TTL_MS" => ms(self.event_ttl),
            "LULL_FLUSHED_TTL_MS" => ms(self.flushed_ttl),
            "LULL_HTTP_ADDR" => self.http_addr.to_string(),
            "LULL_INSTANCE_ID" => self.instance_id.clone(),
            "LULL_LOG_FORMAT" => match self.log_format {
                LogFormat::Pretty => "pretty".into(),
                LogFormat::Json => "json".into(),
            },
            "LULL_DRAIN_TIMEOUT_MS" => ms(self.drain_timeout),
            "LULL_MAX_OPEN_BYTES" => self.max_open_bytes.to_string(),
            "LULL_KAFKA_CONFIG_FILE" => self.kafka_config_file.clone().unwrap_or_default(),
            _ => return None,
        })
    }

    fn shown(&self, name: &str) -> String {
        match self.value_of(name) {
            Some(v) if v.is_empty() => "(unset)".to_string(),
            Some(v) => v,
            None => "?".to_string(),
        }
    }
}
