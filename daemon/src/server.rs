//! The listening socket: binding it safely, accepting connections, and removing the
//! socket file when the daemon stops.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
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

/// Binds a listening socket at `path`, creating its directory if needed with mode 0755,
/// and refusing one that is a symbolic link, not a directory, neither this daemon's uid's
/// nor root's, or writable by others without the sticky bit. A stale socket file of a
/// daemon that is gone is replaced; a live one, a symlink or a file that is not a socket
/// makes this fail instead. The socket is mode 0666: who may do what is decided per
/// mailbox, and the directory's mode decides who reaches the socket at all.
pub fn bind(path: &Path) -> anyhow::Result<(UnixListener, SocketGuard)> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        socket_directory(dir, me)?;
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

/// Mode of a socket directory the daemon creates: everyone may reach the socket in it,
/// only the daemon may add or remove files there.
const SOCKET_DIR_MODE: u32 = 0o755;

/// Makes sure the socket's directory `dir` exists and nobody else can swap the socket in
/// it: it is a real directory (not a symbolic link), it belongs to this daemon's uid or to
/// root (who could replace anything anyway), and whoever else may write to it is held back
/// by the sticky bit (as in `/tmp`).
///
/// There is no window between a check and a create: `mkdir` either makes the directory or
/// finds something already there. What is there is looked at without following a link
/// (`lstat`), then opened without following one (`O_NOFOLLOW`), and what is checked is the
/// descriptor's `fstat`, so a swap between the look and the open is caught too.
fn socket_directory(dir: &Path, me: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let refuse =
        |why: String| anyhow::anyhow!("refusing to use socket directory {}: {why}", dir.display());
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create directory {}", parent.display()))?;
    }
    let created = match fs::DirBuilder::new().mode(SOCKET_DIR_MODE).create(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => bail!("cannot create socket directory {}: {e}", dir.display()),
    };
    let found = fs::symlink_metadata(dir)
        .with_context(|| format!("cannot inspect socket directory {}", dir.display()))?;
    if found.file_type().is_symlink() {
        return Err(refuse("it is a symbolic link".to_owned()));
    }
    if !found.is_dir() {
        return Err(refuse("it is not a directory".to_owned()));
    }
    // Opened without following a link, in case it was replaced since: from here on only
    // the descriptor is trusted.
    let opened = open_directory(dir).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP | libc::ENOTDIR) => {
            refuse("it was replaced by a symbolic link or a file while being checked".to_owned())
        }
        _ => anyhow::anyhow!("cannot open socket directory {}: {e}", dir.display()),
    })?;
    let meta = opened
        .metadata()
        .with_context(|| format!("cannot inspect socket directory {}", dir.display()))?;
    if !meta.is_dir() {
        return Err(refuse("it is not a directory".to_owned()));
    }
    if meta.uid() != me && meta.uid() != 0 {
        return Err(refuse(format!(
            "it belongs to uid {}, not to this daemon's uid {me} or root",
            meta.uid()
        )));
    }
    let mut mode = meta.mode() & 0o7777;
    if created && meta.uid() == me && mode != SOCKET_DIR_MODE {
        // The umask took bits from the mode mkdir was given; the descriptor is the
        // directory just checked, so this cannot change another one.
        // SAFETY: fchmod on a descriptor this function owns.
        if unsafe { libc::fchmod(opened.as_raw_fd(), SOCKET_DIR_MODE) } != 0 {
            let e = io::Error::last_os_error();
            bail!(
                "cannot set the mode of socket directory {}: {e}",
                dir.display()
            );
        }
        mode = SOCKET_DIR_MODE;
    }
    let sticky = mode & libc::S_ISVTX != 0;
    if mode & 0o022 != 0 && !sticky {
        return Err(refuse(format!(
            "others may write to it (mode {mode:04o}); make it 0755 or give it the sticky bit"
        )));
    }
    Ok(())
}

/// Opens `dir` itself, never what a symbolic link there points to: read-only where this
/// daemon may read it (so its mode can be set), else as a bare path, which is enough to
/// inspect it.
fn open_directory(dir: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |flags: i32| {
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | flags)
            .open(dir)
    };
    match open(0) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => open(libc::O_PATH),
        opened => opened,
    }
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
                    if let Some(admitted) = peer::admit(stream, &broker) {
                        tracker.spawn(peer::serve(admitted, broker.clone(), peers_stop.clone()));
                    }
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
