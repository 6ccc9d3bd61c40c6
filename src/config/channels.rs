//! Per-channel overrides: `LULL_CHANNEL_<NAME>_<SETTING>` for `QUIET_MS`, `MAX_WAIT_MS`,
//! `TYPING_MS`, `MAX_FRAGMENTS` and `BYPASS_PATTERN`, where `<NAME>` is a fragment's `channel`
//! upper-cased with `-` as `_` (`LULL_CHANNEL_WHATSAPP_QUIET_MS=3500`). A window keeps the
//! settings of its first fragment's channel; anything not overridden is the global setting.

use std::collections::BTreeMap;
use std::time::Duration;

use super::reader::Reader;
use super::{Env, MAX_FRAGMENTS_RANGE, MAX_WAIT_RANGE, QUIET_RANGE, TYPING_RANGE};

/// The prefix of every per-channel variable.
pub const PREFIX: &str = "LULL_CHANNEL_";

/// The settings a channel may override, as the variables end.
pub const SETTINGS: &[&str] = &[
    "QUIET_MS",
    "MAX_WAIT_MS",
    "TYPING_MS",
    "MAX_FRAGMENTS",
    "BYPASS_PATTERN",
];

/// At most this many channels have overrides (a fragment names its channel in one byte).
pub const MAX_CHANNELS: usize = 254;

/// One channel's overrides.
#[derive(Debug, Clone, Default)]
pub struct Channel {
    /// `<NAME>`: the channel upper-cased, `-` as `_`.
    pub name: String,
    /// `LULL_CHANNEL_<NAME>_QUIET_MS`.
    pub quiet: Option<Duration>,
    /// `LULL_CHANNEL_<NAME>_MAX_WAIT_MS`.
    pub max_wait: Option<Duration>,
    /// `LULL_CHANNEL_<NAME>_TYPING_MS`.
    pub typing: Option<Duration>,
    /// `LULL_CHANNEL_<NAME>_MAX_FRAGMENTS`.
    pub max_fragments: Option<usize>,
    /// `LULL_CHANNEL_<NAME>_BYPASS_PATTERN`.
    pub bypass_pattern: Option<regex::Regex>,
}

impl Channel {
    /// The variables set for this channel and their values, for the start-up summary.
    pub fn summary(&self) -> Vec<(String, String)> {
        let var = |setting: &str| format!("{PREFIX}{}_{setting}", self.name);
        let ms = |d: Duration| d.as_millis().to_string();
        [
            ("QUIET_MS", self.quiet.map(ms)),
            ("MAX_WAIT_MS", self.max_wait.map(ms)),
            ("TYPING_MS", self.typing.map(ms)),
            ("MAX_FRAGMENTS", self.max_fragments.map(|n| n.to_string())),
            (
                "BYPASS_PATTERN",
                self.bypass_pattern.as_ref().map(|r| r.as_str().to_string()),
            ),
        ]
        .into_iter()
        .filter_map(|(setting, value)| value.map(|v| (var(setting), v)))
        .collect()
    }
}

/// Splits `LULL_CHANNEL_<NAME>_<SETTING>` into its name and setting, if it is one.
fn split(variable: &str) -> Option<(&str, &'static str)> {
    let rest = variable.strip_prefix(PREFIX)?;
    SETTINGS.iter().find_map(|setting| {
        let name = rest.strip_suffix(setting)?.strip_suffix('_')?;
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        valid.then_some((name, *setting))
    })
}

/// Reads every `LULL_CHANNEL_*` variable, reporting the malformed ones; the global settings
/// given bound the derived checks (a channel's max wait is at least its quiet period).
pub(super) fn read<E: Env>(
    r: &mut Reader<'_, E>,
    quiet: Duration,
    max_wait: Duration,
) -> Vec<Channel> {
    let mut channels: BTreeMap<String, Channel> = BTreeMap::new();
    for (variable, _) in r.env.with_prefix(PREFIX) {
        let Some((name, setting)) = split(&variable) else {
            let value = r.raw(&variable).unwrap_or_default();
            r.problem(
                &variable,
                &value,
                &format!(
                    "a per-channel setting: LULL_CHANNEL_<NAME>_<SETTING>, NAME in A-Z 0-9 _ \
                     (the channel upper-cased, - as _), SETTING one of {}",
                    SETTINGS.join(", ")
                ),
            );
            continue;
        };
        let channel = channels.entry(name.to_string()).or_insert_with(|| Channel {
            name: name.to_string(),
            ..Channel::default()
        });
        match setting {
            "QUIET_MS" => channel.quiet = r.millis_opt(&variable, QUIET_RANGE),
            "MAX_WAIT_MS" => channel.max_wait = r.millis_opt(&variable, MAX_WAIT_RANGE),
            "TYPING_MS" => channel.typing = r.millis_opt(&variable, TYPING_RANGE),
            "MAX_FRAGMENTS" => {
                channel.max_fragments = r
                    .number_opt(&variable, MAX_FRAGMENTS_RANGE, "a fragment count")
                    .map(|n| n as usize)
            }
            _ => channel.bypass_pattern = r.pattern(&variable),
        }
    }
    for c in channels.values() {
        let (q, w) = (c.quiet.unwrap_or(quiet), c.max_wait.unwrap_or(max_wait));
        if w < q {
            let variable = format!("{PREFIX}{}_MAX_WAIT_MS", c.name);
            r.problem(
                &variable,
                &w.as_millis().to_string(),
                &format!("at least the channel's quiet period ({} ms)", q.as_millis()),
            );
        }
    }
    if channels.len() > MAX_CHANNELS {
        r.problem(
            PREFIX,
            &format!("{} channels", channels.len()),
            &format!("at most {MAX_CHANNELS} channels with overrides"),
        );
    }
    channels.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_settings_are_told_apart() {
        assert_eq!(
            split("LULL_CHANNEL_WHATSAPP_QUIET_MS"),
            Some(("WHATSAPP", "QUIET_MS"))
        );
        assert_eq!(
            split("LULL_CHANNEL_WEB_CHAT_MAX_WAIT_MS"),
            Some(("WEB_CHAT", "MAX_WAIT_MS"))
        );
        assert_eq!(split("LULL_CHANNEL_SMS_QUIET"), None);
        assert_eq!(split("LULL_CHANNEL__QUIET_MS"), None);
        assert_eq!(split("LULL_CHANNEL_web_QUIET_MS"), None);
    }
}
