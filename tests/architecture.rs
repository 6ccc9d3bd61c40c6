//! The layering ARCHITECTURE.md describes, checked on the source: the model is pure and reads no
//! clock, nothing in the worker imports the operator tools' shared kit, every Kafka client is
//! configured in one place, and no production file grows past 600 lines.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("source directory") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out
}

fn src(layer: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(layer)
}

/// Lines of `layer` that mention any of `words` outside comments.
fn offending(layer: &str, words: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for file in sources(&src(layer)) {
        let text = std::fs::read_to_string(&file).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if words.iter().any(|w| code.contains(w)) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn the_model_is_pure() {
    let found = offending(
        "model",
        &["tokio", "rdkafka", "redis", "crate::flow", "crate::io"],
    );
    assert!(found.is_empty(), "the model must not do I/O: {found:#?}");
}

#[test]
fn the_worker_does_not_import_the_tools_kit() {
    for layer in ["flow", "model", "io", "ops", "config"] {
        let found = offending(layer, &["devkit", "crate::cli"]);
        assert!(
            found.is_empty(),
            "{layer} imports the tools' kit: {found:#?}"
        );
    }
}

/// Every setting in the one table is documented where operators look: the README's
/// configuration table and the example environment file.
#[test]
fn every_setting_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).expect("documentation file");
    let (readme, example) = (read("README.md"), read("ecosystem/lull.env.example"));
    for s in lull::config::settings::SETTINGS {
        assert!(
            readme.contains(&format!("| `{}` |", s.name)),
            "{} is not in the README's configuration table",
            s.name
        );
        assert!(
            example.contains(&format!("#{}=", s.name)),
            "{} is not in ecosystem/lull.env.example",
            s.name
        );
    }
}

#[test]
fn the_model_reads_no_clock() {
    let found = offending("model", &["SystemTime::now", "Instant::now", "now_ms()"]);
    assert!(
        found.is_empty(),
        "the model takes time as a value (ops::clock reads the wall clock): {found:#?}"
    );
}

/// Every Kafka client — the worker's and every tool's — is configured by `io::kafka`, so the
/// `LULL_KAFKA_*` settings (TLS, SASL) apply to all of them the same way. (The configuration
/// check only asks librdkafka whether it accepts a property.)
#[test]
fn kafka_clients_are_configured_in_one_place() {
    let mut found = Vec::new();
    for layer in ["cli", "devkit", "flow", "io", "model", "ops"] {
        found.extend(
            offending(layer, &["ClientConfig::new"])
                .into_iter()
                .filter(|l| !l.contains("src/io/kafka.rs")),
        );
    }
    assert!(
        found.is_empty(),
        "build clients with io::kafka's builders: {found:#?}"
    );
}

/// No production source file is over 600 lines (tests live in `tests.rs` / `properties.rs`
/// files of their own).
#[test]
fn no_production_file_is_over_600_lines() {
    let long: Vec<String> = sources(&src(""))
        .into_iter()
        .filter(|f| {
            !f.file_name()
                .is_some_and(|n| n == "tests.rs" || n == "properties.rs")
        })
        .filter_map(|f| {
            let lines = std::fs::read_to_string(&f)
                .expect("readable")
                .lines()
                .count();
            (lines > 600).then(|| format!("{}: {lines} lines", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these: {long:#?}");
}
