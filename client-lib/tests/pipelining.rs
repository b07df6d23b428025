//! The bounds on what the clients leave unanswered, against the scripted daemon, which
//! shows exactly when each request reaches it. That the bounds keep a client from
//! deadlocking against the real daemon is tested in `tests/tests/pipelining.rs`.

use std::sync::mpsc;

use ipc_client::{BlockingClient, Client, DEFAULT_PIPELINE_WINDOW};
use ipc_proto::{MailboxName, Request, Response};
use ipcd_test_support::{Peer, daemon};

fn stat() -> Request {
    Request::Stat {
        mailbox: MailboxName::new("q").unwrap(),
    }
}

#[test]
fn a_blocking_submit_past_the_window_first_reads_a_reply() {
    let window = 8;
    let (path, daemon) = daemon(move |listener| {
        let mut peer = Peer::accept(listener);
        let ids: Vec<u64> = (0..window).map(|_| peer.request().0).collect();
        // Nothing more is written until a reply is read: the next request is the one
        // submitted after this reply, whatever the timing.
        peer.reply(ids[0], &Response::Ok);
        let (next, request) = peer.request();
        assert_eq!(request, stat());
        for id in ids[1..].iter().chain([&next]) {
            peer.reply(*id, &Response::Ok);
        }
        assert!(peer.read().is_none(), "nothing more");
    });
    let mut client = BlockingClient::connect_to(&path).unwrap();
    client.set_pipeline_window(window);
    let mut ids: Vec<u64> = (0..window)
        .map(|_| client.submit(&stat()).unwrap())
        .collect();
    client.flush().unwrap();
    ids.push(client.submit(&stat()).unwrap());
    // The submit read the first reply and kept it.
    let (first, response) = client.try_next_reply().unwrap().expect("the kept reply");
    assert_eq!((first, response), (ids[0], Response::Ok));
    let mut rest: Vec<u64> = (1..ids.len())
        .map(|_| client.next_reply().unwrap().0)
        .collect();
    rest.sort_unstable();
    assert_eq!(rest, ids[1..]);
    drop(client);
    daemon.join().unwrap();
}

#[test]
fn kept_replies_come_out_in_the_order_they_arrived() {
    let (path, daemon) = daemon(|listener| {
        let mut peer = Peer::accept(listener);
        let ids: Vec<u64> = (0..3).map(|_| peer.request().0).collect();
        for &id in ids.iter().rev() {
            peer.reply(id, &Response::Purged { messages: id });
        }
        assert!(peer.read().is_none(), "nothing more");
    });
    let mut client = BlockingClient::connect_to(&path).unwrap();
    let ids: Vec<u64> = (0..3).map(|_| client.submit(&stat()).unwrap()).collect();
    // Waiting for the first keeps the two that arrive before it.
    assert_eq!(
        client.wait_for(ids[0]).unwrap(),
        Response::Purged { messages: ids[0] }
    );
    assert_eq!(client.next_reply().unwrap().0, ids[2]);
    assert_eq!(client.next_reply().unwrap().0, ids[1]);
    drop(client);
    daemon.join().unwrap();
}

#[test]
fn an_async_request_past_the_window_waits_for_one_to_finish() {
    let (read_all, all_read) = tokio::sync::oneshot::channel();
    let (go, gone) = mpsc::channel::<()>();
    let (path, daemon) = daemon(move |listener| {
        let mut peer = Peer::accept(listener);
        let ids: Vec<u64> = (0..DEFAULT_PIPELINE_WINDOW)
            .map(|_| peer.request().0)
            .collect();
        read_all.send(()).unwrap();
        gone.recv().unwrap();
        peer.reply(ids[0], &Response::Mailboxes(Vec::new()));
        // Only now can the request past the window come.
        let (next, request) = peer.request();
        assert_eq!(request, Request::List);
        for id in ids[1..].iter().chain([&next]) {
            peer.reply(*id, &Response::Mailboxes(Vec::new()));
        }
        assert!(peer.read().is_none(), "nothing more");
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let client = Client::connect_to(&path).await.unwrap();
        let lists: Vec<_> = (0..DEFAULT_PIPELINE_WINDOW)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.list().await })
            })
            .collect();
        all_read.await.unwrap();
        let past = client.list();
        tokio::pin!(past);
        // With every permit taken, the request cannot even be queued: it is pending on
        // its first poll, however long one waited.
        tokio::select! {
            biased;
            outcome = &mut past => panic!("went past the window: {outcome:?}"),
            () = std::future::ready(()) => {}
        }
        go.send(()).unwrap();
        assert!(past.await.unwrap().is_empty());
        for list in lists {
            assert!(list.await.unwrap().unwrap().is_empty());
        }
    });
    drop(runtime);
    daemon.join().unwrap();
}
