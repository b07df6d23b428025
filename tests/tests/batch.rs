//! Batched sends and receives: one request for many messages, each message still
//! checked, charged and ordered as a send or receive of its own would be.

use bytes::Bytes;
use ipc_client::{
    BlockingClient, CreateOptions, Error, ErrorCode, LimitChanges, RecvOptions, SendOptions, Wait,
};
use ipc_proto::{MAX_BATCH, MailboxName, RecvBatchRequest, Request, Response, Selector};
use ipcd_tests::TestDaemon;

/// Limits of a mailbox that holds at most `n` messages.
fn at_most(n: u64) -> LimitChanges {
    LimitChanges {
        max_msgs: Some(n),
        ..LimitChanges::default()
    }
}

fn payloads(range: std::ops::Range<u32>) -> Vec<Bytes> {
    range.map(|n| Bytes::from(format!("m{n}"))).collect()
}

fn create(client: &mut BlockingClient, name: &str, limits: LimitChanges) {
    let options = CreateOptions {
        limits,
        ..CreateOptions::default()
    };
    client.create(name, &options).unwrap();
}

/// What became of one message of a batch, as the kind of error (by its exit code) or
/// `None` for sent.
fn outcome(result: &ipc_client::Result<u64>) -> Option<String> {
    result.as_ref().err().map(|e| match e {
        Error::BadData(_) => "bad data".to_owned(),
        Error::WouldBlock(_) => "would block".to_owned(),
        other => format!("{other:?}"),
    })
}

fn texts(messages: &[ipc_proto::Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

fn nowait() -> RecvOptions {
    RecvOptions::default().wait(Wait::NoWait)
}

#[test]
fn a_batch_goes_in_in_order_and_comes_out_in_order() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    assert!(c.welcome().features.iter().any(|f| f == "batch"));
    create(&mut c, "b", LimitChanges::default());
    let outcomes = c
        .send_batch("b", payloads(0..100), &SendOptions::default())
        .unwrap();
    let ids: Vec<u64> = outcomes.into_iter().map(Result::unwrap).collect();
    assert_eq!(ids.len(), 100);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(c.stat("b").unwrap().messages, 100);
    let got = c.recv_batch("b", MAX_BATCH, &nowait()).unwrap();
    let expected: Vec<String> = (0..100).map(|n| format!("m{n}")).collect();
    assert_eq!(texts(&got), expected);
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    let info = c.stat("b").unwrap();
    assert_eq!((info.messages, info.total_received), (0, 100));
    // None left: a batch that may not wait says so, as a receive does.
    let empty = c.recv_batch("b", 10, &nowait()).unwrap_err();
    assert!(matches!(empty, Error::WouldBlock(_)), "{empty:?}");
}

#[test]
fn a_batch_stops_at_the_first_message_refused_and_keeps_what_went_before() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    create(
        &mut c,
        "small",
        LimitChanges {
            max_msg_size: Some(4),
            ..LimitChanges::default()
        },
    );
    let batch = ["ok1", "ok2", "far too large", "ok3"].map(Bytes::from);
    let outcomes = c
        .send_batch("small", batch, &SendOptions::default())
        .unwrap();
    assert_eq!(
        outcomes.len(),
        3,
        "the message after the refusal is not tried"
    );
    assert_eq!(outcome(&outcomes[0]), None);
    assert_eq!(outcome(&outcomes[1]), None);
    assert!(
        matches!(&outcomes[2], Err(Error::BadData(message))
            if message.contains("payload of 13 bytes exceeds max_msg_size of 4")),
        "{outcomes:?}"
    );
    let got = c.recv_batch("small", 10, &nowait()).unwrap();
    assert_eq!(texts(&got), ["ok1", "ok2"]);

    // A message checked on its own (a type below 1) stops it the same way.
    let mut bad = SendOptions::mtype(0);
    bad.wait = Wait::NoWait;
    let outcomes = c.send_batch("small", payloads(0..3), &bad).unwrap();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcome(&outcomes[0]).as_deref(), Some("bad data"));
}

