//! Reconnecting, against a scripted daemon that speaks the protocol from a thread, so that
//! a connection can be broken at exactly the point a test needs (before a reply, after a
//! lease) — the real daemon is killed in `tests/tests/reconnect.rs`.

use std::sync::mpsc;
use std::time::Duration;

use ipc_client::{
    BlockingClient, Client, Error, ErrorCode, ReconnectPolicy, RecvOptions, SendOptions, Wait,
};
use ipc_proto::{ErrorReply, Request, Response};
use ipcd_test_support::{Peer, daemon, message};

/// Short pauses, so that a test that reconnects does not wait long; a generous bound on
/// the whole wait, so that a slow machine does not fail it.
fn policy() -> ReconnectPolicy {
    ReconnectPolicy {
        max_wait: Duration::from_secs(60),
        backoff_start: Duration::from_millis(1),
        backoff_max: Duration::from_millis(20),
    }
}

#[test]
fn a_send_whose_reply_is_lost_fails_and_is_never_resent() {
    let (path, daemon) = daemon(|listener| {
        let mut first = Peer::accept(listener);
        let (_, request) = first.request();
        assert!(matches!(request, Request::Send(_)), "{request:?}");
        drop(first);
        // The next connection sees the next request, not the send again.
        let mut second = Peer::accept(listener);
        let (id, request) = second.request();
        assert_eq!(request, Request::List);
        second.reply(id, &Response::Mailboxes(Vec::new()));
    });
    let mut client = BlockingClient::connect_to(&path)
        .unwrap()
        .with_reconnect(policy());
    match client.send("q", "once", &SendOptions::default()) {
        Err(Error::Disconnected(e)) => {
            assert!(e.to_string().contains("not resent"), "{e}");
        }
        other => panic!("expected a lost send, got {other:?}"),
    }
    assert!(client.list().unwrap().is_empty());
    daemon.join().unwrap();
}

#[test]
fn a_receive_whose_connection_breaks_is_made_again_with_the_rest_of_its_timeout() {
    let (path, daemon) = daemon(|listener| {
        let mut first = Peer::accept(listener);
        let (_, request) = first.request();
        assert!(matches!(&request, Request::Recv(r) if r.wait == Wait::TimeoutMs(3_600_000)));
        drop(first);
        let mut second = Peer::accept(listener);
        let (id, request) = second.request();
        let Request::Recv(recv) = request else {
            panic!("expected the receive again, got {request:?}");
        };
        assert!(
            matches!(recv.wait, Wait::TimeoutMs(ms) if (1..=3_600_000).contains(&ms)),
            "{:?}",
            recv.wait
        );
        second.reply(id, &Response::Message(message(7, "after")));
    });
    let mut client = BlockingClient::connect_to(&path)
        .unwrap()
        .with_reconnect(policy());
    let options = RecvOptions::default().wait(Wait::timeout(Duration::from_secs(3600)));
    let got = client.recv("q", &options).unwrap();
    assert_eq!(&got.payload[..], b"after");
    daemon.join().unwrap();
}

#[test]
fn a_daemon_shutting_down_is_waited_out_by_a_receive() {
    let (path, daemon) = daemon(|listener| {
        let mut first = Peer::accept(listener);
        let (id, _) = first.request();
        let stopping = ErrorReply::new(ErrorCode::ShuttingDown, "ipcd is shutting down");
        first.reply(id, &Response::Error(stopping));
        drop(first);
        let mut second = Peer::accept(listener);
        let (id, request) = second.request();
        assert!(matches!(request, Request::Recv(_)), "{request:?}");
        second.reply(id, &Response::Message(message(1, "next daemon")));
    });
    let mut client = BlockingClient::connect_to(&path)
        .unwrap()
        .with_reconnect(policy());
    let got = client.recv("q", &RecvOptions::default()).unwrap();
    assert_eq!(&got.payload[..], b"next daemon");
    daemon.join().unwrap();
}

#[test]
fn a_lease_ends_with_its_connection_and_its_ack_says_so() {
    let (closed, is_closed) = mpsc::channel();
    let (path, daemon) = daemon(move |listener| {
        let mut first = Peer::accept(listener);
        let (id, request) = first.request();
        assert!(matches!(&request, Request::Recv(r) if r.lease.is_some()));
        first.reply(id, &Response::Message(message(3, "leased")));
        drop(first);
        closed.send(()).unwrap();
    });
    let mut client = BlockingClient::connect_to(&path)
        .unwrap()
        .with_reconnect(policy());
    let delivery = client
        .recv_leased("q", &RecvOptions::default(), Duration::from_secs(30))
        .unwrap();
    is_closed.recv().unwrap();
    // Not asked of a new daemon: the scripted one accepts no second connection.
    match delivery.ack() {
        Err(Error::Server {
            code: ErrorCode::NotLeased,
            message,
        }) => assert!(message.contains("redelivered"), "{message}"),
        other => panic!("expected NotLeased, got {other:?}"),
    }
    daemon.join().unwrap();
}

