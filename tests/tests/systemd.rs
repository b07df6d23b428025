//! The daemon as systemd runs it (SPEC §8): socket activation through
//! `systemd-socket-activate`, the `sd_notify` messages a `Type=notify` service sends
//! (checked on a notify socket of our own), and SIGHUP reloads of the configuration
//! file — a changed limit, a newly declared mailbox, and a broken file that is refused.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use ipc_client::{BlockingClient, CreateOptions, RecvOptions, SendOptions, Wait};
use ipcd_tests::{DaemonProcess, tempdir};

/// A notify socket like systemd's: collects the daemon's datagrams.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl NotifySocket {
    fn new(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Self { socket, path }
    }

    /// The next datagram that contains `wanted`, skipping others.
    fn expect(&self, wanted: &str) -> String {
        let mut buf = vec![0; 4096];
        loop {
            let n = match self.socket.recv(&mut buf) {
                Ok(n) => n,
                // A receive with a timeout is not restarted after a signal handler runs,
                // nor after the process is stopped and continued (signal(7)): it fails
                // with EINTR, which says nothing of the daemon.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("no {wanted:?} from the daemon: {e}"),
            };
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            if message
                .lines()
                .any(|l| l == wanted || l.starts_with(wanted))
            {
                return message;
            }
        }
    }
}

#[test]
fn notify_says_ready_status_watchdog_reloading_and_stopping() {
    let dir = tempdir();
    let notify = NotifySocket::new(dir.path());
    let config = dir.path().join("ipcd.toml");
    std::fs::write(&config, "").unwrap();
    let mut daemon = DaemonProcess::spawn_custom(
        dir.path(),
        &[],
        &["--config", config.to_str().unwrap()],
        &[
            ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let ready = notify.expect("READY=1");
    assert!(ready.contains("STATUS="), "{ready}");
    assert!(ready.contains("0 mailboxes"), "{ready}");
    // Pings at half the watchdog timeout, with the figures.
    notify.expect("WATCHDOG=1");
    daemon
        .client()
        .create("seen", &CreateOptions::default())
        .unwrap();
    let status = (0..100)
        .map(|_| notify.expect("STATUS="))
        .find(|s| s.contains("1 mailboxes"))
        .expect("the status follows the daemon");
    assert!(status.contains("connections"), "{status}");

    daemon.signal(libc::SIGHUP);
    let reloading = notify.expect("RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    notify.expect("READY=1");

    daemon.signal(libc::SIGTERM);
    notify.expect("STOPPING=1");
    let status = daemon.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(status.success());
}

#[test]
fn socket_activation_serves_the_inherited_socket_and_leaves_it_in_place() {
    if std::process::Command::new("systemd-socket-activate")
        .arg("--help")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-socket-activate is not installed");
        return;
    }
    let dir = tempdir();
    let socket = dir.path().join("activated.sock");
    // systemd-socket-activate binds, says so, and execs ipcd (same pid) on the first
    // connection, as a socket unit would.
    let mut child = std::process::Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg(ipcd_tests::binary("ipcd"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("IPCD_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let wait_for = |needle: &str| {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} line"))
    };
    wait_for("Listening on");
    let mut client = BlockingClient::connect_to(&socket).unwrap();
    let line = wait_for("socket from systemd");
    assert!(line.contains("activated.sock"), "{line}");
    client.create("a", &CreateOptions::default()).unwrap();
    client
        .send("a", "through systemd", &SendOptions::default())
        .unwrap();
    let m = client
        .recv("a", &RecvOptions::default().wait(Wait::NoWait))
        .unwrap();
    assert_eq!(&m.payload[..], b"through systemd");
    drop(client);
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(child.wait().unwrap().success());
    // The socket belongs to systemd (the socket unit): the daemon must not unlink it.
    assert!(socket.exists(), "the activated socket was left in place");
}

#[test]
fn sighup_applies_a_new_configuration_and_refuses_a_broken_one() {
    let dir = tempdir();
    let config = dir.path().join("ipcd.toml");
    std::fs::write(
        &config,
        "[[mailbox]]\nname = \"declared\"\nmode = \"0644\"\nmax_msgs = 5\n",
    )
    .unwrap();
    let daemon = DaemonProcess::spawn_custom(
        dir.path(),
        &[],
        &["--config", config.to_str().unwrap()],
        &[],
    );
    let mut client = daemon.client();
    let info = client.stat("declared").unwrap();
    assert_eq!((info.mode, info.max_msgs), (0o644, 5));
    // A connection that stays open across the reloads.
    client
        .send("declared", "kept", &SendOptions::default())
        .unwrap();
    // SIGUSR1: a summary in the log.
    daemon.signal(libc::SIGUSR1);
    let summary = daemon
        .wait_for_log("state: ", Duration::from_secs(60))
        .expect("SIGUSR1 logs the daemon's state");
    assert!(summary.contains("1 mailboxes, 1 messages"), "{summary}");

    std::fs::write(
        &config,
        "[defaults]\nmax_msgs = 77\n\
         [[mailbox]]\nname = \"declared\"\nmode = \"0640\"\nmax_msgs = 9\n\
         [[mailbox]]\nname = \"added\"\ndurable = true\n",
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    daemon
        .wait_for_log("configuration reloaded", Duration::from_secs(60))
        .expect("reloaded");
    let info = client.stat("declared").unwrap();
    assert_eq!((info.mode, info.max_msgs, info.messages), (0o640, 9, 1));
    let added = client.stat("added").unwrap();
    assert!(added.durable);
    client.create("fresh", &CreateOptions::default()).unwrap();
    assert_eq!(
        client.stat("fresh").unwrap().max_msgs,
        77,
        "new defaults apply"
    );

    // A broken file is refused with a line naming it; the old configuration stays.
    std::fs::write(&config, "[defaults]\nmax_msgs = 1\nmistake = 2\n").unwrap();
    daemon.signal(libc::SIGHUP);
    let line = daemon
        .wait_for_log("new configuration refused", Duration::from_secs(60))
        .expect("the broken file is reported");
    assert!(line.contains("ipcd.toml:3"), "{line}");
    assert!(line.contains("mistake"), "{line}");
    client.create("after", &CreateOptions::default()).unwrap();
    assert_eq!(client.stat("after").unwrap().max_msgs, 77);
    let kept = client
        .recv("declared", &RecvOptions::default().wait(Wait::NoWait))
        .unwrap();
    assert_eq!(
        &kept.payload[..],
        b"kept",
        "the connection survived both reloads"
    );
}

#[test]
fn check_config_names_the_bad_line() {
    let dir = tempdir();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[quota]\nconnections = 5\n").unwrap();
    let ipcd = ipcd_tests::binary("ipcd");
    let out = std::process::Command::new(&ipcd)
        .arg("--check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[quota]\nconnections = 5\nconections = 6\n").unwrap();
    let out = std::process::Command::new(&ipcd)
        .arg("--check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml:3: "), "{stderr}");
    assert!(stderr.contains("conections"), "{stderr}");
    // The example that ships is valid.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/ipcd.toml");
    let out = std::process::Command::new(&ipcd)
        .arg("--check-config")
        .arg(&example)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}