#[test]
fn every_message_of_a_batch_is_charged_on_its_own() {
    let mut config = ipcd::Config::default();
    let overhead = config.message_overhead;
    let payload = 100u64;
    // Room for three messages and a little more, not four.
    let quota = 3 * (payload + overhead) + 10;
    config.quota_overrides.insert(
        ipcd_tests::uid(),
        ipcd::config::Quota {
            queued_bytes: quota,
            ..ipcd::config::Quota::UNLIMITED
        },
    );
    let daemon = TestDaemon::start_with(config);
    let mut c = daemon.client();
    create(&mut c, "q", LimitChanges::default());
    let batch = vec![Bytes::from(vec![b'x'; payload as usize]); 10];
    let outcomes = c.send_batch("q", batch, &SendOptions::default()).unwrap();
    assert_eq!(outcomes.len(), 4);
    assert!(outcomes[..3].iter().all(|o| o.is_ok()), "{outcomes:?}");
    assert!(
        matches!(&outcomes[3], Err(Error::QuotaExceeded(_))),
        "{outcomes:?}"
    );
    assert_eq!(c.stat("q").unwrap().messages, 3);
    // Taking them gives the charges back: the next batch fits again.
    assert_eq!(c.recv_batch("q", 10, &nowait()).unwrap().len(), 3);
    let outcomes = c
        .send_batch("q", payloads(0..3), &SendOptions::default())
        .unwrap();
    assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
}

#[test]
fn a_batch_into_a_full_mailbox_waits_for_room_in_order() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    create(&mut c, "full", at_most(2));

    // Without waiting, it stops where the mailbox is full.
    let nowait_send = SendOptions::default().wait(Wait::NoWait);
    let outcomes = c.send_batch("full", payloads(0..5), &nowait_send).unwrap();
    assert_eq!(outcomes.len(), 3);
    assert_eq!(outcome(&outcomes[2]).as_deref(), Some("would block"));
    c.purge("full").unwrap();

    // Waiting, the messages that do not fit queue behind one another, and a receiver
    // that drains the mailbox gets every one in order.
    let socket = daemon.socket().to_path_buf();
    let sender = std::thread::spawn(move || {
        let mut s = BlockingClient::connect_to(&socket).unwrap();
        s.send_batch("full", payloads(0..6), &SendOptions::default())
            .unwrap()
    });
    daemon.wait_for_senders("full", 4);
    let mut got = Vec::new();
    while got.len() < 6 {
        let wait = RecvOptions::default();
        got.extend(texts(&c.recv_batch("full", 6, &wait).unwrap()));
    }
    let expected: Vec<String> = (0..6).map(|n| format!("m{n}")).collect();
    assert_eq!(got, expected);
    let outcomes = sender.join().unwrap();
    assert_eq!(outcomes.len(), 6);
    assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
}

