//! One module per subcommand, each with a `run` that takes its parsed arguments, talks to
//! the daemon through one `BlockingClient`, and writes its output. The shared pieces —
//! connecting, name checks, the stdout buffer — live here.

use std::io::{self, BufWriter, StdoutLock};
use std::path::PathBuf;

use ipc_client::{BlockingClient, Error};
use ipc_proto::MailboxName;

use crate::cli::{Cli, Command};

mod ack;
mod bind;
mod call;
mod completions;
mod create;
mod exec;
mod ls;
mod man;
mod publish;
mod purge;
mod recv;
mod rm;
mod send;
mod serve;
mod set;
mod stat;
mod status;
mod watch;

/// What every subcommand gets besides its own arguments.
#[derive(Debug)]
pub struct Context {
    pub socket: PathBuf,
    pub json: bool,
}

impl Context {
    /// Connects and shakes hands; the daemon logs the connection as `ipcctl`.
    pub fn connect(&self) -> Result<BlockingClient, Error> {
        BlockingClient::connect_named(&self.socket, "ipcctl")
    }
}

/// Runs the command line's subcommand.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Context {
        socket: cli
            .global
            .socket
            .unwrap_or_else(ipc_client::default_socket_path),
        json: cli.global.json,
    };
    match cli.command {
        Command::Create(args) => create::run(&ctx, args),
        Command::Send(args) => send::run(&ctx, args),
        Command::Recv(args) => recv::run(&ctx, args),
        Command::Ls => ls::run(&ctx),
        Command::Stat(args) => stat::run(&ctx, &args.name),
        Command::Set(args) => set::run(&ctx, args),
        Command::Purge(args) => purge::run(&ctx, &args.name),
        Command::Rm(args) => rm::run(&ctx, &args.name),
        Command::Status => status::run(&ctx),
        Command::Ack(args) => ack::run(&ctx, &args, true),
        Command::Nack(args) => ack::run(&ctx, &args, false),
        Command::Bind(args) => bind::run(&ctx, &args, true),
        Command::Unbind(args) => bind::run(&ctx, &args, false),
        Command::Publish(args) => publish::run(&ctx, args),
        Command::Watch(args) => watch::run(&ctx, &args),
        Command::Call(args) => call::run(&ctx, args),
        Command::Serve(args) => serve::run(&ctx, &args),
        Command::Completions(args) => completions::run(args.shell),
        Command::Man(args) => man::run(args.dir.as_deref()),
    }
}

/// Checks a mailbox name before connecting, so that a typo is reported as bad data (exit
/// 65) even when the daemon is down.
pub fn mailbox_name(name: &str) -> Result<MailboxName, Error> {
    Ok(MailboxName::new(name)?)
}

/// Standard output, buffered; callers flush before returning so that a write error is
/// reported rather than lost in a drop.
pub fn stdout() -> BufWriter<StdoutLock<'static>> {
    BufWriter::with_capacity(64 * 1024, io::stdout().lock())
}
