//! `ipcd`, the broker daemon, as a library: [`run`] serves a bound socket until told to
//! stop, which is what the binary and the tests both start.
//!
//! A request's way through the modules: [`server`] accepts → `peer` reads a frame
//! (through `connection`) → `dispatch` checks policy and calls the `broker` / `mailbox`
//! → a waiting receiver is completed by the mailbox → its `peer` writes the response.
//! See ARCHITECTURE.md for the invariants.

mod broker;
mod caller;
mod calls;
pub mod config;
pub mod config_file;
mod connection;
mod dispatch;
mod index;
pub mod logging;
mod mailbox;
mod memory;
mod notify;
mod peer;
mod perm;
mod quota;
pub mod server;
mod store;
mod topics;

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, Limits};
pub use server::{SocketGuard, bind};
#[cfg(feature = "fuzzing")]
pub use store::fuzzing;

/// What the binary (its signal handlers) asks of a running daemon.
#[derive(Debug)]
pub enum Control {
    /// SIGHUP: put this configuration in force.
    Reload(Box<Config>),
    /// SIGUSR1: log a summary of the daemon's state.
    Summary,
    /// SIGTERM/SIGINT: stop.
    Shutdown,
}

/// Serves `listener` with `config` until `shutdown` completes, then stops: no new
/// connections, every waiter answered "shutting down", replies flushed (bounded by
/// `config.shutdown_timeout`). Must be called within a tokio runtime.
pub async fn run(
    listener: std::os::unix::net::UnixListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (controls, control_queue) = tokio::sync::mpsc::channel(4);
    let server = run_with(listener, config, control_queue);
    tokio::pin!(server, shutdown);
    tokio::select! {
        result = &mut server => result,
        () = &mut shutdown => {
            let _ = controls.send(Control::Shutdown).await;
            server.await
        }
    }
}

/// As [`run`], taking its orders from `controls` (the channel closing means stop).
pub async fn run_with(
    listener: std::os::unix::net::UnixListener,
    config: Config,
    mut controls: tokio::sync::mpsc::Receiver<Control>,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let (store, writer, recovered) = open_store(&config);
    let broker = Arc::new(broker::Broker::new(config, store));
    broker.restore(recovered);
    broker.declare();
    tokio::spawn(broker.clone().deliver_dead_letters());
    tokio::spawn(memory::trim_after_bursts(Arc::downgrade(&broker)));
    let tracker = TaskTracker::new();
    let stop_accepting = CancellationToken::new();
    let stop_peers = CancellationToken::new();
    let accepting = server::accept_loop(
        listener,
        broker.clone(),
        &tracker,
        &stop_accepting,
        &stop_peers,
    );
    tokio::pin!(accepting);
    notify::ready(&broker.summary());
    // The watchdog is pinged from the runtime itself, so a stuck runtime stops the pings.
    let tick = notify::watchdog_interval().unwrap_or(std::time::Duration::from_secs(5));
    let mut ticks = tokio::time::interval(tick);
    loop {
        tokio::select! {
            () = &mut accepting => break,
            control = controls.recv() => match control {
                None | Some(Control::Shutdown) => {
                    stop_accepting.cancel();
                    (&mut accepting).await;
                    break;
                }
                Some(Control::Reload(config)) => {
                    notify::reloading();
                    broker.reconfigure(*config);
                    tracing::info!("configuration reloaded");
                    notify::ready(&broker.summary());
                }
                Some(Control::Summary) => broker.log_summary(),
            },
            _ = ticks.tick() => {
                notify::status(&broker.summary());
                if notify::watchdog_interval().is_some() {
                    notify::watchdog();
                }
            }
        }
    }
    notify::stopping();
    tracing::info!("shutting down");
    let shutdown_timeout = broker.config().shutdown_timeout;
    broker.shut_down();
    stop_peers.cancel();
    tracker.close();
    if tokio::time::timeout(shutdown_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "{} connections had not closed after {:?}; dropping them",
            tracker.len(),
            shutdown_timeout
        );
    }
    if let Some(writer) = writer {
        broker.stop_store();
        // Waits for the last writes and their sync.
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    }
    Ok(())
}

/// The durable mailboxes recovered at start, each with its messages.
type Restored = Vec<(store::MailboxDef, Vec<store::StoredMessage>)>;

/// Opens the durable log under the state directory and recovers it. Without it the
/// daemon still serves memory mailboxes, and says why durable ones are refused.
fn open_store(
    config: &Config,
) -> (
    Result<store::Store, String>,
    Option<store::Writer>,
    Restored,
) {
    let options = store::log::LogOptions {
        segment_bytes: config.segment_bytes,
        max_record: config.max_frame(),
    };
    let started = std::time::Instant::now();
    match store::Store::open(&config.state_dir, options) {
        Ok((store, writer, recovered)) => {
            for damage in &recovered.damage {
                tracing::warn!("durable log: {damage}");
            }
            let messages: usize = recovered.mailboxes.iter().map(|(_, m)| m.len()).sum();
            tracing::info!(
                "recovered {} durable mailboxes with {messages} messages from {} records in {} segments in {} ms",
                recovered.mailboxes.len(),
                recovered.records,
                recovered.segments,
                started.elapsed().as_millis()
            );
            (Ok(store), Some(writer), recovered.mailboxes)
        }
        Err(e) => {
            tracing::warn!("durable mailboxes are unavailable: {e:#}");
            (Err(format!("{e:#}")), None, Vec::new())
        }
    }
}
