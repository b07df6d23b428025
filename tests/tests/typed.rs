//! Typed messages between programs that share a name, not a Rust type: a struct sent
//! under a `message_type!` name is received as another struct of that name, through
//! either client, and a JSON-typed message is readable by `ipcctl` (and so by `jq`) and
//! writable by it.

use std::process::{Output, Stdio};
use std::time::Duration;

use ipc_client::{Client, Codec, CreateOptions, Error, MessageType, RecvOptions, Wait};
use ipcd_tests::{TestDaemon, ipcctl};
use serde_json::{Value, json};

/// The sending program's definition of a job.
mod producer {
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    pub struct Job {
        pub id: u32,
        pub command: String,
    }
    ipc_client::message_type!(Job, "ipcd-tests.Job");

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    pub struct Report {
        pub id: u32,
        pub lines: Vec<String>,
    }
    ipc_client::message_type!(Report, "ipcd-tests.Report", json);
}

/// The receiving program's own definitions of the same messages. postcard is positional,
/// so `Job` keeps the producer's field order; JSON goes by field name, so `Report` need
/// not, and may leave fields out.
mod consumer {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Job {
        pub id: u32,
        pub command: String,
    }
    ipc_client::message_type!(Job, "ipcd-tests.Job");

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Report {
        pub lines: Vec<String>,
        pub id: u32,
    }
    ipc_client::message_type!(Report, "ipcd-tests.Report", json);

    /// A summary that reads only the id of a report.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct ReportId {
        pub id: u32,
    }
    ipc_client::message_type!(ReportId, "ipcd-tests.Report", json);
}

/// `ipcctl ARGS…` to completion; its stdout, having asserted it succeeded.
fn ok(daemon: &TestDaemon, args: &[&str]) -> Vec<u8> {
    let out: Output = ipcctl(daemon.socket())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run ipcctl");
    assert_eq!(out.status.code(), Some(0), "ipcctl {args:?}: {out:?}");
    out.stdout
}

fn nowait() -> RecvOptions {
    RecvOptions::default().wait(Wait::NoWait)
}

#[test]
fn a_named_type_is_received_as_another_struct_of_that_name() {
    let daemon = TestDaemon::start();
    let mut sender = daemon.client();
    assert!(sender.create("jobs", &CreateOptions::default()).unwrap());
    let sent = producer::Job {
        id: 1,
        command: "make".into(),
    };
    sender
        .typed::<producer::Job>("jobs")
        .unwrap()
        .send(&sent)
        .unwrap();
    sender
        .typed::<producer::Job>("jobs")
        .unwrap()
        .send(&sent)
        .unwrap();

    // Another connection, another struct: only the name is shared.
    let mut receiver = daemon.client();
    let (message, job) = receiver
        .typed::<consumer::Job>("jobs")
        .unwrap()
        .recv_with(nowait())
        .unwrap();
    assert_eq!(
        message.headers.content_type.as_deref(),
        Some("ipcd-tests.Job")
    );
    let expected = consumer::Job {
        id: 1,
        command: "make".into(),
    };
    assert_eq!(job, expected);

    // The Rust-path fallback does not agree across definitions, and says so by name.
    match receiver.mailbox::<consumer::Job>("jobs").unwrap().recv() {
        Err(Error::TypeMismatch { expected, found }) => {
            assert!(expected.ends_with("consumer::Job"), "{expected}");
            assert_eq!(found, "ipcd-tests.Job");
        }
        other => panic!("expected a type mismatch, got {other:?}"),
    }

    // The async client names types the same way.
    sender
        .typed::<producer::Job>("jobs")
        .unwrap()
        .send(&sent)
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let got = runtime.block_on(async {
        let client = Client::connect_to(daemon.socket()).await.unwrap();
        let jobs = client.typed::<consumer::Job>("jobs").unwrap();
        tokio::time::timeout(Duration::from_secs(30), jobs.recv()).await
    });
    assert_eq!(got.expect("a queued message arrives").unwrap(), expected);
}

