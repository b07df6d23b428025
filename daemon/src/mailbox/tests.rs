//! A mailbox's behaviour seen from outside: timers on tokio's paused clock (delays, TTLs
//! and leases end exactly when due, with no real waiting), hand-over past waiters that
//! never match, peeks, and the bounds on headers and dead letters.

use bytes::Bytes;
use ipc_proto::{Credentials, HeaderBox, Headers};
use tokio::sync::mpsc;

use super::*;
use crate::quota::Accounts;

fn mailbox(
    default_ttl: Option<Duration>,
    dead_letter: Option<&str>,
) -> (Arc<Mailbox>, mpsc::Receiver<DeadLetter>) {
    let (tx, rx) = mpsc::channel(16);
    let settings = Settings {
        ownership: Ownership {
            owner_uid: 1,
            owner_gid: 1,
            creator_uid: 1,
            creator_gid: 1,
            mode: 0o600,
        },
        fsync: None,
        limits: Limits {
            max_msgs: 10,
            max_bytes: 1000,
            max_msg_size: 100,
        },
        max_deliveries: 0,
        dead_letter: dead_letter.map(|n| MailboxName::new(n).unwrap()),
        default_ttl,
        drop_oldest: false,
    };
    let charge = Accounts::default()
        .account(1)
        .force(crate::quota::Resource::Mailboxes, 1);
    let name = MailboxName::new("timed").unwrap();
    (Mailbox::new(name, 1, settings, charge, None, tx), rx)
}

/// The origin of the messages these tests send: a sender charged to nobody.
fn sender() -> Arc<Origin> {
    let creds = Credentials {
        pid: 1,
        uid: 1,
        gid: 1,
    };
    Arc::new(Origin::new(creds, None, 0))
}

