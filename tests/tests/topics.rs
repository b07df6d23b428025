//! Topics and request/reply end to end (SPEC §4): publishing fans a copy out to every
//! mailbox bound to a matching pattern and reports each refusal without failing; a
//! subscription is a private mailbox that lives as long as its connection and drops its
//! oldest messages rather than hold up a publisher; a call's reply is taken only by the
//! call it names. Checked through `ipc-client` and the real `ipcctl`. The cases that
//! need a second uid run only as root; without it they say so and pass without checking.

use std::process::{Child, Output, Stdio};
use std::time::Duration;

use ipc_client::{
    BlockingClient, Client, CreateOptions, Error, LimitChanges, Message, PublishReport,
    RecvOptions, SendOptions, Topic, TopicPattern, Wait,
};
use ipcd_tests::{Principal, TestDaemon, connect_as, ipcctl, is_root, uid};
use serde_json::Value;

/// A uid that publishes or binds where it has no rights (root-only tests).
const STRANGER: Principal<'static> = Principal::new(64001, 64001);

fn code(out: &Output) -> i32 {
    out.status.code().expect("ipcctl exited normally")
}

fn nowait() -> RecvOptions {
    RecvOptions::default().wait(Wait::NoWait)
}

/// A mailbox bound to each of `patterns`.
fn bound(client: &mut BlockingClient, name: &str, patterns: &[&str]) {
    client.create(name, &CreateOptions::default()).unwrap();
    for pattern in patterns {
        client.bind(name, pattern).unwrap();
    }
}

/// Everything queued in `name`, oldest first, taken without waiting.
fn drain(client: &mut BlockingClient, name: &str) -> Vec<Message> {
    let mut taken = Vec::new();
    loop {
        match client.recv(name, &nowait()) {
            Ok(message) => taken.push(message),
            Err(Error::WouldBlock(_)) => return taken,
            Err(e) => panic!("receive from {name}: {e}"),
        }
    }
}

fn topic_of(message: &Message) -> &str {
    message.headers.topic.as_ref().map_or("", Topic::as_str)
}

fn text(message: &Message) -> &str {
    std::str::from_utf8(&message.payload).expect("a UTF-8 payload")
}

/// Asks the daemon until `done` holds, with a short pause between round trips while
/// another process gets going; panics naming `what` if it never does.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..12_000 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("never reached: {what}");
}

/// The private mailboxes of subscriptions that exist now.
fn watch_mailboxes(client: &mut BlockingClient) -> Vec<String> {
    client
        .list()
        .unwrap()
        .into_iter()
        .map(|m| m.name.as_str().to_owned())
        .filter(|name| name.starts_with("_ipcd/watch/"))
        .collect()
}

/// This uid's `(mailboxes, queued_bytes)` as `status` shows them.
fn usage(client: &mut BlockingClient) -> (u64, u64) {
    let me = uid();
    let status = client.status().unwrap();
    status
        .users
        .iter()
        .find(|u| u.uid == me)
        .map_or((0, 0), |u| (u.mailboxes, u.queued_bytes))
}

/// A mailbox created with these permission bits.
fn with_mode(mode: u32) -> CreateOptions {
    CreateOptions {
        mode: Some(mode),
        ..CreateOptions::default()
    }
}

fn max_msgs(n: u64) -> CreateOptions {
    CreateOptions {
        limits: LimitChanges {
            max_msgs: Some(n),
            ..LimitChanges::default()
        },
        ..CreateOptions::default()
    }
}

// ---------------------------------------------------------------------------------
// Fan-out and matching

#[test]
fn publish_counts_a_full_mailbox_and_delivers_to_the_rest() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    for name in ["n1", "n2", "n3"] {
        bound(&mut c, name, &["news.>"]);
    }
    c.create("full", &max_msgs(1)).unwrap();
    c.bind("full", "news.>").unwrap();
    c.send("full", "already here", &SendOptions::default())
        .unwrap();

    let report = c
        .publish("news.today", "extra", &SendOptions::default())
        .expect("a refusal by one mailbox does not fail the publish");
    assert_eq!(
        report,
        PublishReport {
            delivered: 3,
            full: 1,
            denied: 0,
            failed: 0
        }
    );
    for name in ["n1", "n2", "n3"] {
        let copies = drain(&mut c, name);
        assert_eq!(copies.len(), 1, "{name}: {copies:?}");
        assert_eq!(text(&copies[0]), "extra");
        assert_eq!(topic_of(&copies[0]), "news.today");
    }
    let kept = drain(&mut c, "full");
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(text(&kept[0]), "already here");
    assert_eq!(kept[0].headers.topic, None);

    // ipcctl says the same, as JSON, and exits 0: a partial refusal is no failure.
    c.send("full", "again", &SendOptions::default()).unwrap();
    let out = ipcctl(daemon.socket())
        .args(["publish", "news.today", "once more", "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report,
        serde_json::json!({
            "topic": "news.today", "delivered": 3, "full": 1, "denied": 0, "failed": 0
        })
    );
}

