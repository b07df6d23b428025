//! The kill -9 loop (SPEC §6), checked like Jepsen's total-queue: producers send to a
//! durable mailbox and acking consumers take from it while the real daemon is killed
//! with SIGKILL and restarted, again and again. At the end the queue is drained and:
//! - lost = 0: every send the daemon acknowledged was received;
//! - unexpected = 0: nothing was received that was never sent;
//! - duplicates only as at-least-once allows (a message whose ack the kill swallowed).
//!
//! `IPCD_KILL_CYCLES` sets the number of cycles (default 50).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ipc_client::{BlockingClient, CreateOptions, Error, Fsync, RecvOptions, SendOptions, Wait};
use ipcd_tests::DaemonProcess;

const PRODUCERS: usize = 2;
const CONSUMERS: usize = 2;

/// What every producer and consumer saw, across all cycles.
#[derive(Default)]
struct History {
    /// Sends whose outcome is unknown or failed: may or may not be in the queue.
    attempted: HashSet<String>,
    /// Sends the daemon answered with an id.
    acknowledged: HashSet<String>,
    /// Every receipt, with repeats.
    received: Vec<String>,
}

/// Progress of the current cycle, for the killer to wait on (no sleeping).
#[derive(Default)]
struct Progress {
    acked_this_cycle: Mutex<u64>,
    changed: Condvar,
}

fn produce(
    socket: &std::path::Path,
    who: usize,
    next: &AtomicU64,
    history: &Mutex<History>,
    progress: &Progress,
) {
    let Ok(mut client) = BlockingClient::connect_to(socket) else {
        return;
    };
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let payload = format!("p{who}-{n}");
        history.lock().unwrap().attempted.insert(payload.clone());
        match client.send("q", payload.clone(), &SendOptions::default()) {
            Ok(_) => {
                history.lock().unwrap().acknowledged.insert(payload);
                *progress.acked_this_cycle.lock().unwrap() += 1;
                progress.changed.notify_all();
            }
            // The daemon died under us: the outcome of this send is unknown.
            Err(_) => return,
        }
    }
}

