//! What `lull top` shows: one row per partition (rates from two scrapes), sorted by the column
//! the operator chose, as plain text (`--once`) or a ratatui frame.

use std::cmp::Ordering;

use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::Frame;

use super::scrape::Scrape;

/// A column to sort by, with its key in the live view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Instance, then partition (key `p`).
    Partition,
    /// Open windows (key `w`).
    Windows,
    /// Oldest open window's age (key `a`).
    Age,
    /// Fragments in per second (key `i`).
    In,
    /// Batches out per second (key `o`).
    Out,
    /// Lag (key `l`).
    Lag,
    /// Commits per second (key `c`).
    Commits,
}

impl SortKey {
    /// The key that picks it in the live view.
    pub fn of_key(c: char) -> Option<Self> {
        Some(match c {
            'p' => Self::Partition,
            'w' => Self::Windows,
            'a' => Self::Age,
            'i' => Self::In,
            'o' => Self::Out,
            'l' => Self::Lag,
            'c' => Self::Commits,
            _ => return None,
        })
    }

    /// The column it sorts (in [`HEADERS`]).
    fn column(self) -> usize {
        match self {
            Self::Partition => 1,
            Self::Windows => 3,
            Self::Age => 4,
            Self::In => 5,
            Self::Out => 6,
            Self::Lag => 7,
            Self::Commits => 8,
        }
    }
}

/// The columns.
const HEADERS: [&str; 9] = [
    "INSTANCE",
    "PARTITION",
    "PHASE",
    "OPEN",
    "OLDEST_S",
    "IN/S",
    "OUT/S",
    "LAG",
    "COMMITS/S",
];

/// One partition of one instance, as shown.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionRow {
    /// The instance's id.
    pub instance: String,
    /// The input partition.
    pub partition: i32,
    /// The worker's phase (`-` once stopped).
    pub phase: String,
    /// Open windows.
    pub open: f64,
    /// The oldest open window's age, seconds.
    pub oldest: f64,
    /// Fragments read per second.
    pub fragments_per_s: f64,
    /// Batches out per second.
    pub batches_per_s: f64,
    /// Messages behind the partition's end (`None` until known).
    pub lag: Option<f64>,
    /// Commits per second.
    pub commits_per_s: f64,
}

/// A counter's rate between two scrapes; a counter that went down started again (its partition
/// came back): what it counts since is the increase.
fn rate(before: Option<f64>, now: f64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    match before {
        Some(b) if now >= b => (now - b) / seconds,
        _ => 0.0,
    }
}

/// The rows of one instance, from its previous scrape (if any) and this one.
pub fn rows(before: Option<&Scrape>, now: &Scrape) -> Vec<PartitionRow> {
    let seconds = before.map_or(0.0, |b| now.at.duration_since(b.at).as_secs_f64());
    now.partitions
        .iter()
        .map(|(&partition, f)| {
            let b = before.and_then(|b| b.partitions.get(&partition));
            PartitionRow {
                instance: now.instance.clone(),
                partition,
                phase: f.phase.clone().unwrap_or_else(|| "-".to_string()),
                open: f.open_windows,
                oldest: f.oldest_age,
                fragments_per_s: rate(b.map(|b| b.fragments), f.fragments, seconds),
                batches_per_s: rate(b.map(|b| b.batches), f.batches, seconds),
                lag: f.lag,
                commits_per_s: rate(b.map(|b| b.commits), f.commits, seconds),
            }
        })
        .collect()
}

/// Sorts `rows` by `key`, largest first unless `ascending` (partition: by instance, then number).
pub fn sort(rows: &mut [PartitionRow], key: SortKey, ascending: bool) {
    let figure = |r: &PartitionRow| match key {
        SortKey::Partition => 0.0,
        SortKey::Windows => r.open,
        SortKey::Age => r.oldest,
        SortKey::In => r.fragments_per_s,
        SortKey::Out => r.batches_per_s,
        SortKey::Lag => r.lag.unwrap_or(-1.0),
        SortKey::Commits => r.commits_per_s,
    };
    rows.sort_by(|a, b| {
        let by_figure = figure(a).partial_cmp(&figure(b)).unwrap_or(Ordering::Equal);
        let by_name = a
            .instance
            .cmp(&b.instance)
            .then(a.partition.cmp(&b.partition));
        let ordered = if key == SortKey::Partition {
            by_name
        } else {
            by_figure.then(by_name.reverse())
        };
        if ascending {
            ordered
        } else {
            ordered.reverse()
        }
    });
}

/// The cells of a row.
fn cells(r: &PartitionRow) -> [String; 9] {
    [
        r.instance.clone(),
        r.partition.to_string(),
        r.phase.clone(),
        format!("{:.0}", r.open),
        format!("{:.1}", r.oldest),
        format!("{:.1}", r.fragments_per_s),
        format!("{:.1}", r.batches_per_s),
        r.lag.map_or("-".to_string(), |l| format!("{l:.0}")),
        format!("{:.1}", r.commits_per_s),
    ]
}

