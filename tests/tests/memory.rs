//! What the daemon gives back: after a burst drains, the memory it held goes back to the
//! system, not just to the allocator.

use std::time::Duration;

use bytes::Bytes;
use ipc_client::{CreateOptions, LimitChanges, RecvOptions, SendOptions, Wait};
use ipcd_tests::DaemonProcess;

#[test]
fn memory_held_for_a_burst_goes_back_to_the_system_once_it_drains() {
    // The burst is past the default `queued_bytes` quota of a uid that is not root.
    let dir = ipcd_tests::tempdir();
    let daemon = DaemonProcess::spawn_with_config(
        dir.path(),
        &format!("[quota]\nqueued_bytes = {}\n", 1u64 << 30),
    );
    let mut c = daemon.client();
    let options = CreateOptions {
        limits: LimitChanges {
            max_msgs: Some(1_000_000),
            max_bytes: Some(1 << 30),
            max_msg_size: None,
        },
        ..CreateOptions::default()
    };
    c.create("burst", &options).unwrap();
    let idle = daemon.rss_kib();
    // 250,000 messages of 256 bytes, about 80 MB resident (64 MB of it payload): far
    // past the default `trim_after` of 32 MiB.
    let batch = vec![Bytes::from(vec![b'b'; 256]); 1000];
    for _ in 0..250 {
        let outcomes = c
            .send_batch("burst", batch.clone(), &SendOptions::default())
            .unwrap();
        assert!(outcomes.iter().all(Result::is_ok));
    }
    let full = daemon.rss_kib();
    assert!(full > idle + 60 * 1024, "idle {idle} KiB, full {full} KiB");
    let nowait = RecvOptions::default().wait(Wait::NoWait);
    let mut taken = 0;
    while taken < 250_000 {
        taken += c.recv_batch("burst", 1024, &nowait).unwrap().len();
    }
    assert_eq!(c.stat("burst").unwrap().messages, 0);
    let line = daemon
        .wait_for_log("gave memory back to the system", Duration::from_secs(60))
        .expect("the daemon gives memory back after the burst");
    let after = daemon.rss_kib();
    assert!(
        after < full / 4,
        "resident {after} KiB after the burst drained, {full} KiB full, {idle} KiB idle: {line}"
    );
}