#[test]
fn a_cancelled_batch_withdraws_only_the_messages_still_waiting() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    create(&mut c, "full", at_most(2));
    let options = SendOptions::default();
    let batch = Request::SendBatch(ipc_proto::SendBatchRequest {
        mailbox: MailboxName::new("full").unwrap(),
        wait: Wait::Forever,
        messages: payloads(0..5)
            .into_iter()
            .map(|payload| ipc_proto::BatchMessage {
                mtype: options.mtype,
                headers: Default::default(),
                ttl_ms: None,
                delay_ms: None,
                payload,
            })
            .collect(),
    });
    let id = c.submit(&batch).unwrap();
    c.flush().unwrap();
    daemon.wait_for_senders("full", 3);
    let cancel = c.submit(&Request::Cancel { request_id: id }).unwrap();
    match c.wait_for(id).unwrap() {
        Response::SentBatch(outcomes) => {
            assert_eq!(outcomes.len(), 5);
            assert!(outcomes[..2].iter().all(Result::is_ok), "{outcomes:?}");
            assert!(
                outcomes[2..]
                    .iter()
                    .all(|o| o.as_ref().is_err_and(|e| e.code == ErrorCode::Cancelled)),
                "{outcomes:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.wait_for(cancel).unwrap(), Response::Ok);
    let info = c.stat("full").unwrap();
    assert_eq!((info.messages, info.waiting_senders), (2, 0));
}

#[test]
fn waiting_batch_receives_of_one_connection_are_served_in_order() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    create(&mut c, "w", LimitChanges::default());
    // Two batched receives wait on one connection; a batch of 50 comes. Each waiting
    // receive gets one message, the older receive the older message, and what is left
    // is there for the next receive: nothing out of order.
    let socket = daemon.socket().to_path_buf();
    let receiver = std::thread::spawn(move || {
        let mut r = BlockingClient::connect_to(&socket).unwrap();
        let batch = |max| {
            Request::RecvBatch(RecvBatchRequest {
                mailbox: MailboxName::new("w").unwrap(),
                selector: Selector::Any,
                max,
                wait: Wait::Forever,
                lease: None,
            })
        };
        let first = r.submit(&batch(100)).unwrap();
        let second = r.submit(&batch(100)).unwrap();
        r.flush().unwrap();
        let mut all = Vec::new();
        for id in [first, second] {
            let got = ipc_client::reply::messages(r.wait_for(id).unwrap()).unwrap();
            assert_eq!(
                got.len(),
                1,
                "a receive that waited brings its first message alone"
            );
            all.extend(texts(&got));
        }
        while all.len() < 50 {
            all.extend(texts(&r.recv_batch("w", 100, &nowait()).unwrap()));
        }
        all
    });
    daemon.wait_for_receivers("w", 2);
    let outcomes = c
        .send_batch("w", payloads(0..50), &SendOptions::default())
        .unwrap();
    assert!(outcomes.iter().all(|o| o.is_ok()));
    let expected: Vec<String> = (0..50).map(|n| format!("m{n}")).collect();
    assert_eq!(receiver.join().unwrap(), expected);
}

#[test]
fn a_batch_reply_holds_at_most_max_batch_bytes_beyond_its_first_message() {
    let config = ipcd::Config {
        max_batch_bytes: 1000,
        ..ipcd::Config::default()
    };
    let daemon = TestDaemon::start_with(config);
    let mut c = daemon.client();
    create(&mut c, "big", LimitChanges::default());
    let batch = vec![Bytes::from(vec![b'y'; 300]); 10];
    c.send_batch("big", batch, &SendOptions::default()).unwrap();
    // The first, then three more (900 bytes): a fourth would pass 1000.
    assert_eq!(c.recv_batch("big", 10, &nowait()).unwrap().len(), 4);
    assert_eq!(c.stat("big").unwrap().messages, 6);
    // The bound never holds back the first message, however large.
    let large = Bytes::from(vec![b'z'; 5000]);
    c.purge("big").unwrap();
    c.send("big", large, &SendOptions::default()).unwrap();
    assert_eq!(c.recv_batch("big", 10, &nowait()).unwrap().len(), 1);
}

#[test]
fn batch_sizes_outside_one_to_max_batch_are_refused() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    create(&mut c, "n", LimitChanges::default());
    let refused = |e: Error| match e {
        Error::BadData(message) => message,
        other => panic!("{other:?}"),
    };
    let none = c.send_batch("n", Vec::new(), &SendOptions::default());
    assert!(refused(none.unwrap_err()).contains("1 to 1024 messages, not 0"));
    let many = payloads(0..MAX_BATCH + 1);
    let too_many = c.send_batch("n", many, &SendOptions::default());
    assert!(refused(too_many.unwrap_err()).contains("not 1025"));
    let zero = c.recv_batch("n", 0, &nowait());
    assert!(refused(zero.unwrap_err()).contains("not 0"));
    assert_eq!(c.stat("n").unwrap().messages, 0);
    // A peek takes nothing, so it cannot be batched; the library says so before asking.
    let peek = c.recv_batch("n", 5, &RecvOptions::default().peek());
    assert!(matches!(peek, Err(Error::BadData(_))), "{peek:?}");
    // The connection is still good.
    c.send("n", "after", &SendOptions::default()).unwrap();
}