#[test]
fn without_a_policy_a_broken_connection_stays_broken() {
    let (done, is_done) = mpsc::channel();
    let (path, daemon) = daemon(move |listener| {
        let mut first = Peer::accept(listener);
        let _ = first.request();
        drop(first);
        is_done.recv().unwrap();
        listener.set_nonblocking(true).unwrap();
        let again = listener.accept().map(|_| ());
        assert!(
            again
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "no second connection: {again:?}"
        );
    });
    let mut client = BlockingClient::connect_to(&path).unwrap();
    let err = client.recv("q", &RecvOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Disconnected(_)), "{err:?}");
    let err = client.list().unwrap_err();
    assert!(matches!(err, Error::Disconnected(_)), "{err:?}");
    done.send(()).unwrap();
    daemon.join().unwrap();
}

#[test]
fn reconnecting_gives_up_after_the_policy_s_wait() {
    let (path, daemon) = daemon(|listener| {
        let mut first = Peer::accept(listener);
        let _ = first.request();
    });
    let mut client = BlockingClient::connect_to(&path)
        .unwrap()
        .with_reconnect(policy().max_wait(Duration::from_millis(50)));
    // The daemon goes away for good (its socket file with it) before answering.
    std::fs::remove_file(&path).unwrap();
    let err = client.list().unwrap_err();
    daemon.join().unwrap();
    match err {
        Error::NotReachable { source, .. } => {
            assert!(source.to_string().contains("gave up"), "{source}");
        }
        other => panic!("expected NotReachable, got {other:?}"),
    }
}

#[test]
fn the_async_client_resumes_a_receive_and_does_not_resend_a_send() {
    let (path, daemon) = daemon(|listener| {
        let mut first = Peer::accept(listener);
        let mut requests: Vec<Request> = (0..2).map(|_| first.request().1).collect();
        requests.sort_by_key(|r| matches!(r, Request::Send(_)));
        assert!(matches!(requests[0], Request::Recv(_)), "{requests:?}");
        assert!(matches!(requests[1], Request::Send(_)), "{requests:?}");
        drop(first);
        // Only the receive comes again.
        let mut second = Peer::accept(listener);
        let (id, request) = second.request();
        assert!(matches!(request, Request::Recv(_)), "{request:?}");
        second.reply(id, &Response::Message(message(9, "resumed")));
        // And the client is done with this connection.
        assert!(second.read().is_none());
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let client = Client::connect_to(&path)
            .await
            .unwrap()
            .with_reconnect(policy());
        let receiver = client.clone();
        let recv = tokio::spawn(async move { receiver.recv("q", &RecvOptions::default()).await });
        // The send is made after the receive is queued; the daemon reads both.
        tokio::task::yield_now().await;
        let sent = client.send("q", "once", &SendOptions::default()).await;
        assert!(matches!(sent, Err(Error::Disconnected(_))), "{sent:?}");
        let got = tokio::time::timeout(Duration::from_secs(60), recv)
            .await
            .expect("the receive resumed")
            .unwrap()
            .unwrap();
        assert_eq!(&got.payload[..], b"resumed");
    });
    // The connection's tasks end with the runtime, which closes it.
    drop(runtime);
    daemon.join().unwrap();
}

#[test]
fn the_async_client_does_not_settle_a_lease_on_a_new_connection() {
    let (path, daemon) = daemon(|listener| {
        let mut first = Peer::accept(listener);
        let (id, request) = first.request();
        assert!(matches!(&request, Request::Recv(r) if r.lease.is_some()));
        first.reply(id, &Response::Message(message(3, "leased")));
        drop(first);
        // The list is made again here; the ack never comes.
        let mut second = Peer::accept(listener);
        let (id, request) = second.request();
        assert_eq!(request, Request::List);
        second.reply(id, &Response::Mailboxes(Vec::new()));
        assert!(
            second.read().is_none(),
            "nothing more on the new connection"
        );
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let client = Client::connect_to(&path)
            .await
            .unwrap()
            .with_reconnect(policy());
        let delivery = client
            .recv_leased("q", &RecvOptions::default(), Duration::from_secs(30))
            .await
            .unwrap();
        assert!(client.list().await.unwrap().is_empty());
        match delivery.ack().await {
            Err(Error::Server {
                code: ErrorCode::NotLeased,
                ..
            }) => {}
            other => panic!("expected NotLeased, got {other:?}"),
        }
    });
    drop(runtime);
    daemon.join().unwrap();
}
