//! The listening socket: binding it safely, accepting connections, and removing the
//! socket file when the daemon stops.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use crate::peer;

/// Removes the socket file it names when dropped, if the file is still the one this
/// daemon bound (a later daemon may have replaced it).
#[derive(Debug)]
pub struct SocketGuard {
    path: PathBuf,
    inode: u64,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if meta.ino() == self.inode {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds a listening socket at `path`, creating its directory if needed. A stale socket
/// file of a daemon that is gone is replaced; a live one, a symlink or a file that is not a
/// socket makes this fail instead. The socket is mode 0666: who may do what is decided per
/// mailbox, and the directory's mode decides who reaches the socket at all.
pub fn bind(path: &Path) -> anyhow::Result<(UnixListener, SocketGuard)> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::create_dir_all(dir)
                .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot set mode of {}", dir.display()))?;
        }
        check_directory(dir, me)?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            bail!("refusing to use {}: it is a symbolic link", path.display())
        }
        Ok(meta) if meta.uid() != me => {
            bail!(
                "refusing to use {}: it belongs to uid {}, not to this daemon's uid {me}",
                path.display(),
                meta.uid()
            )
        }
        Ok(meta) if !meta.file_type().is_socket() => {
            bail!(
                "refusing to use {}: it exists and is not a socket",
                path.display()
            )
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => bail!(
                "another daemon is already listening on {}; stop it first or choose another --socket",
                path.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!("removing stale socket {}", path.display());
                fs::remove_file(path)
                    .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot probe {}", path.display()));
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666))
        .with_context(|| format!("cannot set mode of {}", path.display()))?;
    let inode = fs::symlink_metadata(path)
        .with_context(|| format!("cannot inspect {}", path.display()))?
        .ino();
    Ok((
        listener,
        SocketGuard {
            path: path.to_path_buf(),
            inode,
        },
    ))
}

/// The socket's directory must not let anyone else swap the socket under us: it belongs
/// to this daemon's uid or root, and whoever else may write to it is held back by the
/// sticky bit (as in `/tmp`).
fn check_directory(dir: &Path, me: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        fs::metadata(dir).with_context(|| format!("cannot inspect directory {}", dir.display()))?;
    if meta.uid() != me && meta.uid() != 0 {
        bail!(
            "refusing to use socket directory {}: it belongs to uid {}, not to this daemon's uid {me} or root",
            dir.display(),
            meta.uid()
        );
    }
    let mode = meta.mode();
    let sticky = mode & libc::S_ISVTX != 0;
    if mode & 0o022 != 0 && !sticky {
        bail!(
            "refusing to use socket directory {}: others may write to it (mode {:04o}); \
             make it 0755 or give it the sticky bit",
            dir.display(),
            mode & 0o7777
        );
    }
    Ok(())
}

/// How long accept waits after a failure (such as running out of descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections until `stop` is cancelled, spawning a peer for each on `tracker`.
pub async fn accept_loop(
    listener: tokio::net::UnixListener,
    broker: Arc<Broker>,
    tracker: &TaskTracker,
    stop: &CancellationToken,
    peers_stop: &CancellationToken,
) {
    // Set while accept fails, so a burst of failures is logged once, with its recovery.
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("accepting connections again");
                    }
                    tracker.spawn(peer::serve(stream, broker.clone(), peers_stop.clone()));
                }
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning, and keep
                    // serving the connections already open. The connection waits in the
                    // listen backlog meanwhile.
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(
                            "accept failed: {e}; retrying every {} ms until it works",
                            ACCEPT_BACKOFF.as_millis()
                        );
                    }
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            }
        }
    }
}
