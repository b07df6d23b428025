//! Log set-up: `tracing-subscriber` to stderr, filtered by `IPCD_LOG` (else `RUST_LOG`,
//! else `info`). Under journald (`JOURNAL_STREAM` set) each line starts with its syslog
//! priority (`<3>` error … `<7>` debug, as sd-daemon(3) describes), which the journal
//! turns into the entry's priority, and carries no timestamp, since the journal adds its
//! own.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub fn init() {
    let filter = std::env::var("IPCD_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: a file or pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.with_ansi(false).event_format(Journal).init();
    } else {
        builder.init();
    }
}

/// One line per event: `<priority>message key=value …`.
struct Journal;

/// The syslog priority of a tracing level.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

impl<S, N> FormatEvent<S, N> for Journal
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::INFO), 6);
        assert_eq!(priority(Level::DEBUG), 7);
    }
}

/// Escapes control characters (and quotes and backslashes) in text a client chose, so
/// that it cannot forge log lines or send escape sequences to a terminal reading the log.
pub fn escape(text: &str) -> String {
    text.escape_debug().to_string()
}

/// `Some(lines held back since the last one)` if a line of `cause` may be logged now: one
/// [`Throttle`] per cause, shared by every connection, so that a client cannot flood the
/// log by repeating what makes a line (bad frames, handshake timeouts, refusals).
pub fn throttled(cause: &'static str) -> Option<u64> {
    static THROTTLES: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<&'static str, Throttle>>,
    > = std::sync::LazyLock::new(Default::default);
    let mut throttles = THROTTLES.lock().unwrap_or_else(|e| e.into_inner());
    throttles.entry(cause).or_default().allow()
}

/// Rate-limits log lines of one cause: at most one per [`Throttle::EVERY`], each saying
/// how many were held back since the last, so that a client cannot flood the log.
#[derive(Debug, Default)]
pub struct Throttle {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl Throttle {
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    /// `Some(lines held back since the last one)` if a line may be logged now.
    pub fn allow(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|at| now.duration_since(at) < Self::EVERY)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}
