//! The real `ipcd` binary under signals: SIGTERM and SIGINT stop it cleanly, answering
//! waiters, removing the socket file and exiting 0; a stale socket file is reused.

use std::time::Duration;

use ipc_client::{BlockingClient, CreateOptions, Error, RecvOptions};
use ipcd_tests::DaemonProcess;

fn stops_cleanly_on(signal: i32) {
    let mut daemon = DaemonProcess::spawn();
    let mut client = BlockingClient::connect_to(&daemon.socket).unwrap();
    client.create("q", &CreateOptions::default()).unwrap();
    let socket = daemon.socket.clone();
    let waiter = std::thread::spawn(move || {
        let mut c = BlockingClient::connect_to(socket).unwrap();
        c.recv("q", &RecvOptions::default())
    });
    while client.stat("q").unwrap().waiting_receivers == 0 {
        std::thread::yield_now();
    }
    daemon.signal(signal);
    let err = waiter.join().unwrap().unwrap_err();
    assert!(matches!(err, Error::ShuttingDown(_)), "{err:?}");
    let status = daemon
        .wait_exit(Duration::from_secs(60))
        .expect("ipcd exits after the signal");
    assert!(status.success(), "exit status {status:?}");
    assert!(!daemon.socket.exists(), "socket file removed");
}

#[test]
fn sigterm_answers_waiters_removes_socket_and_exits_zero() {
    stops_cleanly_on(libc::SIGTERM);
}

#[test]
fn sigint_does_the_same() {
    stops_cleanly_on(libc::SIGINT);
}

#[test]
fn stale_socket_of_a_dead_daemon_is_reused() {
    let mut first = DaemonProcess::spawn();
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(60)).expect("killed");
    assert!(
        first.socket.exists(),
        "kill -9 leaves the socket file behind"
    );
    // A new daemon on the same path: bind it through the library's own rule.
    let (listener, guard) = ipcd::bind(&first.socket).expect("stale socket is replaced");
    drop(listener);
    drop(guard);
    assert!(!first.socket.exists());
}

/// A connection whose client never pauses — it always has requests waiting to be read —
/// still sees the daemon shut down: the signal is polled after the connection's reads,
/// so this checks that a busy connection gets to it. The daemon would drop a connection
/// that had not closed only after its `shutdown_timeout`, here an hour.
#[test]
fn sigterm_stops_a_daemon_whose_client_never_pauses() {
    use ipc_proto::{RecvRequest, Request, Response, Selector, SendRequest, Wait};

    let dir = ipcd_tests::tempdir();
    let mut daemon =
        DaemonProcess::spawn_with_config(dir.path(), "[connections]\nshutdown_timeout = \"1h\"\n");
    let mut client = BlockingClient::connect_to(&daemon.socket).unwrap();
    client.create("busy", &CreateOptions::default()).unwrap();
    let (started, busy_now) = std::sync::mpsc::channel();
    let socket = daemon.socket.clone();
    let busy = std::thread::spawn(move || {
        let mut c = BlockingClient::connect_to(socket).unwrap();
        let mailbox: ipc_proto::MailboxName = "busy".parse().unwrap();
        let send = Request::Send(SendRequest {
            mailbox: mailbox.clone(),
            mtype: 1,
            headers: Default::default(),
            wait: Wait::Forever,
            ttl_ms: None,
            delay_ms: None,
            payload: bytes::Bytes::from_static(b"again"),
        });
        let recv = Request::Recv(RecvRequest {
            mailbox,
            selector: Selector::Any,
            wait: Wait::Forever,
            peek: false,
            lease: None,
            max_size: None,
        });
        // Pairs of a send and a receive, 32 requests out, refilled at 16: the daemon
        // always has more of this connection's requests to read.
        let (mut out, mut answered) = (0u64, 0u64);
        loop {
            if out <= 16 {
                while out < 32 {
                    c.submit(&send).unwrap();
                    c.submit(&recv).unwrap();
                    out += 2;
                }
            }
            match c.next_reply() {
                Ok((_, Response::Error(e))) => return (answered, e.message),
                Ok(_) => {
                    out -= 1;
                    answered += 1;
                    if answered == 1000 {
                        started.send(()).unwrap();
                    }
                }
                Err(e) => return (answered, e.to_string()),
            }
        }
    });
    busy_now
        .recv()
        .expect("the busy client got its first thousand replies");
    daemon.signal(libc::SIGTERM);
    let (answered, why) = busy.join().unwrap();
    assert!(answered >= 1000, "{answered} replies before: {why}");
    let status = daemon
        .wait_exit(Duration::from_secs(60))
        .expect("ipcd exits after the signal, its busy client notwithstanding");
    assert!(status.success(), "exit status {status:?}");
    // Closed by the connection itself, not dropped when the shutdown's time ran out.
    let dropped = daemon.log_lines("had not closed");
    assert!(dropped.is_empty(), "{dropped:?}");
}
