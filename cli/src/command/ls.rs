//! `ipcctl ls`: the mailboxes the caller may read or owns, by name.

use std::io::Write;

use super::{Context, stdout};
use crate::output::{MailboxJson, write_json, write_mailbox_table};
use crate::style::Style;

pub fn run(ctx: &Context) -> anyhow::Result<()> {
    let mut list = ctx.connect()?.list()?;
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = stdout();
    if ctx.json {
        for info in &list {
            write_json(&mut out, &MailboxJson::new(info))?;
        }
    } else {
        write_mailbox_table(&mut out, &list, Style::for_stdout())?;
    }
    out.flush()?;
    Ok(())
}
