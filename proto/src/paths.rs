//! Where the socket is (SPEC §5). Daemon and clients must agree, so the rule lives here,
//! as pure functions of the environment values they are given.

use std::path::{Path, PathBuf};

/// Environment variable that names the socket, for daemon and clients alike.
pub const SOCKET_ENV: &str = "IPCD_SOCKET";

/// The system daemon's socket.
pub const SYSTEM_SOCKET: &str = "/run/ipcd/ipcd.sock";

/// The per-user daemon's socket below `$XDG_RUNTIME_DIR`.
pub fn user_socket(xdg_runtime_dir: &Path) -> PathBuf {
    xdg_runtime_dir.join("ipcd").join("ipcd.sock")
}

/// The socket a client tries, in SPEC §5's order: `$IPCD_SOCKET`; else, for a non-root
/// user whose per-user daemon socket exists, that one; else the system socket.
pub fn client_socket(
    uid: u32,
    socket_env: Option<&str>,
    xdg_runtime_dir: Option<&Path>,
    exists: impl Fn(&Path) -> bool,
) -> PathBuf {
    if let Some(path) = socket_env.filter(|s| !s.is_empty()) {
        return PathBuf::from(path);
    }
    if uid != 0 {
        if let Some(user) = xdg_runtime_dir.map(user_socket) {
            if exists(&user) {
                return user;
            }
        }
    }
    PathBuf::from(SYSTEM_SOCKET)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_order() {
        let xdg = Path::new("/run/user/1000");
        assert_eq!(
            client_socket(1000, Some("/x.sock"), Some(xdg), |_| true),
            PathBuf::from("/x.sock")
        );
        assert_eq!(
            client_socket(1000, None, Some(xdg), |_| true),
            PathBuf::from("/run/user/1000/ipcd/ipcd.sock")
        );
        assert_eq!(
            client_socket(1000, None, Some(xdg), |_| false),
            PathBuf::from(SYSTEM_SOCKET)
        );
        assert_eq!(
            client_socket(0, None, Some(xdg), |_| true),
            PathBuf::from(SYSTEM_SOCKET)
        );
    }
}