fn send(m: &Arc<Mailbox>, payload: &str, ttl: Option<u64>, delay: Option<u64>) -> u64 {
    let incoming = Incoming {
        memfd: None,
        mtype: 1,
        origin: sender(),
        headers: HeaderBox::default(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        charge: None,
        ttl: ttl.map(Duration::from_secs),
        delay: delay.map(Duration::from_secs),
    };
    match m.send(incoming, Wait::NoWait) {
        Pending::Ready(Ok(SentId(id))) => id,
        other => panic!("{other:?}"),
    }
}

fn take(m: &Arc<Mailbox>) -> Option<Envelope> {
    let taker = Taker {
        peek: false,
        pid: 1,
        lease: None,
        max_size: None,
    };
    match m.recv(Selector::Any, taker, Wait::NoWait) {
        Pending::Ready(Ok(e)) => Some(e),
        Pending::Ready(Err(RecvError::Empty(_))) => None,
        other => panic!("{other:?}"),
    }
}

/// Lets the timekeeper run after the clock moved.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_delayed_message_is_invisible_until_its_time() {
    let (m, _) = mailbox(None, None);
    send(&m, "later", None, Some(10));
    send(&m, "now", None, None);
    assert_eq!(&take(&m).unwrap().payload(), b"now");
    assert!(take(&m).is_none());
    assert_eq!(m.info().delayed, 1);
    tokio::time::advance(Duration::from_secs(9)).await;
    settle().await;
    assert!(take(&m).is_none(), "one second early");
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(&take(&m).unwrap().payload(), b"later");
    assert_eq!(m.info().delayed, 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_receiver_gets_a_delayed_message_when_it_shows() {
    let (m, _) = mailbox(None, None);
    let taker = Taker {
        peek: false,
        pid: 1,
        lease: None,
        max_size: None,
    };
    let Pending::Wait(waiter) = m.recv(Selector::Any, taker, Wait::Forever) else {
        panic!("nothing to take yet");
    };
    send(&m, "later", None, Some(60));
    // The paused clock jumps to the next timer once everything is idle.
    let got = waiter.wait().await.unwrap();
    assert_eq!(&got.payload(), b"later");
}

#[tokio::test(start_paused = true)]
async fn expired_messages_are_never_delivered_and_go_to_the_dead_letter_mailbox() {
    let (m, mut dead) = mailbox(None, Some("dead"));
    send(&m, "short", Some(5), None);
    send(&m, "long", Some(50), None);
    tokio::time::advance(Duration::from_secs(6)).await;
    settle().await;
    let letter = dead.try_recv().expect("the expired one was dead-lettered");
    assert_eq!(&letter.envelope.payload(), b"short");
    assert_eq!(letter.to.as_str(), "dead");
    // What is left of its TTL goes along: none.
    assert_eq!(letter.envelope.into_incoming().ttl, Some(Duration::ZERO));
    assert_eq!(&take(&m).unwrap().payload(), b"long");
    let info = m.info();
    assert_eq!((info.expired, info.dead_lettered, info.messages), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_receive_never_takes_an_expired_message_even_before_the_timekeeper_runs() {
    let (m, _) = mailbox(None, None);
    send(&m, "stale", Some(5), None);
    send(&m, "fresh", None, None);
    // Stop the timekeeper from running: the receive below comes first.
    m.lock().deadlines.clear();
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(&take(&m).unwrap().payload(), b"fresh");
    assert_eq!(m.info().expired, 1);
}

#[tokio::test(start_paused = true)]
async fn the_default_ttl_applies_and_expiry_without_a_dead_letter_mailbox_drops() {
    let (m, _) = mailbox(Some(Duration::from_secs(3)), None);
    send(&m, "a", None, None);
    send(&m, "b", Some(100), None);
    tokio::time::advance(Duration::from_secs(4)).await;
    settle().await;
    assert_eq!(&take(&m).unwrap().payload(), b"b");
    let info = m.info();
    assert_eq!(
        (info.expired, info.dropped, info.default_ttl_ms),
        (1, 1, 3000)
    );
}

#[tokio::test(start_paused = true)]
async fn a_leased_message_that_expires_meanwhile_is_not_redelivered() {
    let (m, _) = mailbox(None, None);
    let id = send(&m, "job", Some(10), None);
    let taker = Taker {
        peek: false,
        pid: 1,
        lease: Some(LeaseTerms {
            timeout: Duration::from_secs(60),
            uid: 1,
            book: None,
        }),
        max_size: None,
    };
    let Pending::Ready(Ok(_)) = m.recv(Selector::Any, taker, Wait::NoWait) else {
        panic!("leased");
    };
    tokio::time::advance(Duration::from_secs(20)).await;
    settle().await;
    assert_eq!(m.info().unacked, 1, "a lease keeps it while it runs");
    m.nack(id, 1).unwrap();
    assert!(take(&m).is_none());
    assert_eq!(m.info().expired, 1);
}

#[tokio::test(start_paused = true)]
async fn a_received_message_takes_its_ttl_timer_with_it() {
    let (m, _) = mailbox(None, None);
    for i in 0..5 {
        send(&m, &format!("m{i}"), Some(3600), None);
    }
    assert_eq!(m.info().timers, 5);
    for _ in 0..5 {
        take(&m).expect("queued");
    }
    assert_eq!(m.info().timers, 0, "no timer outlives its message");
    // Leased, it has a lease timer only; back in the queue, its TTL timer again.
    let id = send(&m, "leased", Some(3600), None);
    let taker = Taker {
        peek: false,
        pid: 1,
        lease: Some(LeaseTerms {
            timeout: Duration::from_secs(60),
            uid: 1,
            book: None,
        }),
        max_size: None,
    };
    let Pending::Ready(Ok(_)) = m.recv(Selector::Any, taker, Wait::NoWait) else {
        panic!("leased");
    };
    assert_eq!(m.info().timers, 1);
    m.nack(id, 1).unwrap();
    assert_eq!(m.info().timers, 1);
    m.purge();
    assert_eq!(m.info().timers, 0);
}

#[tokio::test(start_paused = true)]
async fn a_peek_copy_whose_waiter_is_gone_is_dropped_not_put_back() {
    let (m, _) = mailbox(None, None);
    let peeker = Taker {
        peek: true,
        pid: 1,
        lease: None,
        max_size: None,
    };
    let Pending::Wait(waiter) = m.recv(Selector::Any, peeker, Wait::Forever) else {
        panic!("nothing to peek at yet");
    };
    send(&m, "only", None, None);
    // The peeker was handed a copy, but goes away without reading it.
    drop(waiter);
    assert_eq!(m.info().messages, 1, "the original stays, and only it");
    assert_eq!(&take(&m).unwrap().payload(), b"only");
    assert!(take(&m).is_none());
}

#[tokio::test(start_paused = true)]
async fn headers_count_against_max_bytes() {
    let (m, _) = mailbox(None, None);
    let incoming = |content_type: usize| Incoming {
        memfd: None,
        mtype: 1,
        origin: sender(),
        headers: Headers {
            content_type: Some("x".repeat(content_type)),
            ..Headers::default()
        }
        .into(),
        payload: Bytes::new(),
        charge: None,
        ttl: None,
        delay: None,
    };
    // max_bytes is 1000: two 400-byte header sets fit, a third does not.
    for _ in 0..2 {
        assert!(matches!(
            m.send(incoming(400), Wait::NoWait),
            Pending::Ready(Ok(_))
        ));
    }
    assert_eq!(m.info().bytes, 800);
    let Pending::Ready(Err(full)) = m.send(incoming(400), Wait::NoWait) else {
        panic!("over max_bytes");
    };
    let SendError::Full(full) = full else {
        panic!("{full:?}");
    };
    assert_eq!((full.messages, full.bytes, full.max_bytes), (2, 800, 1000));
    let Pending::Ready(Err(large)) = m.send(incoming(1001), Wait::NoWait) else {
        panic!("larger than max_bytes");
    };
    assert!(
        matches!(
            large,
            SendError::TooLarge {
                size: 1001,
                max: 1000,
                bound: SizeBound::MaxBytes,
                ..
            }
        ),
        "{large:?}"
    );
    assert_eq!(
        large.to_string(),
        "message of 1001 bytes (payload and headers) exceeds max_bytes of 1000 bytes of \
         mailbox timed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_send_goes_to_the_oldest_matching_receiver_past_any_number_that_never_match() {
    let (m, _) = mailbox(None, None);
    let taker = || Taker {
        peek: false,
        pid: 1,
        lease: None,
        max_size: None,
    };
    let mut parked = Vec::new();
    for t in 2..1000 {
        let Pending::Wait(w) = m.recv(Selector::Type(t), taker(), Wait::Forever) else {
            panic!("waits");
        };
        parked.push(w);
    }
    let Pending::Wait(first) = m.recv(Selector::AtMost(1), taker(), Wait::Forever) else {
        panic!("waits");
    };
    let Pending::Wait(second) = m.recv(Selector::Any, taker(), Wait::Forever) else {
        panic!("waits");
    };
    assert_eq!(m.info().waiting_receivers, 1000);
    send(&m, "one", None, None);
    send(&m, "two", None, None);
    assert_eq!(&first.wait().await.unwrap().payload(), b"one");
    assert_eq!(&second.wait().await.unwrap().payload(), b"two");
    drop(parked);
    assert_eq!(m.info().waiting_receivers, 0);
    assert_eq!(m.info().messages, 0);
}

#[tokio::test(start_paused = true)]
async fn dead_letters_past_the_backlog_are_dropped_and_counted() {
    // The test mailbox's dead-letter channel holds 16, and nothing delivers them.
    let (m, mut dead) = mailbox(None, Some("dead"));
    m.update(|s| s.limits.max_msgs = 100);
    for i in 0..20 {
        send(&m, &format!("m{i}"), Some(1), None);
    }
    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await;
    let info = m.info();
    assert_eq!(
        (info.expired, info.dead_lettered, info.dropped),
        (20, 16, 4)
    );
    let mut waiting = 0;
    while dead.try_recv().is_ok() {
        waiting += 1;
    }
    assert_eq!(waiting, 16);
}

fn taker_of_at_most(max_size: u64) -> Taker {
    Taker {
        peek: false,
        pid: 1,
        lease: None,
        max_size: Some(max_size),
    }
}

/// A receive that takes at most so many bytes leaves a larger message where it is, as
/// `msgrcv` without `MSG_NOERROR` does; a waiting one too small for a message that
/// comes is woken with the refusal, and the message goes on to the next receiver.
#[tokio::test]
async fn a_message_too_big_for_a_receive_stays_for_the_next() {
    let (m, _) = mailbox(None, None);
    send(&m, "twelve bytes", None, None);
    match m.recv(Selector::Any, taker_of_at_most(4), Wait::NoWait) {
        Pending::Ready(Err(RecvError::TooBig {
            size: 12, max: 4, ..
        })) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(m.info().messages, 1, "it stayed");
    assert_eq!(&take(&m).unwrap().payload(), b"twelve bytes");

    let Pending::Wait(small) = m.recv(Selector::Any, taker_of_at_most(4), Wait::Forever) else {
        panic!("nothing to take yet");
    };
    let Pending::Wait(large) = m.recv(Selector::Any, taker_of_at_most(64), Wait::Forever) else {
        panic!("nothing to take yet");
    };
    send(&m, "twelve bytes", None, None);
    assert!(matches!(small.wait().await, Err(RecvError::TooBig { .. })));
    assert_eq!(&large.wait().await.unwrap().payload(), b"twelve bytes");
    assert_eq!(m.info().messages, 0);
}

/// Parks a plain receive of any message on `m`, its results to `completions`.
fn park(m: &Arc<Mailbox>, completions: &Arc<Completions>) -> Parked {
    let taker = Taker {
        peek: false,
        pid: 1,
        lease: None,
        max_size: None,
    };
    match m.recv_or_park(Selector::Any, taker, Wait::Forever, Some(completions)) {
        Received::Parked(parked) => parked,
        Received::Pending(other) => panic!("not parked: {other:?}"),
    }
}

#[tokio::test]
async fn parked_receives_are_handed_messages_in_order() {
    let (m, _) = mailbox(None, None);
    let completions = Arc::new(Completions::default());
    let (first, second) = (park(&m, &completions), park(&m, &completions));
    assert_eq!(m.waiting_receivers(), 2);
    send(&m, "a", None, None);
    send(&m, "b", None, None);
    let (slot, result) = completions.try_next().expect("handed");
    assert_eq!((slot, result.unwrap().payload()), (first.slot, &b"a"[..]));
    let (slot, result) = completions.try_next().expect("handed");
    assert_eq!((slot, result.unwrap().payload()), (second.slot, &b"b"[..]));
    assert!(completions.try_next().is_none());
    assert_eq!(m.waiting_receivers(), 0);
}

#[tokio::test]
async fn a_withdrawn_parked_receive_gives_back_what_it_was_handed() {
    let (m, _) = mailbox(None, None);
    let completions = Arc::new(Completions::default());
    // Never handed anything: it only leaves.
    park(&m, &completions).withdraw(&completions);
    assert_eq!(m.waiting_receivers(), 0);
    // Handed a message before it is withdrawn (refused for the quota, say): the message
    // goes back, and is taken as if it had never left.
    let parked = park(&m, &completions);
    send(&m, "kept", None, None);
    parked.withdraw(&completions);
    assert!(completions.try_next().is_none(), "its result went with it");
    let back = take(&m).expect("back in the mailbox");
    assert_eq!(back.payload(), b"kept");
    assert_eq!(back.deliveries(), 1, "delivered once, not twice");
}

#[tokio::test]
async fn a_closed_connection_loses_none_of_its_parked_receives_messages() {
    let (m, _) = mailbox(None, None);
    let completions = Arc::new(Completions::default());
    let handed = park(&m, &completions);
    let waiting = park(&m, &completions);
    send(&m, "handed", None, None);
    // The connection closes: what was handed and not answered goes back, and a message
    // sent after the close is not handed to a receive that stays registered a moment
    // longer.
    let mut unanswered = completions.close();
    assert_eq!(unanswered.len(), 1);
    send(&m, "after", None, None);
    let (slot, result) = unanswered.pop_front().expect("one");
    assert_eq!(slot, handed.slot);
    handed.give_back(result.expect("a message"));
    waiting.leave();
    assert_eq!(m.waiting_receivers(), 0);
    assert!(completions.try_next().is_none());
    assert_eq!(take(&m).unwrap().payload(), b"handed");
    assert_eq!(take(&m).unwrap().payload(), b"after");
    assert!(take(&m).is_none());
}

#[tokio::test]
async fn a_cancelled_parked_receive_is_told_so_and_a_timed_one_does_not_park() {
    let (m, _) = mailbox(None, None);
    let completions = Arc::new(Completions::default());
    let parked = park(&m, &completions);
    parked.cancel(Cancelled { request: 7 });
    let (slot, result) = completions.try_next().expect("a result");
    assert_eq!(slot, parked.slot);
    assert!(
        matches!(result, Err(RecvError::Interrupted(_))),
        "{result:?}"
    );
    // A message sent now is queued, not handed to the cancelled receive.
    send(&m, "queued", None, None);
    assert!(completions.try_next().is_none());
    assert_eq!(m.info().messages, 1);
    // A receive with a time limit keeps its future, which owns its timer; so does a peek.
    for (peek, wait) in [(false, Wait::TimeoutMs(1000)), (true, Wait::Forever)] {
        let taker = Taker {
            peek,
            pid: 1,
            lease: None,
            max_size: None,
        };
        let selector = Selector::Type(9);
        match m.recv_or_park(selector, taker, wait, Some(&completions)) {
            Received::Pending(Pending::Wait(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

/// `stat`'s last receive is read from the coarse clock, yet is never before the send of
/// the message received, nor before the receive that came before it.
#[tokio::test]
async fn the_last_receive_is_never_before_its_send_or_the_one_before() {
    let (m, _dead) = mailbox(None, None);
    let mut last = Timestamp(0);
    for round in 0..200 {
        send(&m, "x", None, None);
        let sent_at = take(&m).expect("queued").sent_at();
        let at = m.info().last_recv.expect("a receive").at;
        assert!(
            at >= sent_at,
            "round {round}: received {at:?} before sent {sent_at:?}"
        );
        assert!(
            at >= last,
            "round {round}: {at:?} before the last receive {last:?}"
        );
        assert!(
            at.0 <= Timestamp::now().0,
            "round {round}: a receive in the future"
        );
        last = at;
    }
}

/// Senders read the clock before they take the lock, so one can get in behind a sender
/// that read it later: the times stamped still follow the ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_times_follow_ids_whatever_the_senders_race() {
    let (m, _dead) = mailbox(None, None);
    {
        // Room for everything the senders send.
        let mut state = m.lock();
        state.settings.limits.max_msgs = 10_000;
        state.settings.limits.max_bytes = 1 << 20;
    }
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let m = m.clone();
            tokio::task::spawn_blocking(move || {
                for _ in 0..1000 {
                    send(&m, "x", None, None);
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    let mut last = (0, Timestamp(0));
    while let Some(e) = take(&m) {
        assert!(e.id() > last.0, "ids in order");
        assert!(
            e.sent_at() >= last.1,
            "message {} stamped {:?}, before message {} at {:?}",
            e.id(),
            e.sent_at(),
            last.0,
            last.1
        );
        last = (e.id(), e.sent_at());
    }
    assert_eq!(m.info().messages, 0);
    assert!(last.0 >= 4000, "every message was taken");
}

/// A time a little behind the one before it (a race for the lock, a coarse clock's tick)
/// is held back to it; a clock set back further is followed, not held back for as long.
#[test]
fn a_time_a_little_behind_is_held_back_and_a_clock_set_back_is_followed() {
    let t = |ms: u64| Timestamp(ms * 1_000_000);
    assert_eq!(not_before(t(10_000), None), t(10_000));
    assert_eq!(not_before(t(10_000), Some(t(9_000))), t(10_000));
    assert_eq!(not_before(t(10_000), Some(t(10_005))), t(10_005));
    assert_eq!(not_before(t(10_000), Some(t(3_610_000))), t(10_000));
}
