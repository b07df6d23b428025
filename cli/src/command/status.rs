//! `ipcctl status`: the daemon's version, uptime, load and per-uid usage.

use std::io::Write;

use super::{Context, stdout};
use crate::output::{StatusJson, write_json, write_status_human};
use crate::style::Style;

pub fn run(ctx: &Context) -> anyhow::Result<()> {
    let mut client = ctx.connect()?;
    let status = client.status()?;
    let status = StatusJson::new(&status, client.socket_path());
    let mut out = stdout();
    if ctx.json {
        write_json(&mut out, &status)?;
    } else {
        write_status_human(&mut out, &status, Style::for_stdout())?;
    }
    out.flush()?;
    Ok(())
}
