//! The Lua scripts in `lua/`, compiled in and loaded once per connection, then called by SHA
//! (`redis::Script` re-loads a script by itself if the server answers NOSCRIPT, e.g. after a
//! restart, SCRIPT FLUSH, or a cluster replica promoted after a failover). Where scripts go in a
//! pipeline, where that fallback does not apply, the caller loads them and retries once.

use std::sync::LazyLock;

static CLAIM: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../../lua/claim.lua")));
static PENDING: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../../lua/pending.lua")));
static FLUSH: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../../lua/flush.lua")));

/// One of lull's scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// `claim.lua`: take a partition's ownership.
    Claim,
    /// `pending.lua`: publish open-window summaries, delete those of windows gone out.
    Pending,
    /// `flush.lua`: record acknowledged batches (at_least_once).
    Flush,
}

impl Script {
    /// Every script.
    pub const ALL: [Script; 3] = [Script::Claim, Script::Pending, Script::Flush];

    /// Short name, for metrics and traces.
    pub fn name(self) -> &'static str {
        match self {
            Script::Claim => "claim",
            Script::Pending => "pending",
            Script::Flush => "flush",
        }
    }

    /// The compiled-in script.
    pub fn get(self) -> &'static redis::Script {
        match self {
            Script::Claim => &CLAIM,
            Script::Pending => &PENDING,
            Script::Flush => &FLUSH,
        }
    }

    /// The script whose SHA1 is `sha`, if it is one of lull's.
    pub fn by_sha(sha: &str) -> Option<Script> {
        Self::ALL
            .into_iter()
            .find(|s| s.get().get_hash().eq_ignore_ascii_case(sha))
    }
}

/// Loads every script into the server behind `conn` (every node of a cluster).
pub async fn load_all(conn: &mut super::Conn) -> redis::RedisResult<()> {
    for s in Script::ALL {
        s.get().prepare_invoke().load_async(conn).await?;
    }
    Ok(())
}