#[test]
fn json_messages_are_json_to_ipcctl_both_ways() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    assert!(c.create("reports", &CreateOptions::default()).unwrap());
    let report = producer::Report {
        id: 7,
        lines: vec!["built".into(), "tested".into()],
    };
    let mut reports = c.typed::<producer::Report>("reports").unwrap();
    assert_eq!(reports.codec(), Codec::Json);
    reports.send(&report).unwrap();

    // From the library to a script: `payload` is the object itself.
    let got: Value =
        serde_json::from_slice(&ok(&daemon, &["recv", "reports", "--json", "--nowait"]))
            .expect("one JSON object");
    assert_eq!(
        got["payload"],
        json!({"id": 7, "lines": ["built", "tested"]})
    );
    assert!(got.get("payload_b64").is_none(), "{got}");
    assert_eq!(
        got["content_type"],
        "application/json; type=ipcd-tests.Report"
    );

    // From a script to the library: JSON written by hand, tagged with the name, reads as
    // the consumer's struct, whatever the order of its fields.
    let tag = format!("application/json; type={}", consumer::Report::NAME);
    let by_hand = r#"{"lines": ["by hand"], "id": 8}"#;
    ok(
        &daemon,
        &["send", "reports", by_hand, "--content-type", &tag],
    );
    ok(
        &daemon,
        &["send", "reports", by_hand, "--content-type", &tag],
    );
    let got = c
        .typed::<consumer::Report>("reports")
        .unwrap()
        .recv_with(nowait())
        .unwrap()
        .1;
    assert_eq!(
        got,
        consumer::Report {
            lines: vec!["by hand".into()],
            id: 8
        }
    );
    // A reader that wants less of the message takes only that.
    let got = c
        .typed::<consumer::ReportId>("reports")
        .unwrap()
        .recv_with(nowait())
        .unwrap()
        .1;
    assert_eq!(got, consumer::ReportId { id: 8 });

    // A plain string payload stays a string, even when it looks like JSON.
    ok(&daemon, &["send", "reports", by_hand]);
    let got: Value =
        serde_json::from_slice(&ok(&daemon, &["recv", "reports", "--json", "--nowait"]))
            .expect("one JSON object");
    assert_eq!(got["payload"], by_hand);
}

/// Typed topics and calls: a value published as a producer's `Job` reaches an async
/// subscriber as the consumer's `Job`; a typed call is answered with a typed reply.
#[test]
fn typed_publish_subscribe_and_call_go_by_name() {
    let daemon = TestDaemon::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = Client::connect_to(daemon.socket()).await.unwrap();
        let mut jobs = client.subscribe("jobs.*").await.unwrap();
        let report = client
            .publish_typed(
                "jobs.build",
                &producer::Job {
                    id: 1,
                    command: "make".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(report.delivered, 1);
        // Through its `Stream` form, as combinators would read it.
        let message = futures::StreamExt::next(&mut jobs).await.unwrap().unwrap();
        assert_eq!(
            message.headers.topic.as_ref().unwrap().as_str(),
            "jobs.build"
        );
        assert_eq!(
            consumer::Job::from_message(&message).unwrap(),
            consumer::Job {
                id: 1,
                command: "make".into()
            }
        );
        // Read as the other type: a mismatch naming both, not garbage.
        assert!(matches!(
            consumer::ReportId::from_message(&message),
            Err(Error::TypeMismatch { .. })
        ));

        client
            .create("builder", &CreateOptions::default())
            .await
            .unwrap();
        let responder = client.clone();
        let serving = tokio::spawn(async move {
            let request = responder
                .recv("builder", &RecvOptions::default())
                .await
                .unwrap();
            let job = consumer::Job::from_message(&request).unwrap();
            let done = consumer::Report {
                lines: vec![format!("built by {}", job.command)],
                id: job.id,
            };
            responder.reply_typed(&request, &done).await.unwrap();
        });
        let job = producer::Job {
            id: 7,
            command: "cargo".into(),
        };
        let report: producer::Report = client
            .call_typed("builder", &job, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(
            (report.id, report.lines),
            (7, vec!["built by cargo".to_owned()])
        );
        serving.await.unwrap();
    });
}
