//! The names of lull's Redis keys.

/// Key names, all under the configured prefix and the consumer group: two groups reading the
/// same topic (staging beside production, a blue/green deploy, a debugging run) keep apart, so
/// one group's records never fence, skip or de-duplicate the other's fragments.
#[derive(Debug, Clone)]
pub struct Keys {
    /// `{prefix}:{group}`.
    namespace: String,
}

impl Keys {
    /// Keys of consumer group `group` under `prefix`.
    pub fn new(prefix: &str, group: &str) -> Self {
        Self {
            namespace: format!("{prefix}:{group}"),
        }
    }

    /// `{prefix}:{group}`, what every key starts with.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `{prefix}:{group}:owner:{topic}:{partition}`
    pub fn owner(&self, topic: &str, partition: i32) -> String {
        format!("{}:owner:{topic}:{partition}", self.namespace)
    }

    /// `{prefix}:{group}:pending:{key}`
    pub fn pending(&self, key: &str) -> String {
        format!("{}:pending:{key}", self.namespace)
    }

    /// `{prefix}:{group}:flushed:{key}`
    pub fn flushed(&self, key: &str) -> String {
        format!("{}:flushed:{key}", self.namespace)
    }

    /// `{prefix}:{group}:event:{event_id}`
    pub fn event(&self, event_id: &str) -> String {
        format!("{}:event:{event_id}", self.namespace)
    }
}
