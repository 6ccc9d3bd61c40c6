//! How every command logs: to stderr, pretty or JSON, levels from `RUST_LOG`. Colour only on a
//! terminal and never with `NO_COLOR` set. `lull run` stamps every line with its instance id and
//! pid, whichever thread wrote it (librdkafka's callbacks and blocking tasks have no span to
//! inherit, so the stamp is added by the formatter rather than by a span).

use std::io::IsTerminal;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

use lull::config::LogFormat;

/// Whether to colour pretty logs: stderr is a terminal and `NO_COLOR` is unset or empty
/// (<https://no-color.org>).
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Adds `instance` and `pid` to every line of an inner formatter: the first fields of a JSON
/// object, or the last of a pretty line.
struct Stamped<F> {
    inner: F,
    json: bool,
    /// `"instance":"...","pid":N,` (JSON) or ` instance=... pid=N` (pretty).
    stamp: String,
}

impl<S, N, F> FormatEvent<S, N> for Stamped<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.strip_suffix('\n').unwrap_or(&line);
        match (self.json, body.strip_prefix('{')) {
            (true, Some(rest)) => writeln!(writer, "{{{}{rest}", self.stamp),
            _ => writeln!(writer, "{body}{}", self.stamp),
        }
    }
}

/// Installs the subscriber. With `instance`, every line carries it and the pid.
pub fn init(format: LogFormat, default_filter: &str, instance: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let pid = std::process::id();
    match (format, instance) {
        (LogFormat::Json, None) => builder.json().flatten_event(true).init(),
        (LogFormat::Json, Some(id)) => {
            let id = serde_json::Value::from(id);
            let stamp = format!("\"instance\":{id},\"pid\":{pid},");
            let inner = format::format().json().flatten_event(true);
            builder
                .json()
                .flatten_event(true)
                .event_format(Stamped {
                    inner,
                    json: true,
                    stamp,
                })
                .init()
        }
        (LogFormat::Pretty, None) => builder.with_ansi(colour()).init(),
        (LogFormat::Pretty, Some(id)) => {
            let ansi = colour();
            let stamp = format!(" instance={id} pid={pid}");
            builder
                .with_ansi(ansi)
                .event_format(Stamped {
                    inner: format::format().with_ansi(ansi),
                    json: false,
                    stamp,
                })
                .init()
        }
    }
}
