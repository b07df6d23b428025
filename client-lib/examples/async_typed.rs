//! The typed async API: a producer task sends `Job`s, a worker receives them as `Job`s,
//! and a receive of the wrong type is an error that names both types. `Job` is named
//! `examples.Job` by `message_type!`, so a program built separately, with its own `Job`
//! of that name, receives these too.
//!
//! ```text
//! cargo run --example async_typed
//! ```

use ipc_client::{Client, CreateOptions, Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Job {
    id: u32,
    command: String,
}
ipc_client::message_type!(Job, "examples.Job");

#[tokio::main]
async fn main() -> Result<()> {
    let client = Client::connect().await?;
    let options = CreateOptions {
        exist_ok: true,
        ..CreateOptions::default()
    };
    client.create("examples/jobs", &options).await?;
    let jobs = client.typed::<Job>("examples/jobs")?;

    let producer = {
        let jobs = jobs.clone();
        tokio::spawn(async move {
            for id in 1..=3 {
                let command = format!("build part {id}");
                jobs.send(&Job { id, command }).await?;
            }
            Ok::<_, Error>(())
        })
    };
    for _ in 0..3 {
        let job = jobs.recv().await?;
        println!("worker: job {} — {}", job.id, job.command);
    }
    producer.await.expect("producer task")?;

    // A message of another type is reported, not decoded into garbage.
    jobs.send(&Job {
        id: 4,
        command: "oops".into(),
    })
    .await?;
    match client.mailbox::<String>("examples/jobs")?.recv().await {
        Err(e @ Error::TypeMismatch { .. }) => println!("as expected: {e}"),
        other => println!("unexpected: {other:?}"),
    }
    client.remove("examples/jobs").await?;
    Ok(())
}
