//! `ipcctl create`: make a mailbox with a mode, durability and limits.

use std::io::Write;

use ipc_client::CreateOptions;

use super::{Context, mailbox_name, stdout};
use crate::cli::CreateArgs;
use crate::output::write_json;

pub fn run(ctx: &Context, args: CreateArgs) -> anyhow::Result<()> {
    let name = mailbox_name(&args.name)?;
    let options = CreateOptions {
        mode: args.mode,
        durable: args.durable,
        fsync: args.fsync,
        limits: args.limits.changes(),
        delivery: args.delivery.changes(false)?,
        exist_ok: args.exist_ok,
    };
    let created = ctx.connect()?.create(name.as_str(), &options)?;
    if ctx.json {
        let mut out = stdout();
        write_json(
            &mut out,
            &serde_json::json!({ "mailbox": name.as_str(), "created": created }),
        )?;
        out.flush()?;
    }
    Ok(())
}