#[test]
fn leased_batches_are_settled_by_id_and_come_back_when_their_connection_closes() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    create(&mut c, "l", LimitChanges::default());
    c.send_batch("l", payloads(0..10), &SendOptions::default())
        .unwrap();
    let leased = RecvOptions::default()
        .wait(Wait::NoWait)
        .lease(std::time::Duration::from_secs(600), false);
    {
        let mut holder = daemon.client();
        let got = holder.recv_batch("l", 4, &leased).unwrap();
        assert_eq!(texts(&got), ["m0", "m1", "m2", "m3"]);
        assert_eq!(c.stat("l").unwrap().unacked, 4);
        for m in &got[..2] {
            holder.ack("l", m.id).unwrap();
        }
    }
    // The holder's connection closed with two leases open: those two come back first,
    // marked as redelivered.
    while c.stat("l").unwrap().unacked > 0 {
        std::thread::yield_now();
    }
    let again = c.recv_batch("l", 10, &nowait()).unwrap();
    assert_eq!(&texts(&again)[..2], ["m2", "m3"]);
    assert!(again[..2].iter().all(|m| m.redelivered));
    assert_eq!(
        texts(&again[2..]),
        (4..10).map(|n| format!("m{n}")).collect::<Vec<_>>()
    );
}

#[test]
fn a_batch_receive_selects_as_msgrcv_does() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    create(&mut c, "t", LimitChanges::default());
    for mtype in [3, 1, 2, 1, 3] {
        c.send("t", format!("type{mtype}"), &SendOptions::mtype(mtype))
            .unwrap();
    }
    let request = |selector| {
        Request::RecvBatch(RecvBatchRequest {
            mailbox: MailboxName::new("t").unwrap(),
            selector,
            max: 10,
            wait: Wait::NoWait,
            lease: None,
        })
    };
    let take = |c: &mut BlockingClient, selector| {
        let reply = c.request(&request(selector)).unwrap();
        texts(&ipc_client::reply::messages(reply).unwrap())
    };
    assert_eq!(take(&mut c, Selector::Type(1)), ["type1", "type1"]);
    assert_eq!(take(&mut c, Selector::Except(3)), ["type2"]);
    assert_eq!(take(&mut c, Selector::AtMost(5)), ["type3", "type3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_client_sends_and_receives_batches_too() {
    let daemon = TestDaemon::start();
    let client = ipc_client::Client::connect_to(daemon.socket())
        .await
        .unwrap();
    client.create("a", &CreateOptions::default()).await.unwrap();
    let outcomes = client
        .send_batch("a", payloads(0..300), &SendOptions::default())
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 300);
    assert!(outcomes.iter().all(Result::is_ok));
    let mut got = Vec::new();
    while got.len() < 300 {
        got.extend(texts(
            &client.recv_batch("a", 128, &nowait()).await.unwrap(),
        ));
    }
    let expected: Vec<String> = (0..300).map(|n| format!("m{n}")).collect();
    assert_eq!(got, expected);
}

#[test]
fn a_waiting_batch_times_out_as_a_whole_and_never_out_of_order() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    create(&mut c, "one", at_most(1));
    c.send("one", "first", &SendOptions::default()).unwrap();
    let socket = daemon.socket().to_path_buf();
    let sender = std::thread::spawn(move || {
        let mut s = BlockingClient::connect_to(&socket).unwrap();
        let options = SendOptions::default().wait(Wait::TimeoutMs(300));
        s.send_batch("one", payloads(0..3), &options).unwrap()
    });
    daemon.wait_for_senders("one", 3);
    // As soon as any message of the batch gives up, make room: no later message of the
    // batch may take it, because they all gave up at once.
    while c.stat("one").unwrap().waiting_senders == 3 {
        std::thread::yield_now();
    }
    assert_eq!(
        texts(&c.recv_batch("one", 10, &nowait()).unwrap()),
        ["first"]
    );
    let outcomes = sender.join().unwrap();
    assert_eq!(outcomes.len(), 3);
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Err(Error::TimedOut(_)))),
        "{outcomes:?}"
    );
    let info = c.stat("one").unwrap();
    assert_eq!((info.messages, info.waiting_senders), (0, 0));
}
