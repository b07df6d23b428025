//! `ipcctl rm`: remove a mailbox and its messages.

use std::io::Write;

use super::{Context, mailbox_name, stdout};
use crate::output::write_json;

pub fn run(ctx: &Context, name: &str) -> anyhow::Result<()> {
    let name = mailbox_name(name)?;
    ctx.connect()?.remove(name.as_str())?;
    if ctx.json {
        let mut out = stdout();
        write_json(
            &mut out,
            &serde_json::json!({ "mailbox": name.as_str(), "removed": true }),
        )?;
        out.flush()?;
    }
    Ok(())
}
