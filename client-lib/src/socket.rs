//! Finding the daemon's socket the way SPEC §5 says, from this process's environment.

use std::path::{Path, PathBuf};

use ipc_proto::paths;

/// The socket to connect to when none is given: `$IPCD_SOCKET`; else the caller's
/// per-user daemon (`$XDG_RUNTIME_DIR/ipcd/ipcd.sock`) when one is listening there and the
/// caller is not root; else the system daemon's `/run/ipcd/ipcd.sock`.
pub fn default_socket_path() -> PathBuf {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let env = std::env::var(paths::SOCKET_ENV).ok();
    let xdg = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    paths::client_socket(uid, env.as_deref(), xdg.as_deref(), Path::exists)
}
