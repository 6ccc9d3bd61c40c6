//! Progress on long work (`demo`, `simulate`, `bench`, `verify`): indicatif bars and spinners on
//! stderr when it is a terminal, nothing at all otherwise, so piped output and logs stay as they
//! were.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where progress goes: stderr on a terminal, nowhere otherwise.
fn target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

/// A bar counting to `total`, with the time left; `message` says what it counts.
pub fn bar(total: u64, message: impl Into<String>) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), target());
    // The template is a constant: it parses (a unit test checks), so the fallback never shows.
    let style = ProgressStyle::with_template(BAR)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(message.into());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A spinner for work of unknown length (waiting for partitions, reading to a topic's end).
pub fn spinner(message: impl Into<String>) -> ProgressBar {
    let spinner = ProgressBar::with_draw_target(None, target());
    let style =
        ProgressStyle::with_template(SPINNER).unwrap_or_else(|_| ProgressStyle::default_spinner());
    spinner.set_style(style);
    spinner.set_message(message.into());
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner
}

const BAR: &str = "  {msg:<28} [{bar:30}] {human_pos}/{human_len} ({eta} left)";
const SPINNER: &str = "  {spinner} {msg} ({elapsed})";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_templates_parse() {
        assert!(ProgressStyle::with_template(BAR).is_ok());
        assert!(ProgressStyle::with_template(SPINNER).is_ok());
    }
}
