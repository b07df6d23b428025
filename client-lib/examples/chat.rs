//! The classic chat server of every sockets course — each client's line goes to every
//! other connected client — with ipcd as the server: each participant subscribes to the
//! room's topics and publishes its lines on its own topic, `chat.<room>.<name>`.
//!
//! ```text
//! cargo run --example chat -- alice      # in one terminal
//! cargo run --example chat -- bob        # in another; type lines in either
//! ```

use ipc_client::{Client, Result, SendOptions};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args
        .next()
        .unwrap_or_else(|| format!("guest{}", std::process::id()));
    let room = args.next().unwrap_or_else(|| "lobby".to_owned());
    let me = format!("chat.{room}.{name}");

    let client = Client::connect().await?;
    // A private mailbox bound to the room, gone when this program is.
    let mut room_feed = client.subscribe(&format!("chat.{room}.*")).await?;
    let options = SendOptions::default();
    client
        .publish(&me, format!("* {name} joined"), &options)
        .await?;

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    client.publish(&me, line, &options).await?;
                }
                // End of input, or a terminal gone: leave the room.
                _ => break,
            },
            message = room_feed.next() => {
                let Some(message) = message else { break };
                let message = message?;
                let topic = message.headers.topic.as_ref().map(|t| t.as_str());
                // Everyone else's lines; ours come back to us too, and are skipped.
                if topic != Some(me.as_str()) {
                    let from = topic.and_then(|t| t.rsplit('.').next()).unwrap_or("?");
                    println!("{from}: {}", String::from_utf8_lossy(&message.payload));
                }
            }
        }
    }
    client
        .publish(&me, format!("* {name} left"), &options)
        .await?;
    Ok(())
}
