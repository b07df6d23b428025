//! Pipelining far past the daemon's bound on queued replies, without reading: the
//! clients bound what they leave unanswered, so the daemon never stops reading a client
//! that is itself stuck writing to it.

use std::collections::HashSet;

use ipc_client::{Client, CreateOptions, SendOptions};
use ipc_proto::{MailboxName, Request, Response};
use ipcd_tests::TestDaemon;

/// Far more than the daemon queues for one connection (1024) and, in replies, more
/// bytes than the socket's buffers hold: without a bound the client would block on a
/// write that the daemon, full of unread replies, never reads.
const REQUESTS: usize = 50_000;

#[test]
fn a_blocking_client_submits_far_past_its_window_without_reading_and_completes() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client();
    client.create("p", &CreateOptions::default()).unwrap();
    let stat = Request::Stat {
        mailbox: MailboxName::new("p").unwrap(),
    };
    let submitted: HashSet<u64> = (0..REQUESTS)
        .map(|_| client.submit(&stat).unwrap())
        .collect();
    assert_eq!(submitted.len(), REQUESTS);
    let mut answered = HashSet::new();
    for _ in 0..REQUESTS {
        let (id, response) = client.next_reply().unwrap();
        assert!(matches!(response, Response::Mailbox(_)), "{response:?}");
        assert!(answered.insert(id), "request {id} answered twice");
    }
    assert_eq!(answered, submitted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_client_with_far_more_sends_than_its_window_completes_them_all() {
    let daemon = TestDaemon::start();
    let client = Client::connect_to(daemon.socket()).await.unwrap();
    client.create("p", &CreateOptions::default()).await.unwrap();
    let sends: Vec<_> = (0..5_000)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .send("p", n.to_string(), &SendOptions::default())
                    .await
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for send in sends {
        assert!(ids.insert(send.await.unwrap().unwrap()));
    }
    assert_eq!(ids.len(), 5_000);
    assert_eq!(client.stat("p").await.unwrap().messages, 5_000);
}