#[test]
fn publish_counts_denied_and_full_mailboxes_apart() {
    if !is_root() {
        eprintln!("skipped: needs root to publish as another uid");
        return;
    }
    let daemon = TestDaemon::start();
    let mut root = daemon.client();
    let open = with_mode(0o666);
    for name in ["n1", "n2", "n3"] {
        root.create(name, &open).unwrap();
        root.bind(name, "news.>").unwrap();
    }
    // Full: open to everyone, but holding its one message.
    root.create(
        "full",
        &CreateOptions {
            mode: Some(0o666),
            ..max_msgs(1)
        },
    )
    .unwrap();
    root.bind("full", "news.>").unwrap();
    root.send("full", "already here", &SendOptions::default())
        .unwrap();
    // Denied: root's, 0600, so the publisher has no `w` on it.
    root.create("private", &CreateOptions::default()).unwrap();
    root.bind("private", "news.>").unwrap();

    let socket = daemon.socket().to_path_buf();
    let mut publisher = connect_as(STRANGER, move || {
        BlockingClient::connect_to(&socket).unwrap()
    });
    let report = publisher
        .publish("news.today", "extra", &SendOptions::default())
        .expect("refusals are counted, not fatal");
    assert_eq!(
        report,
        PublishReport {
            delivered: 3,
            full: 1,
            denied: 1,
            failed: 0
        }
    );
    for name in ["n1", "n2", "n3"] {
        let copies = drain(&mut root, name);
        assert_eq!(copies.len(), 1, "{name}: {copies:?}");
        assert_eq!(topic_of(&copies[0]), "news.today");
        assert_eq!(
            copies[0].sender.uid, STRANGER.uid,
            "stamped with the publisher"
        );
    }
    assert_eq!(drain(&mut root, "full").len(), 1);
    assert!(drain(&mut root, "private").is_empty());
}

#[test]
fn wildcards_choose_the_mailboxes_and_each_gets_one_copy() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    bound(&mut c, "one_segment", &["a.*"]);
    bound(&mut c, "rest", &["a.>"]);
    bound(&mut c, "exact", &["a.b"]);
    bound(&mut c, "twice", &["a.*", "a.b"]);
    bound(&mut c, "elsewhere", &["x.y"]);

    let delivered = |c: &mut BlockingClient, topic: &str| {
        c.publish(topic, topic.to_owned(), &SendOptions::default())
            .unwrap()
            .delivered
    };
    assert_eq!(delivered(&mut c, "a.b"), 4);
    assert_eq!(delivered(&mut c, "a.c"), 3);
    assert_eq!(delivered(&mut c, "a.b.c"), 1);
    // `>` needs at least one segment, `*` exactly one.
    assert_eq!(delivered(&mut c, "a"), 0);
    assert_eq!(delivered(&mut c, "b.c"), 0);

    let topics = |c: &mut BlockingClient, name: &str| -> Vec<String> {
        drain(c, name)
            .iter()
            .map(|m| {
                assert_eq!(text(m), topic_of(m));
                topic_of(m).to_owned()
            })
            .collect()
    };
    assert_eq!(topics(&mut c, "one_segment"), ["a.b", "a.c"]);
    assert_eq!(topics(&mut c, "rest"), ["a.b", "a.c", "a.b.c"]);
    assert_eq!(topics(&mut c, "exact"), ["a.b"]);
    assert_eq!(topics(&mut c, "twice"), ["a.b", "a.c"]);
    assert!(topics(&mut c, "elsewhere").is_empty());
}

