//! `lull top`: a live terminal view of running instances, from their `/metrics` and
//! `/health/ready` — per partition its phase, open windows, the oldest window's age, fragments in
//! and batches out per second, lag and commits per second; per instance its readiness and why
//! not. Keys sort the table. `--once` prints one plain snapshot for scripts.

mod scrape;
mod view;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use lull::config::Config;

use scrape::Scrape;
use view::{PartitionRow, Screen, SortKey};

/// `lull top`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// An instance to watch, as http://host:port or host:port (repeat for several). Default: this
    /// machine's LULL_HTTP_ADDR.
    #[arg(long = "url", value_name = "URL")]
    pub urls: Vec<String>,
    /// Print one plain-text snapshot (rates over --interval) and exit: 0 when every instance
    /// answered, 1 when one did not.
    #[arg(long)]
    pub once: bool,
    /// Time between refreshes (the rates are over it): 1s, 500ms, 2s...
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// The column to sort by at start (in the live view: keys p, w, a, i, o, l, c).
    #[arg(long, value_enum, default_value = "partition")]
    pub sort: SortKey,
    /// Settings (flags over environment variables).
    #[command(flatten)]
    pub settings: super::settings::SettingsArgs,
}

/// The instances to watch, as `(url, host:port)`.
fn instances(config: &Config, args: &TopArgs) -> Result<Vec<(String, String)>, String> {
    if args.urls.is_empty() {
        let mut addr = config.http_addr;
        // An instance bound to every address answers on loopback.
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        // SocketAddr's form: an IPv6 address in brackets.
        let authority = addr.to_string();
        return Ok(vec![(format!("http://{authority}"), authority)]);
    }
    args.urls
        .iter()
        .map(|u| scrape::authority(u).map(|a| (u.clone(), a)))
        .collect()
}

/// Reads every instance once, concurrently.
async fn scrape_all(instances: &[(String, String)]) -> Vec<Result<Scrape, String>> {
    futures_util::future::join_all(instances.iter().map(|(_, a)| scrape::scrape(a))).await
}

/// The rows and status lines of two rounds of scrapes.
fn table(
    instances: &[(String, String)],
    before: &[Result<Scrape, String>],
    now: &[Result<Scrape, String>],
) -> (Vec<(String, bool)>, Vec<PartitionRow>) {
    let mut statuses = Vec::new();
    let mut rows = Vec::new();
    for (i, (url, _)) in instances.iter().enumerate() {
        let current = &now[i];
        statuses.push((
            view::status_line(url, current),
            matches!(current, Ok(s) if s.ready),
        ));
        if let Ok(s) = current {
            let previous = before.get(i).and_then(|b| b.as_ref().ok());
            rows.extend(view::rows(previous, s));
        }
    }
    (statuses, rows)
}

/// `lull top`.
pub async fn main(config: Config, args: TopArgs) -> ExitCode {
    let instances = match instances(&config, &args) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    let interval = args.interval.max(Duration::from_millis(100));
    if args.once {
        return once(&instances, interval, args.sort).await;
    }
    if !std::io::stdout().is_terminal() {
        eprintln!("lull top: stdout is not a terminal; use --once for a plain snapshot");
        return ExitCode::from(super::EXIT_CONFIG);
    }
    match live(&instances, interval, args.sort).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lull top: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One snapshot: two scrapes `interval` apart, printed as a status line per instance and a table.
async fn once(instances: &[(String, String)], interval: Duration, sort: SortKey) -> ExitCode {
    let before = scrape_all(instances).await;
    tokio::time::sleep(interval).await;
    let now = scrape_all(instances).await;
    let (statuses, mut rows) = table(instances, &before, &now);
    view::sort(&mut rows, sort, sort == SortKey::Partition);
    let mut text: String = statuses
        .iter()
        .map(|(line, _)| format!("{line}\n"))
        .collect();
    text.push_str(&view::plain(&rows));
    // A reader that stops early (`lull top --once | head`) is no error of ours: no panic on a
    // closed pipe.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
    if now.iter().all(Result::is_ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The keys pressed, read on a thread of their own (crossterm's reads block) until the view ends.
fn keys() -> tokio::sync::mpsc::UnboundedReceiver<(KeyCode, KeyModifiers)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while !tx.is_closed() {
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => match event::read() {
                    Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => {
                        if tx.send((k.code, k.modifiers)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
                Ok(false) => {}
                Err(_) => return,
            }
        }
    });
    rx
}

/// The live view until `q`, Esc or Ctrl-C; the terminal is restored however it ends.
async fn live(
    instances: &[(String, String)],
    interval: Duration,
    sort: SortKey,
) -> std::io::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let result = refresh_until_quit(&mut terminal, instances, interval, sort).await;
    ratatui::restore();
    result
}

async fn refresh_until_quit(
    terminal: &mut ratatui::DefaultTerminal,
    instances: &[(String, String)],
    interval: Duration,
    sort: SortKey,
) -> std::io::Result<()> {
    let mut pressed = keys();
    let mut sort = (sort, sort == SortKey::Partition);
    let mut before: Vec<Result<Scrape, String>> = Vec::new();
    let mut now = scrape_all(instances).await;
    let mut next = tokio::time::Instant::now() + interval;
    loop {
        let (statuses, mut rows) = table(instances, &before, &now);
        view::sort(&mut rows, sort.0, sort.1);
        terminal.draw(|frame| {
            view::draw(
                frame,
                &Screen {
                    statuses: &statuses,
                    rows: &rows,
                    sort,
                    interval: interval.as_secs_f64(),
                },
            )
        })?;
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                before = std::mem::replace(&mut now, scrape_all(instances).await);
                next = tokio::time::Instant::now() + interval;
            }
            key = pressed.recv() => match key {
                None => return Ok(()),
                Some((KeyCode::Char('q') | KeyCode::Esc, _)) => return Ok(()),
                Some((KeyCode::Char('c'), m)) if m.contains(KeyModifiers::CONTROL) => return Ok(()),
                Some((KeyCode::Char(c), _)) => {
                    if let Some(key) = SortKey::of_key(c) {
                        // The same key again turns the order round.
                        sort = if sort.0 == key {
                            (key, !sort.1)
                        } else {
                            (key, key == SortKey::Partition)
                        };
                    }
                }
                Some(_) => {}
            },
        }
    }
}
