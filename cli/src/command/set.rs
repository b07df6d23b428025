//! `ipcctl set`: change a mailbox's mode, owner or limits; with `--json` the mailbox as it
//! is afterwards.

use std::io::Write;

use ipc_proto::MailboxChanges;

use super::{Context, mailbox_name, stdout};
use crate::cli::SetArgs;
use crate::output::{MailboxJson, write_json};

pub fn run(ctx: &Context, args: SetArgs) -> anyhow::Result<()> {
    let name = mailbox_name(&args.name)?;
    let changes = MailboxChanges {
        mode: args.mode,
        owner_uid: args.owner.and_then(|o| o.uid),
        owner_gid: args.owner.and_then(|o| o.gid),
        limits: args.limits.changes(),
        delivery: args.delivery.changes(args.no_dead_letter)?,
    };
    let info = ctx.connect()?.set(name.as_str(), changes)?;
    if ctx.json {
        let mut out = stdout();
        write_json(&mut out, &MailboxJson::new(&info))?;
        out.flush()?;
    }
    Ok(())
}
