//! Log set-up: `tracing-subscriber` to stderr, filtered by `IPCD_LOG` (else `RUST_LOG`,
//! else `info`). Under journald (`JOURNAL_STREAM` set) lines carry no timestamp, since
//! the journal adds its own.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = std::env::var("IPCD_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.init();
    }
}
