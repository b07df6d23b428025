//! Giving memory back to the system after a burst. The allocator keeps what the daemon
//! frees for reuse: after a burst of 1.75 million queued 64-byte messages drained, glibc
//! still held 837 MB resident with nothing queued. `malloc_trim(0)` returns the free
//! pages (to 8 MB, in about 40 ms of one thread's time), so a task watches what the
//! daemon holds for its clients — every uid's `queued_bytes`: messages and replies
//! waiting — and trims once that has fallen by `trim_after` bytes from its high-water
//! mark and stopped falling: after the drain, not during it, so that one trim gives back
//! all of it. A daemon that holds steady, or grows, never trims. The high-water mark is
//! not only what the looks saw: each uid's account keeps the most it held between two
//! looks (`Accounts::take_peak`), so a burst that fills and drains within one second is
//! given back too.

use std::sync::Weak;
use std::time::{Duration, Instant};

use crate::broker::Broker;
use crate::quota::Resource;

/// How often the daemon looks at what it holds.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Watches `broker` for as long as it lives, trimming after each fall.
pub async fn trim_after_bursts(broker: Weak<Broker>) {
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = Watch::default();
    loop {
        ticks.tick().await;
        let Some(broker) = broker.upgrade() else {
            return;
        };
        let threshold = broker.config().trim_after;
        let held = held(&broker);
        // What was held at any moment since the last look: a burst that came and went
        // within one look was never held at a look.
        let peak = broker.accounts().take_peak(Resource::QueuedBytes);
        drop(broker);
        if !watch.should_trim(held, peak, threshold) {
            continue;
        }
        let (from, to) = (watch.peak, held);
        watch.trimmed(held);
        // Off the runtime's threads: a trim walks the allocator's free lists.
        let trim = tokio::task::spawn_blocking(move || {
            let before = resident_bytes();
            let started = Instant::now();
            trim();
            (before, resident_bytes(), started.elapsed())
        });
        if let Ok((before, after, took)) = trim.await {
            tracing::info!(
                "gave memory back to the system after what the daemon holds fell from {} to \
                 {}: resident {} -> {} in {took:.0?}",
                mib(from),
                mib(to),
                before.map_or_else(|| "?".to_owned(), mib),
                after.map_or_else(|| "?".to_owned(), mib),
            );
        }
    }
}

/// Bytes the daemon holds for every uid: queued messages (payload, headers and their
/// overhead) and replies waiting to be written.
fn held(broker: &Broker) -> u64 {
    let accounts = broker.accounts().all();
    accounts.iter().map(|a| a.used(Resource::QueuedBytes)).sum()
}

/// The high-water mark of what the daemon holds since the last trim, and what it held
/// at the last look.
#[derive(Debug, Default)]
struct Watch {
    peak: u64,
    last: u64,
}

impl Watch {
    /// Whether `held` is at least `threshold` below the high-water mark (raising the mark
    /// first to `peak`, the most held since the last look, if that is above it) and has
    /// stopped falling: no lower than at the last look, and not well below `peak` (a
    /// drain under way since the last look). A threshold of 0 never trims.
    fn should_trim(&mut self, held: u64, peak: u64, threshold: u64) -> bool {
        self.peak = self.peak.max(peak).max(held);
        let falling = held < self.last || peak.saturating_sub(held) >= threshold / 2;
        self.last = held;
        threshold > 0 && !falling && self.peak - held >= threshold
    }

    /// Starts over from what is held now.
    fn trimmed(&mut self, held: u64) {
        self.peak = held;
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases free memory and is safe to call at any time
    // from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators give memory back by themselves, or offer no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// This process's resident memory, from `/proc/self/statm`.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_a_fall_of_the_threshold_has_stopped_and_never_while_growing() {
        let mut watch = Watch::default();
        let mib = 1 << 20;
        // Looks that see what is held now, with no higher peak between them.
        let mut look = |held: u64, threshold: u64| watch.should_trim(held, held, threshold);
        for held in [0, 10 * mib, 100 * mib, 200 * mib, 200 * mib] {
            assert!(!look(held, 32 * mib), "growing to {held}");
        }
        assert!(!look(180 * mib, 32 * mib), "a small fall");
        assert!(!look(160 * mib, 32 * mib), "still falling");
        assert!(look(160 * mib, 32 * mib), "stopped");
        watch.trimmed(160 * mib);
        let mut look = |held: u64, threshold: u64| watch.should_trim(held, held, threshold);
        assert!(!look(150 * mib, 32 * mib), "measured from the trim");
        assert!(!look(0, 32 * mib));
        assert!(look(5 * mib, 32 * mib), "rising again after the fall");
        watch.trimmed(5 * mib);
        let mut look = |held: u64, threshold: u64| watch.should_trim(held, held, threshold);
        assert!(!look(5 * mib, 32 * mib), "given back already");
        assert!(!look(0, 0), "0 turns trimming off");
    }

    #[test]
    fn a_burst_between_two_looks_is_trimmed_after() {
        let mut watch = Watch::default();
        let mib = 1 << 20;
        assert!(!watch.should_trim(0, 0, 32 * mib));
        // Filled to 200 MiB and drained again between this look and the last: it may
        // still be draining, so the trim waits for a look with no fall since the last.
        assert!(!watch.should_trim(0, 200 * mib, 32 * mib), "just drained");
        assert!(watch.should_trim(0, 0, 32 * mib), "drained and still");
        watch.trimmed(0);
        assert!(!watch.should_trim(0, 0, 32 * mib), "once");
        // Half drained by this look: not yet, whatever it held at the last.
        assert!(!watch.should_trim(100 * mib, 100 * mib, 32 * mib));
        assert!(
            !watch.should_trim(100 * mib, 300 * mib, 32 * mib),
            "draining"
        );
        assert!(
            !watch.should_trim(40 * mib, 100 * mib, 32 * mib),
            "still draining"
        );
        assert!(watch.should_trim(40 * mib, 41 * mib, 32 * mib), "settled");
        watch.trimmed(40 * mib);
        // A burst under the threshold is left alone.
        assert!(!watch.should_trim(40 * mib, 60 * mib, 32 * mib));
        assert!(!watch.should_trim(40 * mib, 40 * mib, 32 * mib));
    }
}
