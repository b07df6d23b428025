//! `ipcctl purge`: drop every queued message of a mailbox and say how many went.

use std::io::Write;

use super::{Context, mailbox_name, stdout};
use crate::output::write_json;

pub fn run(ctx: &Context, name: &str) -> anyhow::Result<()> {
    let name = mailbox_name(name)?;
    let purged = ctx.connect()?.purge(name.as_str())?;
    let mut out = stdout();
    if ctx.json {
        write_json(
            &mut out,
            &serde_json::json!({ "mailbox": name.as_str(), "purged": purged }),
        )?;
    } else {
        let plural = if purged == 1 { "" } else { "s" };
        writeln!(out, "purged {purged} message{plural} from {name}")?;
    }
    out.flush()?;
    Ok(())
}