#[test]
fn a_sender_cannot_set_a_topic_itself() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    c.create("q", &CreateOptions::default()).unwrap();
    let mut forged = SendOptions::default();
    forged.headers.topic = Some(Topic::new("news.today").unwrap());
    let sent = c.send("q", "x", &forged);
    assert!(matches!(sent, Err(Error::BadData(_))), "{sent:?}");
    assert_eq!(c.stat("q").unwrap().messages, 0);
}

// ---------------------------------------------------------------------------------
// Bindings

#[test]
fn binding_another_uids_mailbox_is_denied() {
    if !is_root() {
        eprintln!("skipped: needs root to bind as another uid");
        return;
    }
    let daemon = TestDaemon::start();
    let mut root = daemon.client();
    // Even with every mode bit set: binding is the owner's, since it fills the mailbox.
    root.create("roots", &with_mode(0o666)).unwrap();
    let socket = daemon.socket().to_path_buf();
    let mut stranger = connect_as(STRANGER, move || {
        BlockingClient::connect_to(&socket).unwrap()
    });
    let refused = stranger.bind("roots", "a.>");
    assert!(
        matches!(refused, Err(Error::PermissionDenied(_))),
        "{refused:?}"
    );
    assert!(root.stat("roots").unwrap().bindings.is_empty());

    // Its own mailbox it may bind.
    stranger.create("mine", &CreateOptions::default()).unwrap();
    stranger.bind("mine", "a.>").unwrap();
    assert_eq!(
        root.stat("mine").unwrap().bindings,
        [TopicPattern::new("a.>").unwrap()]
    );
}

#[test]
fn stat_shows_bindings_and_unbind_needs_a_binding() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    bound(&mut c, "q", &["a.*", "b.>"]);
    // Binding again changes nothing.
    c.bind("q", "a.*").unwrap();
    let mut patterns: Vec<String> = c
        .stat("q")
        .unwrap()
        .bindings
        .iter()
        .map(|p| p.as_str().to_owned())
        .collect();
    patterns.sort();
    assert_eq!(patterns, ["a.*", "b.>"]);

    let refused = c.unbind("q", "c.d");
    assert!(matches!(refused, Err(Error::BadData(_))), "{refused:?}");
    c.unbind("q", "a.*").unwrap();
    let again = c.unbind("q", "a.*");
    assert!(matches!(again, Err(Error::BadData(_))), "{again:?}");
    assert_eq!(
        c.stat("q").unwrap().bindings,
        [TopicPattern::new("b.>").unwrap()]
    );
    let report = c.publish("a.x", "x", &SendOptions::default()).unwrap();
    assert_eq!(report.delivered, 0);
}

#[test]
fn a_removed_mailbox_leaves_no_bindings_to_its_successor() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    bound(&mut c, "q", &["a.>"]);
    c.remove("q").unwrap();
    c.create("q", &CreateOptions::default()).unwrap();
    assert!(c.stat("q").unwrap().bindings.is_empty());
    let report = c.publish("a.b", "x", &SendOptions::default()).unwrap();
    assert_eq!(report, PublishReport::default());
    assert_eq!(c.stat("q").unwrap().messages, 0);
}

// ---------------------------------------------------------------------------------
// Subscriptions

#[test]
fn ipcctl_watch_has_a_private_mailbox_only_while_it_runs() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    let before = usage(&mut c);
    let watch = ipcctl(daemon.socket())
        .args(["watch", "w.*", "-v", "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the watch's mailbox exists", || {
        watch_mailboxes(&mut c).len() == 1
    });
    assert_eq!(usage(&mut c).0, before.0 + 1, "charged as a mailbox");

    let report = c.publish("w.one", "seen", &SendOptions::default()).unwrap();
    assert_eq!(report.delivered, 1);
    let out = watch.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "w.one seen\n");

    wait_until("the watch's mailbox and its charges are gone", || {
        watch_mailboxes(&mut c).is_empty() && usage(&mut c) == before
    });
}