fn consume(socket: &std::path::Path, history: &Mutex<History>, stop: &AtomicBool) {
    let Ok(mut client) = BlockingClient::connect_to(socket) else {
        return;
    };
    let wait = RecvOptions::default().wait(Wait::timeout(Duration::from_millis(200)));
    while !stop.load(Ordering::Relaxed) {
        match client.recv_leased("q", &wait, Duration::from_secs(30)) {
            Ok(delivery) => {
                let payload = String::from_utf8(delivery.payload.to_vec()).unwrap();
                history.lock().unwrap().received.push(payload);
                if delivery.ack().is_err() {
                    return;
                }
            }
            Err(e) if e.is_would_block() => continue,
            Err(_) => return,
        }
    }
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_message() {
    let cycles: u64 = std::env::var("IPCD_KILL_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let dir = ipcd_tests::tempdir();
    let history = Arc::new(Mutex::new(History::default()));
    let next: Vec<Arc<AtomicU64>> = (0..PRODUCERS)
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    // A deterministic spread of kill points: after 1 to 40 acknowledged sends.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for cycle in 0..cycles {
        let mut daemon = DaemonProcess::spawn_in(dir.path(), &[]);
        if cycle == 0 {
            let options = CreateOptions {
                durable: true,
                fsync: Some(Fsync::Always),
                ..CreateOptions::default()
            };
            daemon.client().create("q", &options).unwrap();
        }
        let progress = Arc::new(Progress::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for (who, next) in next.iter().enumerate() {
            let (socket, next, history, progress) = (
                daemon.socket.clone(),
                next.clone(),
                history.clone(),
                progress.clone(),
            );
            workers.push(std::thread::spawn(move || {
                produce(&socket, who, &next, &history, &progress)
            }));
        }
        for _ in 0..CONSUMERS {
            let (socket, history, stop) = (daemon.socket.clone(), history.clone(), stop.clone());
            workers.push(std::thread::spawn(move || {
                consume(&socket, &history, &stop)
            }));
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_after = 1 + seed % 40;
        {
            let mut acked = progress.acked_this_cycle.lock().unwrap();
            while *acked < kill_after {
                acked = progress.changed.wait(acked).unwrap();
            }
        }
        daemon.kill();
        stop.store(true, Ordering::Relaxed);
        for worker in workers {
            worker.join().unwrap();
        }
    }

    // Drain what is left with a clean daemon.
    let daemon = DaemonProcess::spawn_in(dir.path(), &[]);
    let mut client = daemon.client();
    loop {
        match client.recv_leased(
            "q",
            &RecvOptions::default().wait(Wait::NoWait),
            Duration::from_secs(30),
        ) {
            Ok(delivery) => {
                let payload = String::from_utf8(delivery.payload.to_vec()).unwrap();
                history.lock().unwrap().received.push(payload);
                delivery.ack().unwrap();
            }
            Err(Error::WouldBlock(_)) => break,
            Err(e) => panic!("draining: {e}"),
        }
    }
    let info = client.stat("q").unwrap();
    assert_eq!((info.messages, info.unacked), (0, 0), "drained");

    let history = history.lock().unwrap();
    let mut counts: HashMap<&str, u32> = HashMap::new();
    for r in &history.received {
        *counts.entry(r.as_str()).or_default() += 1;
    }
    let lost: Vec<_> = history
        .acknowledged
        .iter()
        .filter(|p| !counts.contains_key(p.as_str()))
        .collect();
    let unexpected: Vec<_> = counts
        .keys()
        .filter(|p| !history.attempted.contains(**p))
        .collect();
    let duplicated = counts.values().filter(|&&n| n > 1).count();
    eprintln!(
        "{cycles} kill -9 cycles: {} sends acknowledged, {} attempted, {} receipts of {} \
         distinct messages; lost {}, unexpected {}, duplicated {duplicated}",
        history.acknowledged.len(),
        history.attempted.len(),
        history.received.len(),
        counts.len(),
        lost.len(),
        unexpected.len()
    );
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(
        unexpected.is_empty(),
        "received but never sent: {unexpected:?}"
    );
    assert!(
        history.acknowledged.len() as u64 >= cycles,
        "the load did run"
    );
}

#[test]
fn a_full_disk_fails_sends_clearly_and_harms_nothing_stored() {
    if !ipcd_tests::is_root() {
        eprintln!("skipped: needs root to mount a small tmpfs");
        return;
    }
    let dir = ipcd_tests::tempdir();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());

    let mut daemon = DaemonProcess::spawn_in(&small, &[]);
    let mut c = daemon.client();
    let options = CreateOptions {
        durable: true,
        ..CreateOptions::default()
    };
    c.create("q", &options).unwrap();
    c.create("memory", &CreateOptions::default()).unwrap();
    let chunk = vec![b'x'; 16 * 1024];
    let mut stored = Vec::new();
    let error = loop {
        match c.send("q", chunk.clone(), &SendOptions::default()) {
            Ok(id) => stored.push(id),
            Err(e) => break e,
        }
        assert!(stored.len() < 1000, "the disk never filled");
    };
    let text = error.to_string();
    assert!(text.contains("No space left on device"), "{text}");
    assert!(text.contains("unharmed"), "{text}");
    assert_eq!(error.exit_code(), 1);
    // Everyone else is still served, and what was stored is intact.
    c.send("memory", "fine", &SendOptions::default()).unwrap();
    let first = c
        .recv("q", &RecvOptions::default().wait(Wait::NoWait))
        .unwrap();
    assert_eq!((first.id, first.payload.len()), (stored[0], chunk.len()));
    // A crash and a restart on the full disk lose nothing that was acknowledged. (The
    // receive above could not record its removal on the full disk, so that message
    // may come back: at least once.)
    daemon.kill();
    let daemon = DaemonProcess::spawn_in(&small, &[]);
    let mut c = daemon.client();
    let mut after = Vec::new();
    while let Ok(m) = c.recv("q", &RecvOptions::default().wait(Wait::NoWait)) {
        assert_eq!(&m.payload[..], &chunk[..]);
        after.push(m.id);
    }
    let start = usize::from(after.first() != Some(&stored[0]));
    assert_eq!(&after[..], &stored[start..], "in order, none lost");
}
