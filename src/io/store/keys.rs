//! The names of lull's Redis keys.
//!
//! Every key of one input partition carries the same hash tag, `{<topic>/<partition>}`: in a Redis
//! Cluster they live in one slot, so a script call (which names the owner key and the keys of
//! many users) runs on one node, and a partition's single owner talks to one shard. On a single
//! Redis the tag is only part of the name. One small set, [`Keys::partitions`], lists the
//! partitions that have been claimed, so a lookup by user (`lull pending`) finds the user's
//! summary without knowing the partition.

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

    /// The keys of one input partition.
    pub fn partition(&self, topic: &str, partition: i32) -> PartitionKeys {
        PartitionKeys {
            base: format!("{}:{{{topic}/{partition}}}", self.namespace),
            topic: topic.to_string(),
            partition,
        }
    }

    /// `{prefix}:{group}:partitions`: a set of `<topic>/<partition>`, one member per partition
    /// ever claimed (refreshed on every claim), for lookups by user.
    pub fn partitions(&self) -> String {
        format!("{}:partitions", self.namespace)
    }
}

/// The keys of one input partition, all in one hash slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionKeys {
    /// `{prefix}:{group}:{<topic>/<partition>}`.
    base: String,
    topic: String,
    partition: i32,
}

impl PartitionKeys {
    /// `<topic>/<partition>`, the member of [`Keys::partitions`].
    pub fn member(&self) -> String {
        format!("{}/{}", self.topic, self.partition)
    }

    /// Reads a member of [`Keys::partitions`] back as (topic, partition).
    pub fn parse_member(member: &str) -> Option<(&str, i32)> {
        let (topic, partition) = member.rsplit_once('/')?;
        Some((topic, partition.parse().ok()?))
    }

    /// `…:{<topic>/<partition>}:owner`
    pub fn owner(&self) -> String {
        format!("{}:owner", self.base)
    }

    /// `…:{<topic>/<partition>}:pending:{key}`
    pub fn pending(&self, key: &str) -> String {
        format!("{}:pending:{key}", self.base)
    }

    /// `…:{<topic>/<partition>}:flushed:{key}`
    pub fn flushed(&self, key: &str) -> String {
        format!("{}:flushed:{key}", self.base)
    }

    /// `…:{<topic>/<partition>}:event:{event_id}`
    pub fn event(&self, event_id: &str) -> String {
        format!("{}:event:{event_id}", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The part of a key Redis Cluster hashes: the first `{…}` with something inside.
    fn hash_tag(key: &str) -> &str {
        match key.find('{') {
            Some(open) => match key[open + 1..].find('}') {
                Some(len) if len > 0 => &key[open + 1..open + 1 + len],
                _ => key,
            },
            None => key,
        }
    }

    #[test]
    fn every_key_of_a_partition_hashes_alike_and_partitions_apart() {
        let keys = Keys::new("lull", "g");
        let p = keys.partition("chat.fragments", 3);
        let tags = [
            p.owner(),
            p.pending("u{1}"),
            p.flushed("u:2"),
            p.event("e}3"),
        ];
        for k in &tags {
            assert_eq!(hash_tag(k), "chat.fragments/3", "{k}");
        }
        assert_eq!(p.owner(), "lull:g:{chat.fragments/3}:owner");
        assert_ne!(
            hash_tag(&keys.partition("chat.fragments", 4).owner()),
            hash_tag(&p.owner())
        );
        assert_eq!(
            PartitionKeys::parse_member(&p.member()),
            Some(("chat.fragments", 3))
        );
    }
}