#[test]
fn a_dropped_subscriber_takes_its_mailbox_and_unread_messages_with_it() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    let before = usage(&mut c);
    let mut subscriber = daemon.client();
    let name = subscriber.subscribe("s.>").unwrap().mailbox().to_string();
    assert!(name.starts_with("_ipcd/watch/"), "{name}");
    assert_eq!(watch_mailboxes(&mut c), std::slice::from_ref(&name));
    for n in 0..5 {
        let report = c
            .publish("s.x", format!("unread {n}"), &SendOptions::default())
            .unwrap();
        assert_eq!(report.delivered, 1);
    }
    let held = c.stat(&name).unwrap();
    assert_eq!(held.messages, 5);
    let during = usage(&mut c);
    assert_eq!(during.0, before.0 + 1);
    assert!(
        during.1 > before.1,
        "the unread copies are charged: {during:?}"
    );

    drop(subscriber);
    wait_until("the subscription's mailbox and charges are gone", || {
        watch_mailboxes(&mut c).is_empty() && usage(&mut c) == before
    });
    assert!(matches!(c.stat(&name), Err(Error::NoSuchMailbox(_))));
    let report = c.publish("s.x", "late", &SendOptions::default()).unwrap();
    assert_eq!(report, PublishReport::default());
}

#[test]
fn a_slow_subscriber_keeps_the_newest_and_counts_the_rest() {
    let daemon = TestDaemon::start_with(ipcd::Config {
        subscription_limits: ipcd::config::Limits {
            max_msgs: 10,
            ..ipcd::Config::default().subscription_limits
        },
        ..ipcd::Config::default()
    });
    let mut publisher = daemon.client();
    let mut subscriber = daemon.client();
    let mut subscription = subscriber.subscribe("tick").unwrap();
    let name = subscription.mailbox().to_string();
    for n in 0..100 {
        let report = publisher
            .publish("tick", format!("t{n}"), &SendOptions::default())
            .unwrap();
        assert_eq!(
            report,
            PublishReport {
                delivered: 1,
                ..PublishReport::default()
            },
            "a subscription is never full to a publisher"
        );
        let info = publisher.stat(&name).unwrap();
        assert!(info.messages <= 10, "{info:?}");
    }
    let info = publisher.stat(&name).unwrap();
    assert_eq!((info.messages, info.dropped), (10, 90));

    let got: Vec<String> = subscription
        .by_ref()
        .take(10)
        .map(|m| text(&m.unwrap()).to_owned())
        .collect();
    let newest: Vec<String> = (90..100).map(|n| format!("t{n}")).collect();
    assert_eq!(got, newest);
    assert_eq!(subscription.dropped(), 90);
}

/// A child process stopped with SIGSTOP until this is dropped, so that a failing
/// assertion never leaves it stopped.
struct Stopped(i32);