/// One instance's status line.
pub fn status_line(url: &str, scrape: &Result<Scrape, String>) -> String {
    match scrape {
        Err(e) => format!("{url}: unreachable ({e})"),
        Ok(s) => {
            let readiness = if s.ready {
                "ready".to_string()
            } else {
                format!("NOT READY ({})", s.reasons.join(", "))
            };
            let warnings = if s.warnings.is_empty() {
                String::new()
            } else {
                format!("; warnings: {}", s.warnings.join(", "))
            };
            format!(
                "{} at {url}: {readiness}; {} partitions; redis {}{warnings}",
                s.instance,
                s.partitions.len(),
                s.redis
            )
        }
    }
}

/// The plain-text table (`--once`), columns aligned.
pub fn plain(rows: &[PartitionRow]) -> String {
    let table: Vec<[String; 9]> = std::iter::once(HEADERS.map(str::to_string))
        .chain(rows.iter().map(cells))
        .collect();
    let widths: Vec<usize> = (0..HEADERS.len())
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Everything one frame of the live view shows.
pub struct Screen<'a> {
    /// One status line per instance.
    pub statuses: &'a [(String, bool)],
    /// The rows, sorted.
    pub rows: &'a [PartitionRow],
    /// The sort column and direction.
    pub sort: (SortKey, bool),
    /// Seconds between refreshes.
    pub interval: f64,
}

/// Draws the live view: instances, the partition table (sort column marked), totals and keys.
pub fn draw(frame: &mut Frame, screen: &Screen<'_>) {
    let [top, middle, bottom] = Layout::vertical([
        Constraint::Length(screen.statuses.len() as u16 + 2),
        Constraint::Min(3),
        Constraint::Length(2),
    ])
    .areas(frame.area());
    let statuses: Vec<Line> = screen
        .statuses
        .iter()
        .map(|(text, ok)| {
            let colour = if *ok { Color::Green } else { Color::Red };
            Line::from(Span::styled(text.clone(), Style::default().fg(colour)))
        })
        .collect();
    frame.render_widget(
        Paragraph::new(statuses).block(Block::bordered().title(" lull top: instances ")),
        top,
    );
    let (key, ascending) = screen.sort;
    let header = Row::new(HEADERS.iter().enumerate().map(|(i, h)| {
        if i == key.column() {
            let arrow = if ascending { "▲" } else { "▼" };
            Span::styled(
                format!("{h}{arrow}"),
                Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED),
            )
        } else {
            Span::styled(*h, Style::default().add_modifier(Modifier::BOLD))
        }
    }));
    let rows = screen.rows.iter().map(|r| {
        let stuck = r.phase != "running" || (r.lag.unwrap_or(0.0) > 0.0 && r.commits_per_s == 0.0);
        let style = if stuck {
            Style::default().fg(Color::Yellow)
        } else {
            Style::default()
        };
        Row::new(cells(r)).style(style)
    });
    let widths = [
        Constraint::Min(16),
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(10),
    ];
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(" partitions ")),
        middle,
    );
    let sum = |f: fn(&PartitionRow) -> f64| screen.rows.iter().map(f).sum::<f64>();
    let totals = format!(
        " {} partitions  open {:.0}  in {:.1}/s  out {:.1}/s  lag {:.0}  (every {:.1}s)",
        screen.rows.len(),
        sum(|r| r.open),
        sum(|r| r.fragments_per_s),
        sum(|r| r.batches_per_s),
        sum(|r| r.lag.unwrap_or(0.0)),
        screen.interval,
    );
    let keys = " sort: p partition  w windows  a age  i in  o out  l lag  c commits (again: reverse)   q quit";
    frame.render_widget(
        Paragraph::new(vec![Line::from(totals), Line::from(keys)]),
        bottom,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(instance: &str, partition: i32, lag: Option<f64>, fragments_per_s: f64) -> PartitionRow {
        PartitionRow {
            instance: instance.to_string(),
            partition,
            phase: "running".to_string(),
            open: 0.0,
            oldest: 0.0,
            fragments_per_s,
            batches_per_s: 0.0,
            lag,
            commits_per_s: 0.0,
        }
    }

    #[test]
    fn rows_sort_by_the_chosen_column() {
        let mut rows = vec![
            row("b", 0, Some(5.0), 1.0),
            row("a", 1, None, 3.0),
            row("a", 0, Some(9.0), 2.0),
        ];
        sort(&mut rows, SortKey::Partition, true);
        let order: Vec<_> = rows
            .iter()
            .map(|r| (r.instance.as_str(), r.partition))
            .collect();
        assert_eq!(order, [("a", 0), ("a", 1), ("b", 0)]);
        sort(&mut rows, SortKey::Lag, false);
        assert_eq!(rows[0].lag, Some(9.0));
        assert_eq!(rows[2].lag, None);
        sort(&mut rows, SortKey::In, true);
        assert_eq!(rows[0].fragments_per_s, 1.0);
    }

    #[test]
    fn a_counter_that_went_down_is_no_negative_rate() {
        assert_eq!(rate(Some(10.0), 30.0, 2.0), 10.0);
        assert_eq!(rate(Some(10.0), 3.0, 2.0), 0.0);
        assert_eq!(rate(None, 3.0, 2.0), 0.0);
    }

    #[test]
    fn the_plain_table_is_aligned() {
        let text = plain(&[row("lull-1", 3, Some(12.0), 1.25)]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("INSTANCE  PARTITION  PHASE"));
        assert!(lines[1].starts_with("lull-1    3          running"));
    }
}
