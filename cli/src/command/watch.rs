//! `ipcctl watch`: subscribe to a topic pattern and print what is published on matching
//! topics as it comes. The daemon keeps the subscription in a private mailbox bounded by
//! its `subscription_msgs`/`subscription_bytes`; a watcher that falls behind loses the
//! oldest messages, and is told on stderr how many. The subscription ends with the
//! command: its mailbox, and whatever it still held, goes with the connection.

use std::io::Write;

use ipc_proto::TopicPattern;

use super::{Context, stdout};
use crate::cli::WatchArgs;
use crate::output::{MessageFormat, write_message};

pub fn run(ctx: &Context, args: &WatchArgs) -> anyhow::Result<()> {
    let pattern = TopicPattern::new(args.pattern.as_str()).map_err(ipc_client::Error::from)?;
    let mut client = ctx.connect()?;
    let mut subscription = client.subscribe(pattern.as_str())?;
    let mailbox = subscription.mailbox().clone();
    let format = if ctx.json {
        MessageFormat::Json
    } else {
        MessageFormat::Line
    };
    let mut out = stdout();
    let (mut printed, mut dropped) = (0u64, 0u64);
    while args.count.is_none_or(|n| printed < n) {
        let Some(message) = subscription.next() else {
            break;
        };
        let message = message?;
        if subscription.dropped() > dropped {
            out.flush()?;
            eprintln!(
                "ipcctl: watch fell behind: {} messages dropped",
                subscription.dropped() - dropped
            );
            dropped = subscription.dropped();
        }
        if args.verbose {
            let topic = message.headers.topic.as_ref().map_or("-", |t| t.as_str());
            write!(out, "{topic} ")?;
        }
        write_message(&mut out, format, mailbox.as_str(), &message)?;
        printed += 1;
        if subscription.buffered() == 0 {
            out.flush()?;
        }
    }
    out.flush()?;
    Ok(())
}
