//! The layering ARCHITECTURE.md describes, checked on the source: the model is pure, and nothing
//! in the worker imports the operator tools' shared kit.

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
