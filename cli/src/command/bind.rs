//! `ipcctl bind` and `ipcctl unbind`: bind a mailbox to a topic pattern, or undo it.

use std::io::Write;

use ipc_proto::TopicPattern;

use super::{Context, mailbox_name, stdout};
use crate::cli::BindArgs;
use crate::output::write_json;

pub fn run(ctx: &Context, args: &BindArgs, bind: bool) -> anyhow::Result<()> {
    let name = mailbox_name(&args.name)?;
    // Checked before connecting, as a name is: a typo is bad data even with no daemon.
    let pattern = TopicPattern::new(args.pattern.as_str()).map_err(ipc_client::Error::from)?;
    let mut client = ctx.connect()?;
    if bind {
        client.bind(name.as_str(), pattern.as_str())?;
    } else {
        client.unbind(name.as_str(), pattern.as_str())?;
    }
    if ctx.json {
        let mut out = stdout();
        let verb = if bind { "bound" } else { "unbound" };
        write_json(
            &mut out,
            &serde_json::json!({ "mailbox": name.as_str(), "pattern": pattern.as_str(), verb: true }),
        )?;
        out.flush()?;
    }
    Ok(())
}
