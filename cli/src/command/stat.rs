//! `ipcctl stat`: one mailbox's settings and counters.

use std::io::Write;

use super::{Context, mailbox_name, stdout};
use crate::output::{MailboxJson, write_json, write_mailbox_human};

pub fn run(ctx: &Context, name: &str) -> anyhow::Result<()> {
    let name = mailbox_name(name)?;
    let info = ctx.connect()?.stat(name.as_str())?;
    let mut out = stdout();
    if ctx.json {
        write_json(&mut out, &MailboxJson::new(&info))?;
    } else {
        write_mailbox_human(&mut out, &info)?;
    }
    out.flush()?;
    Ok(())
}
