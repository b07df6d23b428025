//! The `ipcd` binary: parse arguments, read the configuration, set up logging and
//! signals, bind the socket (or take it from systemd), and hand over to
//! [`ipcd::run_with`]. Signals become [`ipcd::Control`] orders: SIGTERM/SIGINT stop,
//! SIGHUP reloads the configuration file, SIGUSR1 logs a summary.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use ipc_proto::paths;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use std::os::unix::net::UnixListener;

/// ipcd: a system-wide message broker with SysV-style mailboxes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Socket to listen on [default: $IPCD_SOCKET, else /run/ipcd/ipcd.sock for root,
    /// else $XDG_RUNTIME_DIR/ipcd/ipcd.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Directory for durable state [default: the configuration's, else /var/lib/ipcd for
    /// root, else $XDG_STATE_HOME/ipcd].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Configuration file [default: /etc/ipcd/ipcd.toml for root, else
    /// $XDG_CONFIG_HOME/ipcd/ipcd.toml; used if it exists].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check FILE and exit: 0 if it is valid, else 1 with the bad line and key.
    #[arg(long, value_name = "FILE", exclusive = true)]
    check_config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(file) = &args.check_config {
        return match ipcd::config_file::load(file) {
            Ok(config) => {
                println!(
                    "{}: valid ({} declared mailboxes)",
                    file.display(),
                    config.declared.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    ipcd::logging::init();
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
    let config_file = match &args.config {
        Some(file) => Some(file.clone()),
        None => default_config_file(root).filter(|f| f.exists()),
    };
    let config = load_config(config_file.as_deref(), &args, root)?;
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
        .context("cannot install signal handlers")?;
    // Socket activation: systemd bound the socket and keeps it, so it is not ours to
    // unlink at exit.
    let (listener, _socket_file) = match activated_listener()? {
        Some(listener) => {
            let path = listener
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.to_path_buf()));
            tracing::info!(
                "ipcd {} listening on {} (socket from systemd)",
                env!("CARGO_PKG_VERSION"),
                path.map_or_else(
                    || "an inherited socket".to_owned(),
                    |p| p.display().to_string()
                )
            );
            (listener, None)
        }
        None => {
            let socket = match (&args.socket, &config.socket) {
                (Some(path), _) => path.clone(),
                (None, from_file) => default_socket(root, from_file.as_deref())?,
            };
            let (listener, guard) = ipcd::bind(&socket)?;
            tracing::info!(
                "ipcd {} listening on {}",
                env!("CARGO_PKG_VERSION"),
                socket.display()
            );
            (listener, Some(guard))
        }
    };
    if let Some(file) = &config_file {
        tracing::info!("configuration from {}", file.display());
    }
    let (controls, queue) = tokio::sync::mpsc::channel(4);
    let orders = async move {
        while let Some(signal) = signals.next().await {
            let control = match signal {
                SIGHUP => match &config_file {
                    None => {
                        tracing::info!("SIGHUP: no configuration file to reload");
                        continue;
                    }
                    Some(file) => match load_config(Some(file), &args, root) {
                        Ok(config) => ipcd::Control::Reload(Box::new(config)),
                        Err(e) => {
                            tracing::error!(
                                "SIGHUP: new configuration refused, the old one stays: {e:#}"
                            );
                            continue;
                        }
                    },
                },
                SIGUSR1 => ipcd::Control::Summary,
                _ => {
                    tracing::info!("received signal {signal}");
                    ipcd::Control::Shutdown
                }
            };
            let stop = matches!(control, ipcd::Control::Shutdown);
            if controls.send(control).await.is_err() || stop {
                break;
            }
        }
    };
    let server = ipcd::run_with(listener, config, queue);
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result,
        () = orders => server.await,
    }
}

/// The configuration: the file's (if any) under the command line's socket and state
/// directory, with the per-user defaults where neither says.
fn load_config(
    file: Option<&std::path::Path>,
    args: &Args,
    root: bool,
) -> anyhow::Result<ipcd::Config> {
    let mut config = match file {
        Some(file) => ipcd::config_file::load(file)?,
        None => ipcd::Config::default(),
    };
    let from_file = config.state_dir != ipcd::Config::default().state_dir;
    config.state_dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None if from_file => config.state_dir,
        None => default_state_dir(root)?,
    };
    Ok(config)
}

/// The listening socket systemd passed (`LISTEN_FDS`), if it did.
fn activated_listener() -> anyhow::Result<Option<UnixListener>> {
    use std::os::fd::FromRawFd;
    let mut fds = sd_notify::listen_fds().context("cannot read LISTEN_FDS")?;
    let Some(fd) = fds.next() else {
        return Ok(None);
    };
    if fds.next().is_some() {
        anyhow::bail!("systemd passed more than one socket; ipcd listens on one");
    }
    // SAFETY: systemd passed this descriptor to this process (LISTEN_PID matched), it is
    // open, and nothing else in the process owns it.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    listener
        .local_addr()
        .context("the socket systemd passed is not a Unix stream socket")?;
    Ok(Some(listener))
}

/// The directory systemd made for the service (`CONFIGURATION_DIRECTORY=`, …), if any.
fn systemd_directory(var: &str) -> Option<PathBuf> {
    // Several may be listed, separated by ':'; ours is the first.
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(|v| PathBuf::from(v.to_string_lossy().split(':').next().unwrap_or_default()))
}

fn default_config_file(root: bool) -> Option<PathBuf> {
    if let Some(dir) = systemd_directory("CONFIGURATION_DIRECTORY") {
        return Some(dir.join("ipcd.toml"));
    }
    if root {
        return Some(PathBuf::from(ipcd::config_file::SYSTEM_CONFIG));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("ipcd/ipcd.toml"))
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

fn default_socket(root: bool, from_file: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(paths::SOCKET_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    if let Some(path) = from_file {
        return Ok(path.to_path_buf());
    }
    if let Some(dir) = systemd_directory("RUNTIME_DIRECTORY") {
        return Ok(dir.join("ipcd.sock"));
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
    if let Some(dir) = systemd_directory("STATE_DIRECTORY") {
        return Ok(dir);
    }
    if root {
        return Ok(PathBuf::from("/var/lib/ipcd"));
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(dir).join("ipcd"));
    }
    let home = std::env::var_os("HOME").context("neither XDG_STATE_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/state/ipcd"))
}