impl Stopped {
    fn new(child: &Child) -> Self {
        let pid = i32::try_from(child.id()).expect("a pid fits");
        // SAFETY: a signal to our own child, which has not been reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as in `new`; the child is reaped only after this guard is dropped.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

#[test]
fn ipcctl_watch_says_how_many_it_missed_when_it_falls_behind() {
    let daemon = TestDaemon::start_with(ipcd::Config {
        subscription_limits: ipcd::config::Limits {
            max_msgs: 10,
            ..ipcd::Config::default().subscription_limits
        },
        ..ipcd::Config::default()
    });
    let mut c = daemon.client();
    let watch = ipcctl(daemon.socket())
        .args(["watch", "tick", "--count", "11"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the watch's mailbox exists", || {
        watch_mailboxes(&mut c).len() == 1
    });
    let name = watch_mailboxes(&mut c).remove(0);
    daemon.wait_for_receivers(&name, 1);
    // Stopped, the watch reads nothing: t1 goes to its waiting receive, and of the rest
    // its mailbox keeps the newest ten.
    let stopped = Stopped::new(&watch);
    for n in 1..=30 {
        let report = c
            .publish("tick", format!("t{n}"), &SendOptions::default())
            .unwrap();
        assert_eq!(report.delivered, 1);
    }
    assert_eq!(c.stat(&name).unwrap().dropped, 19);
    drop(stopped);
    let out = watch.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{out:?}");
    let printed: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let expected: Vec<String> = std::iter::once(1)
        .chain(21..=30)
        .map(|n| format!("t{n}"))
        .collect();
    assert_eq!(printed, expected);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        "ipcctl: watch fell behind: 19 messages dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_subscription_yields_what_is_published() {
    let daemon = TestDaemon::start();
    tokio::time::timeout(Duration::from_secs(120), async {
        let client = Client::connect_to(daemon.socket()).await.unwrap();
        let mut subscription = client.subscribe("orders.*").await.unwrap();
        for topic in ["orders.new", "orders.paid", "other.new", "orders.paid.late"] {
            client
                .publish(topic, topic.to_owned(), &SendOptions::default())
                .await
                .unwrap();
        }
        let mut got = Vec::new();
        for _ in 0..2 {
            let message = subscription.next().await.unwrap().unwrap();
            assert_eq!(text(&message), topic_of(&message));
            got.push(topic_of(&message).to_owned());
        }
        assert_eq!(got, ["orders.new", "orders.paid"]);
        assert_eq!(subscription.dropped(), 0);
        assert_eq!(
            client
                .stat(subscription.mailbox().as_str())
                .await
                .unwrap()
                .messages,
            0
        );
    })
    .await
    .expect("the test finished");
}

// ---------------------------------------------------------------------------------
// Calls and replies

/// A responder on `mailbox` in a thread of its own: takes one request, answers it with
/// its payload in capitals, and returns the request.
fn respond_once(daemon: &TestDaemon, mailbox: &str) -> std::thread::JoinHandle<Message> {
    let mut responder = daemon.client();
    let mailbox = mailbox.to_owned();
    std::thread::spawn(move || {
        let request = responder.recv(&mailbox, &RecvOptions::default()).unwrap();
        let answer = text(&request).to_uppercase();
        responder.reply(&request, answer).unwrap();
        request
    })
}

#[test]
fn a_call_gets_the_reply_of_its_responder() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    c.create("upper", &CreateOptions::default()).unwrap();
    let responder = respond_once(&daemon, "upper");
    daemon.wait_for_receivers("upper", 1);
    let reply = c
        .call("upper", "hello", Duration::from_secs(60))
        .expect("the reply");
    let request = responder.join().unwrap();
    assert_eq!(text(&reply), "HELLO");
    let reply_to = (request.headers.reply_to.as_ref()).expect("a request names its reply mailbox");
    assert!(reply_to.as_str().starts_with("_ipcd/reply/"), "{reply_to}");
    assert!(request.headers.correlation_id.is_some());
    assert_eq!(reply.headers.correlation_id, request.headers.correlation_id);
    assert_eq!(c.stat("upper").unwrap().messages, 0);
}

#[test]
fn ipcctl_serve_answers_ipcctl_call() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    c.create("upper", &CreateOptions::default()).unwrap();
    let serve = ipcctl(daemon.socket())
        .args(["serve", "upper", "--count", "1", "--", "tr", "a-z", "A-Z"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    daemon.wait_for_receivers("upper", 1);
    let out = ipcctl(daemon.socket())
        .args(["call", "upper", "hello", "--raw"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{out:?}");
    assert_eq!(out.stdout, b"HELLO");
    let served = serve.wait_with_output().unwrap();
    assert_eq!(code(&served), 0, "{served:?}");
    let info = c.stat("upper").unwrap();
    assert_eq!((info.messages, info.unacked), (0, 0), "served and acked");
}

#[test]
fn a_failing_serve_command_fails_the_call_with_its_stderr() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    c.create("broken", &CreateOptions::default()).unwrap();
    let serve: Child = ipcctl(daemon.socket())
        .args(["serve", "broken", "--count", "1", "--"])
        .args(["sh", "-c", "echo out of cheese >&2; exit 3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = ipcctl(daemon.socket())
        .args(["call", "broken", "x"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the responder on broken failed") && stderr.contains("out of cheese"),
        "{stderr}"
    );
    let served = serve.wait_with_output().unwrap();
    assert_eq!(code(&served), 0, "{served:?}");
}

/// Waits until `mailbox`'s request has expired undelivered.
fn wait_for_expiry(c: &mut BlockingClient, mailbox: &str) {
    wait_until("the request expired", || {
        let info = c.stat(mailbox).unwrap();
        (info.messages, info.expired) == (0, 1)
    });
}

#[test]
fn a_call_nobody_answers_times_out_and_its_request_expires() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    c.create("idle", &CreateOptions::default()).unwrap();
    let outcome = c.call("idle", "anyone?", Duration::from_millis(200));
    let Err(Error::TimedOut(why)) = outcome else {
        panic!("expected a timeout: {outcome:?}");
    };
    assert!(why.contains("no receiver was waiting"), "{why}");
    wait_for_expiry(&mut c, "idle");
    assert!(
        drain(&mut c, "idle").is_empty(),
        "no responder takes it up late"
    );
}

#[test]
fn ipcctl_call_nobody_answers_exits_75() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    c.create("idle", &CreateOptions::default()).unwrap();
    let out = ipcctl(daemon.socket())
        .args(["call", "idle", "anyone?", "--timeout", "200ms"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 75, "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no receiver was waiting"), "{stderr}");
    wait_for_expiry(&mut c, "idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_on_one_connection_each_get_their_own_reply() {
    const CALLS: usize = 20;
    let daemon = TestDaemon::start();
    let mut responder = daemon.client();
    responder.create("svc", &CreateOptions::default()).unwrap();
    // Takes every request before answering any, then answers the last first.
    let responder = std::thread::spawn(move || {
        let mut requests: Vec<Message> = (0..CALLS)
            .map(|_| responder.recv("svc", &RecvOptions::default()).unwrap())
            .collect();
        requests.reverse();
        for request in &requests {
            responder
                .reply(request, format!("re: {}", text(request)))
                .unwrap();
        }
        requests
    });
    tokio::time::timeout(Duration::from_secs(120), async {
        let client = Client::connect_to(daemon.socket()).await.unwrap();
        let calls: Vec<_> = (0..CALLS)
            .map(|n| {
                let client = client.clone();
                tokio::spawn(async move {
                    let payload = format!("call {n}");
                    let reply = client
                        .call("svc", payload.clone(), Duration::from_secs(60))
                        .await
                        .unwrap();
                    (payload, reply)
                })
            })
            .collect();
        for call in calls {
            let (payload, reply) = call.await.unwrap();
            assert_eq!(text(&reply), format!("re: {payload}"));
        }
    })
    .await
    .expect("the test finished");
    let requests = responder.join().unwrap();
    let mut ids: Vec<u64> = requests
        .iter()
        .map(|r| r.headers.correlation_id.unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), CALLS, "a correlation id per call");
    let reply_to: Vec<_> = requests.iter().map(|r| &r.headers.reply_to).collect();
    assert!(reply_to.windows(2).all(|w| w[0] == w[1]), "one connection");
}

#[test]
fn a_call_takes_one_reply_and_none_after_it_ends() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    c.create("svc", &CreateOptions::default()).unwrap();
    let mut responder = daemon.client();

    // Answered once: a second reply is refused.
    let socket = daemon.socket().to_path_buf();
    let caller = std::thread::spawn(move || {
        let mut c = BlockingClient::connect_to(&socket).unwrap();
        c.call("svc", "first", Duration::from_secs(60))
    });
    let request = responder.recv("svc", &RecvOptions::default()).unwrap();
    responder.reply(&request, "answer").unwrap();
    let again = responder.reply(&request, "answer again");
    assert!(
        matches!(again, Err(Error::PermissionDenied(_))),
        "{again:?}"
    );
    assert_eq!(text(&caller.join().unwrap().unwrap()), "answer");

    // Timed out: a late reply is refused. The responder waits first, so the request is
    // handed to it at once and cannot expire untaken.
    let taker = std::thread::spawn(move || {
        let request = responder.recv("svc", &RecvOptions::default()).unwrap();
        (responder, request)
    });
    daemon.wait_for_receivers("svc", 1);
    let outcome = c.call("svc", "second", Duration::from_millis(300));
    assert!(matches!(outcome, Err(Error::TimedOut(_))), "{outcome:?}");
    let (mut responder, request) = taker.join().unwrap();
    assert_eq!(text(&request), "second");
    let late = responder.reply(&request, "too late");
    assert!(matches!(late, Err(Error::PermissionDenied(_))), "{late:?}");
}

#[test]
fn a_reply_mailbox_takes_only_the_reply_its_call_waits_for() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    c.create("svc", &CreateOptions::default()).unwrap();
    let socket = daemon.socket().to_path_buf();
    let caller = std::thread::spawn(move || {
        let mut c = BlockingClient::connect_to(&socket).unwrap();
        c.call("svc", "question", Duration::from_secs(60))
    });
    let mut responder = daemon.client();
    let request = responder.recv("svc", &RecvOptions::default()).unwrap();
    let reply_to = request.headers.reply_to.clone().unwrap();
    let real = request.headers.correlation_id.unwrap();

    // Another connection pushing at the caller's reply mailbox with a made-up id, or
    // with none, or the right id at another connection's reply mailbox: all refused.
    let mut intruder = daemon.client();
    let send = |intruder: &mut BlockingClient, to: &str, id: Option<u64>| {
        let mut options = SendOptions::default().wait(Wait::NoWait);
        options.headers.correlation_id = id;
        intruder.send(to, "forged", &options)
    };
    let made_up = send(&mut intruder, reply_to.as_str(), Some(real.wrapping_add(1)));
    assert!(
        matches!(made_up, Err(Error::PermissionDenied(_))),
        "{made_up:?}"
    );
    let without = send(&mut intruder, reply_to.as_str(), None);
    assert!(matches!(without, Err(Error::BadData(_))), "{without:?}");
    let elsewhere = send(&mut intruder, "_ipcd/reply/999999999", Some(real));
    assert!(
        matches!(elsewhere, Err(Error::PermissionDenied(_))),
        "{elsewhere:?}"
    );

    // The call still waits, and takes its real reply.
    responder.reply(&request, "the answer").unwrap();
    assert_eq!(text(&caller.join().unwrap().unwrap()), "the answer");
}

#[test]
fn replying_to_a_message_that_is_no_request_is_bad_data() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    c.create("q", &CreateOptions::default()).unwrap();
    c.send("q", "just a message", &SendOptions::default())
        .unwrap();
    let message = c.recv("q", &nowait()).unwrap();
    let refused = c.reply(&message, "answer");
    assert!(matches!(refused, Err(Error::BadData(_))), "{refused:?}");
}

// ---------------------------------------------------------------------------------
// Durability and reserved names

#[test]
fn a_published_copy_in_a_durable_mailbox_survives_a_restart_with_its_topic() {
    let mut daemon = TestDaemon::start();
    {
        let mut c = daemon.client();
        c.create(
            "kept",
            &CreateOptions {
                durable: true,
                ..CreateOptions::default()
            },
        )
        .unwrap();
        c.bind("kept", "audit.>").unwrap();
        let report = c
            .publish("audit.login", "alice", &SendOptions::default())
            .unwrap();
        assert_eq!(report.delivered, 1);
    }
    daemon.restart();
    let mut c = daemon.client();
    let copies = drain(&mut c, "kept");
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(text(&copies[0]), "alice");
    assert_eq!(topic_of(&copies[0]), "audit.login");
}

#[test]
fn the_private_prefix_is_refused_to_clients() {
    let daemon = TestDaemon::start();
    let out = ipcctl(daemon.socket())
        .args(["create", "_ipcd/x"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 65, "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("_ipcd/"), "{stderr}");
    let mut c = daemon.client();
    let refused = c.create("_ipcd/reply/1", &CreateOptions::default());
    assert!(matches!(refused, Err(Error::BadData(_))), "{refused:?}");
    assert!(c.list().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------
// Who pays, and who may be answered

/// What `uid` holds in queued bytes, as root sees it in `status`.
fn queued_of(client: &mut BlockingClient, uid: u32) -> u64 {
    let status = client.status().unwrap();
    status
        .users
        .iter()
        .find(|u| u.uid == uid)
        .map_or(0, |u| u.queued_bytes)
}

/// A mailbox bound to everything and open for anyone to write takes copies of what
/// others publish — that is what binding is — but it, not the publisher, pays for them:
/// hoarding publications cannot use up the publisher's quota.
#[test]
fn a_published_copy_is_charged_to_the_mailbox_that_binds_it() {
    if !is_root() {
        eprintln!("skipped: needs root to publish as another uid");
        return;
    }
    let daemon = TestDaemon::start();
    let mut root = daemon.client();
    root.create("hoard", &with_mode(0o622)).unwrap();
    root.bind("hoard", ">").unwrap();
    let socket = daemon.socket().to_path_buf();
    let mut publisher = connect_as(STRANGER, move || {
        BlockingClient::connect_to(&socket).unwrap()
    });
    let before = queued_of(&mut root, STRANGER.uid);
    let report = publisher
        .publish("any.thing", vec![7u8; 100_000], &SendOptions::default())
        .unwrap();
    assert_eq!(report.delivered, 1);
    assert_eq!(
        queued_of(&mut root, STRANGER.uid),
        before,
        "the publisher holds nothing of the copy"
    );
    assert!(queued_of(&mut root, 0) >= 100_000, "the binder pays for it");
}

/// A binding costs its mailbox's owner queued bytes until it is undone, or its mailbox
/// removed: bindings cannot pile up uncharged.
#[test]
fn a_binding_is_charged_to_its_owner_until_it_goes() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    c.create("charged", &CreateOptions::default()).unwrap();
    let (_, start) = usage(&mut c);
    c.bind("charged", "a.b.c.d").unwrap();
    let (_, bound) = usage(&mut c);
    let overhead = ipcd::Config::default().binding_overhead;
    assert_eq!(bound - start, "a.b.c.d".len() as u64 + 4 * overhead);
    c.bind("charged", "a.b.c.d").unwrap();
    assert_eq!(usage(&mut c).1, bound, "binding twice charges once");
    c.unbind("charged", "a.b.c.d").unwrap();
    assert_eq!(usage(&mut c).1, start);
    c.bind("charged", "x.>").unwrap();
    c.remove("charged").unwrap();
    assert_eq!(usage(&mut c).1, start, "removing the mailbox gives it back");
}

/// Makes "svc" and "elsewhere", and sends "svc" a message that looks like a call but
/// whose `reply_to` names the ordinary mailbox "elsewhere".
fn send_forged_request(c: &mut BlockingClient) {
    c.create("svc", &CreateOptions::default()).unwrap();
    c.create("elsewhere", &CreateOptions::default()).unwrap();
    let mut options = SendOptions::default();
    options.headers.reply_to = Some("elsewhere".parse().unwrap());
    options.headers.correlation_id = Some(1);
    c.send("svc", "forged", &options).unwrap();
}

/// `reply` answers only a call: a `reply_to` naming an ordinary mailbox is the sender's
/// say, and answering there would write, as the responder, where the sender may not.
#[test]
fn reply_answers_only_a_calls_reply_mailbox() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    send_forged_request(&mut c);
    let request = c.recv("svc", &nowait()).unwrap();
    let refused = c.reply(&request, "answer");
    assert!(matches!(refused, Err(Error::BadData(_))), "{refused:?}");
    assert!(drain(&mut c, "elsewhere").is_empty());
}

/// `ipcctl serve` runs nothing for a message that is no call, and goes on serving: a
/// stranger's forged `reply_to` neither steers its answer nor stops it.
#[test]
fn serve_skips_what_is_no_call_and_goes_on() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    send_forged_request(&mut c);
    let mut nowhere = SendOptions::default();
    nowhere.headers.reply_to = Some("no.such.mailbox".parse().unwrap());
    c.send("svc", "lost", &nowhere).unwrap();
    let serve = ipcctl(daemon.socket())
        .args(["serve", "svc", "--count", "3", "--", "tr", "a-z", "A-Z"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reply = c.call("svc", "real", Duration::from_secs(30)).unwrap();
    assert_eq!(reply.payload, "REAL");
    let out = serve.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("is no call").count(), 2, "{stderr}");
    assert!(
        drain(&mut c, "elsewhere").is_empty(),
        "nothing was steered there"
    );
}

/// A call refused for the connection's `in_flight` quota sent nothing: retrying it does
/// not make the request twice.
#[test]
fn a_call_refused_for_in_flight_sent_nothing() {
    let mut config = ipcd::Config::default();
    config.quota_overrides.insert(
        uid(),
        ipcd::config::Quota {
            in_flight: 1,
            ..ipcd::Config::default().quota
        },
    );
    let daemon = TestDaemon::start_with(config);
    let mut c = daemon.client();
    c.create("svc", &CreateOptions::default()).unwrap();
    let call = |payload: &'static str| {
        ipc_proto::Request::Call(ipc_proto::CallRequest {
            mailbox: "svc".parse().unwrap(),
            mtype: 1,
            headers: Default::default(),
            timeout_ms: 60_000,
            payload: payload.into(),
        })
    };
    let mut caller = daemon.client();
    let first = caller.submit(&call("first")).unwrap();
    let second = caller.submit(&call("second")).unwrap();
    let refused = caller.wait_for(second).unwrap();
    assert!(
        matches!(&refused, ipc_proto::Response::Error(e) if e.code == ipc_client::ErrorCode::QuotaExceeded),
        "{refused:?}"
    );
    let queued = drain(&mut c, "svc");
    let payloads: Vec<&str> = queued.iter().map(text).collect();
    assert_eq!(payloads, ["first"], "only the call let in was sent");
    c.reply(&queued[0], "done").unwrap();
    assert!(matches!(
        caller.wait_for(first).unwrap(),
        ipc_proto::Response::Message(_)
    ));
}
