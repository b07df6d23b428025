//! The socket's directory: made with its final mode whatever the umask, and refused —
//! in one line naming the path and why — when it is a symbolic link, not a directory,
//! someone else's, or writable by others without the sticky bit. Checked through
//! `ipcd::bind`, which the binary uses, and once through the binary itself.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use ipcd_tests::{binary, is_root, tempdir, uid};

/// Held by every test here: one of them sets the process's umask, which the others'
/// directories would otherwise be made with.
static UMASK: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    UMASK.lock().unwrap_or_else(|e| e.into_inner())
}

fn mkdir(path: &Path, mode: u32) {
    std::fs::create_dir(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The one-line refusal `ipcd::bind` gives for a socket in `dir`, which must name `dir`.
fn refusal(dir: &Path) -> String {
    let socket = dir.join("ipcd.sock");
    let error = match ipcd::bind(&socket) {
        Ok(_) => panic!("{} was accepted", dir.display()),
        Err(e) => format!("{e:#}"),
    };
    assert!(!error.contains('\n'), "one line: {error}");
    assert!(
        error.contains(&dir.display().to_string()),
        "names the directory: {error}"
    );
    assert!(
        std::fs::symlink_metadata(&socket).is_err(),
        "nothing was bound: {error}"
    );
    error
}

#[test]
fn a_missing_directory_is_made_with_its_final_mode() {
    let _lock = lock();
    let dir = tempdir();
    let socket_dir = dir.path().join("run").join("ipcd");
    // SAFETY: umask only sets the process's file-creation mask.
    let old = unsafe { libc::umask(0o077) };
    let bound = ipcd::bind(&socket_dir.join("ipcd.sock"));
    // SAFETY: as above, putting the mask back.
    unsafe { libc::umask(old) };
    let (_listener, _guard) = bound.expect("bind in a fresh directory");
    let meta = std::fs::symlink_metadata(&socket_dir).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.uid(), uid());
    assert_eq!(
        meta.mode() & 0o7777,
        0o755,
        "the final mode, not the umask's"
    );
    // Made again by the next daemon, the directory is used as it is.
    drop((_listener, _guard));
    let again = ipcd::bind(&socket_dir.join("ipcd.sock"));
    assert!(again.is_ok(), "{:?}", again.err());
}

#[test]
fn a_symbolic_link_is_refused() {
    let _lock = lock();
    let dir = tempdir();
    let real = dir.path().join("real");
    mkdir(&real, 0o755);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let error = refusal(&link);
    assert!(error.contains("symbolic link"), "{error}");
    assert!(
        std::fs::read_dir(&real).unwrap().next().is_none(),
        "nothing was made where the link points"
    );
    // A dangling link is refused too, rather than followed to make its target.
    let dangling = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
    let error = refusal(&dangling);
    assert!(error.contains("symbolic link"), "{error}");
    assert!(!dir.path().join("nowhere").exists());
}

#[test]
fn a_file_in_its_place_is_refused() {
    let _lock = lock();
    let dir = tempdir();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let error = refusal(&file);
    assert!(error.contains("not a directory"), "{error}");
}

#[test]
fn a_directory_others_may_write_to_is_refused_unless_sticky() {
    let _lock = lock();
    let dir = tempdir();
    for mode in [0o775, 0o757, 0o777] {
        let open = dir.path().join(format!("open-{mode:o}"));
        mkdir(&open, mode);
        let error = refusal(&open);
        assert!(
            error.contains("others may write to it") && error.contains(&format!("{mode:04o}")),
            "{error}"
        );
    }
    // The sticky bit keeps others from removing or replacing what is not theirs.
    let sticky = dir.path().join("sticky");
    mkdir(&sticky, 0o1777);
    let bound = ipcd::bind(&sticky.join("ipcd.sock"));
    assert!(bound.is_ok(), "{:?}", bound.err());
}

#[test]
fn a_directory_of_another_uid_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to give a directory to another uid");
        return;
    }
    let _lock = lock();
    let dir = tempdir();
    let theirs = dir.path().join("theirs");
    mkdir(&theirs, 0o755);
    std::os::unix::fs::chown(&theirs, Some(62031), Some(62031)).unwrap();
    let error = refusal(&theirs);
    assert!(error.contains("belongs to uid 62031"), "{error}");
}

#[test]
fn the_daemon_reports_a_refusal_in_one_line() {
    let _lock = lock();
    let dir = tempdir();
    let real = dir.path().join("real");
    mkdir(&real, 0o755);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let child = Command::new(binary("ipcd"))
        .arg("--socket")
        .arg(link.join("ipcd.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("IPCD_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ipcd");
    let pid = i32::try_from(child.id()).unwrap();
    let (done, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    // A daemon that accepted the link would serve for ever: stop it and say so.
    let out = match exited.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(out) => out.expect("wait for ipcd"),
        Err(_) => {
            // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("ipcd started on a socket directory that is a symbolic link");
        }
    };
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains(&format!(
            "refusing to use socket directory {}: it is a symbolic link",
            link.display()
        )),
        "{stderr}"
    );
}
