//! Where settings come from: the process environment (with a `.env` file under it), flags on the
//! command line over it, or a map in tests; and which `LULL_*` variables lull does not know.

use std::collections::BTreeMap;

use super::{settings, ConfigError, ConfigProblem, KAFKA_PREFIX};

/// A source of variables: the process environment in production, a map in tests.
pub trait Env {
    /// The value of `name`, if set.
    fn get(&self, name: &str) -> Option<String>;
    /// All `(name, value)` pairs whose name starts with `prefix`.
    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)>;
}

/// Adds an env file to the process environment (real variables win): `path` when given (`--env-file`,
/// which must exist), else `.env` in the working directory if there is one.
pub(super) fn load_dotenv(path: Option<&std::path::Path>) -> Result<(), ConfigError> {
    let (name, result) = match path {
        Some(path) => (path.display().to_string(), dotenvy::from_path(path)),
        None => (".env".to_string(), dotenvy::dotenv().map(|_| ())),
    };
    match result {
        Err(error) if path.is_some() && error.not_found() => {
            Err(ConfigError(vec![ConfigProblem {
                variable: "--env-file".to_string(),
                value: name,
                expected: "a file of KEY=value lines (no such file)".to_string(),
            }]))
        }
        Err(error) if !error.not_found() => Err(ConfigError(vec![ConfigProblem {
            variable: name,
            value: "(file)".to_string(),
            expected: format!("KEY=value lines ({error})"),
        }])),
        _ => Ok(()),
    }
}

/// The real process environment.
pub struct ProcessEnv;

/// Settings given on the command line (`lull run --quiet-ms 500`) over the process environment:
/// a flag wins over its variable.
pub struct WithFlags(pub BTreeMap<String, String>);

impl Env for WithFlags {
    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned().or_else(|| ProcessEnv.get(name))
    }

    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let mut all: BTreeMap<String, String> =
            ProcessEnv.with_prefix(prefix).into_iter().collect();
        for (k, v) in &self.0 {
            if k.starts_with(prefix) {
                all.insert(k.clone(), v.clone());
            }
        }
        all.into_iter().collect()
    }
}

/// `LULL_*` variables that belong to lull's tooling around the worker (PM2 file, test suite,
/// caches), not to the worker: never reported as unknown.
const TOOLING_PREFIXES: &[&str] = &["LULL_TEST_", "LULL_PM2_", "LULL_FAULT_", "LULL_KAFKA_PORT_"];
const TOOLING_NAMES: &[&str] = &["LULL_BIN", "LULL_CACHE", "LULL_KAFKA_CACHE"];

/// `LULL_*` variables set in `env` that lull does not read (a typo like `LULL_QUIETMS`), each with
/// the nearest real setting when one is close. `LULL_KAFKA_*` are librdkafka's and are checked
/// with librdkafka instead.
pub fn unknown_variables(env: &impl Env) -> Vec<(String, Option<&'static str>)> {
    let mut out = Vec::new();
    for (name, _) in env.with_prefix("LULL_") {
        let known = settings::SETTINGS.iter().any(|s| s.name == name)
            || TOOLING_NAMES.contains(&name.as_str())
            || TOOLING_PREFIXES.iter().any(|p| name.starts_with(p))
            || name.starts_with(KAFKA_PREFIX)
            || name.starts_with(super::channels::PREFIX);
        if !known {
            out.push((name.clone(), nearest_setting(&name)));
        }
    }
    out.sort();
    out
}

/// The setting whose name is closest to `name`, if it is close enough to be a typo; a setting
/// that has no `LULL_` prefix given with one (`LULL_REDIS_URL`) is named as it is spelt.
fn nearest_setting(name: &str) -> Option<&'static str> {
    if let Some(bare) = settings::SETTINGS
        .iter()
        .find(|s| name.strip_prefix("LULL_") == Some(s.name))
    {
        return Some(bare.name);
    }
    settings::SETTINGS
        .iter()
        .map(|s| (strsim::levenshtein(name, s.name), s.name))
        .filter(|(d, s)| *d <= 3.max(s.len() / 4))
        .min()
        .map(|(_, s)| s)
}

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        std::env::vars()
            .filter(|(k, _)| k.starts_with(prefix))
            .collect()
    }
}

impl Env for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }

    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
