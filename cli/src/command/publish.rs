//! `ipcctl publish`: one message on a topic, a copy into every mailbox bound to a
//! matching pattern; prints how many took it and how many refused. A refusal by some
//! mailboxes is not a failure of the command: the publisher is told, and goes on.

use std::io::Write;

use ipc_client::SendOptions;
use ipc_proto::Topic;

use super::send::read_payload;
use super::{Context, stdout};
use crate::cli::PublishArgs;
use crate::output::write_json;

pub fn run(ctx: &Context, args: PublishArgs) -> anyhow::Result<()> {
    let topic = Topic::new(args.topic.as_str()).map_err(ipc_client::Error::from)?;
    let payload = read_payload(args.data, args.file)?;
    let mut options = SendOptions::mtype(args.mtype);
    options.headers.content_type = args.content_type;
    options.ttl = args.ttl;
    let mut client = ctx.connect()?;
    let report = client.publish(topic.as_str(), payload, &options)?;
    let mut out = stdout();
    if ctx.json {
        write_json(
            &mut out,
            &serde_json::json!({
                "topic": topic.as_str(),
                "delivered": report.delivered,
                "full": report.full,
                "denied": report.denied,
                "failed": report.failed,
            }),
        )?;
    } else {
        let refused = report.full + report.denied + report.failed;
        write!(out, "delivered to {} mailboxes", report.delivered)?;
        if refused > 0 {
            write!(
                out,
                "; refused by {refused} ({} full, {} denied, {} other)",
                report.full, report.denied, report.failed
            )?;
        }
        writeln!(out)?;
    }
    out.flush()?;
    Ok(())
}
