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
