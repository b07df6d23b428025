//! The `ipcd` binary: parse arguments, set up logging and signals, bind the socket, and
//! hand over to [`ipcd::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use ipc_proto::paths;
use signal_hook::consts::{SIGINT, SIGTERM};

/// ipcd: a system-wide message broker with SysV-style mailboxes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Socket to listen on [default: $IPCD_SOCKET, else /run/ipcd/ipcd.sock for root,
    /// else $XDG_RUNTIME_DIR/ipcd/ipcd.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Directory for durable state [default: /var/lib/ipcd for root, else
    /// $XDG_STATE_HOME/ipcd].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    ipcd::logging::init();
    let args = Args::parse();
    raise_descriptor_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let socket = match args.socket {
        Some(path) => path,
        None => default_socket(root)?,
    };
    let state_dir = match args.state_dir {
        Some(dir) => dir,
        None => default_state_dir(root)?,
    };
    let config = ipcd::Config {
        state_dir,
        ..ipcd::Config::default()
    };
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT])
        .context("cannot install signal handlers")?;
    let (listener, _socket_file) = ipcd::bind(&socket)?;
    tracing::info!(
        "ipcd {} listening on {}",
        env!("CARGO_PKG_VERSION"),
        socket.display()
    );
    let shutdown = async move {
        if let Some(signal) = signals.next().await {
            tracing::info!("received signal {signal}");
        }
    };
    ipcd::run(listener, config, shutdown).await
}

/// Every connection is a descriptor: take the hard limit the system grants instead of
/// the soft default (often 1024), as most daemons do. Failure only leaves the soft limit.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::debug!(
                    "cannot raise the descriptor limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

fn default_socket(root: bool) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(paths::SOCKET_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    if root {
        return Ok(PathBuf::from(paths::SYSTEM_SOCKET));
    }
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|p| !p.is_empty())
        .context(
            "XDG_RUNTIME_DIR is not set, so there is no per-user socket path; pass --socket PATH",
        )?;
    Ok(paths::user_socket(&PathBuf::from(runtime_dir)))
}

fn default_state_dir(root: bool) -> anyhow::Result<PathBuf> {
    if root {
        return Ok(PathBuf::from("/var/lib/ipcd"));
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(dir).join("ipcd"));
    }
    let home = std::env::var_os("HOME").context("neither XDG_STATE_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/state/ipcd"))
}
