//! `ipcctl recv`: take (or peek at) one message, `--count N` of them pipelined and
//! printed in order, or keep taking them with `--follow`, which outlives a restart of the
//! daemon: it reconnects (with the library's backoff, for up to 30 s) and goes on, with a
//! note on stderr.
//!
//! Nothing taken is lost when the command stops at a bad moment. Each receive leases its
//! message to this connection (an attached lease, `--lease` long), and the message is
//! acknowledged only once its output has been written to standard output; the acks ride
//! the same pipeline as the receives. A message taken and not written — the reader went
//! away (`| head -1`), or the process was interrupted or killed — is never acknowledged:
//! its lease ends when the connection closes, and it is back in the mailbox. A message
//! written whose ack had not reached the daemon when the process died comes again, so
//! delivery is at least once; a message this command wrote that comes back to it (its
//! lease ran out while a slow reader held up the output) is acknowledged without being
//! written twice. `--ack` takes detached leases that outlive the command, for the user to
//! settle with `ipcctl ack`; `--peek` takes nothing.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::time::Duration;

use anyhow::Context as _;
use ipc_client::{BlockingClient, Error, ReconnectPolicy};
use ipc_proto::{
    ErrorCode, Lease, MAX_BATCH, MailboxName, Message, RecvBatchRequest, RecvRequest, Request,
    Response, Selector, Timestamp,
};

use super::{Context, exec, mailbox_name};
use crate::cli::RecvArgs;
use crate::output::MessageFormat;
use crate::pipeline::{self, Pipeline};
use crate::printer::{self, Printer};

/// How many messages written are remembered, to recognise one that comes back.
const REMEMBERED: usize = 4096;

/// The most requests (receives and acks) kept in flight, whatever the daemon allows.
const MAX_IN_FLIGHT: usize = 4096;

/// Messages one batched receive asks for: enough that the cost of a request is spread
/// thin, few enough that a batch is printed (and its acks sent) without delay.
const BATCH: usize = 256;

/// Whether `request` may be made as a batch on `client`'s daemon: a receive that takes
/// (a peek takes nothing, and has no batched form), on a daemon that has batches.
fn batches(client: &BlockingClient, request: &Request) -> bool {
    let takes = matches!(request, Request::Recv(r) if !r.peek);
    takes
        && client
            .welcome()
            .features
            .iter()
            .any(|f| f == ipc_proto::FEATURE_BATCH)
}

pub fn run(ctx: &Context, args: RecvArgs) -> anyhow::Result<()> {
    let mailbox = mailbox_name(&args.name)?;
    let format = if ctx.json {
        MessageFormat::Json
    } else if args.raw {
        MessageFormat::Raw
    } else {
        MessageFormat::Line
    };
    // `--ack` leases are detached: the command exits, the lease stays until acked. Any
    // other receive but a peek leases its message to this connection until it is written.
    let lease = (!args.peek).then(|| Lease {
        timeout_ms: u64::try_from(args.lease.as_millis()).unwrap_or(u64::MAX),
        detached: args.ack,
    });
    let request = Request::Recv(RecvRequest {
        mailbox: mailbox.clone(),
        selector: Selector::from_msgrcv(args.mtype, args.except),
        wait: args.wait.wait(),
        peek: args.peek,
        lease,
        max_size: None,
    });
    let mut client = ctx.connect()?;
    if let Some(command) = &args.exec {
        return exec::run(
            &mut client,
            &mailbox,
            &request,
            command,
            args.count,
            args.follow,
        );
    }
    let printer =
        Printer::stdout(format, mailbox.to_string()).context("cannot write to standard output")?;
    let limit = (!args.follow).then(|| args.count.unwrap_or(1));
    let mut taking = Taking {
        settle: lease.is_some_and(|l| !l.detached),
        lease: args.lease,
        mailbox,
        request,
        limit,
        printer,
        written: Vec::new(),
        to_ack: VecDeque::new(),
        seen: Seen::default(),
        printed: 0,
        failure: None,
        lapse_noted: false,
        unconfirmed: 0,
    };
    if args.follow {
        follow(&mut client, &mut taking)
    } else {
        let end = taking.run(&mut client)?;
        taking.finish(end)
    }
}

/// `--follow`: one receive at a time, each message written (and its ack on its way)
/// before the next receive is made, so that a reader that stops (`| head`) or a slow one
/// holds up one message at most.
///
/// A lost connection — the daemon killed or restarted, or answering `ShuttingDown` — is
/// made again and following goes on, with one line on stderr. A receive whose connection
/// broke took nothing that survives (a message taken from a memory mailbox went with the
/// old daemon; a lease ends with its connection and is redelivered), so nothing is
/// skipped by receiving again; a message written whose ack the break cut off comes back
/// and is acknowledged without being written again. If no daemon answers within the
/// policy's wait, the command fails as any lost connection does (exit 69).
fn follow(client: &mut BlockingClient, taking: &mut Taking) -> anyhow::Result<()> {
    let policy = ReconnectPolicy::default();
    loop {
        match taking.run(client)? {
            End::Lost(lost) => {
                if let Err(e) = client.reconnect(&policy) {
                    taking.failure.get_or_insert(e);
                    return taking.finish(End::Done);
                }
                eprintln!(
                    "ipcctl: {lost}; reconnected to {}",
                    client.socket_path().display()
                );
            }
            end => return taking.finish(end),
        }
    }
}

/// What a request in the pipeline was.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// A receive of up to this many messages (more than one: a batched receive).
    Recv(usize),
    /// The ack of message `id`; `again` when it had come back after being written once.
    Ack { id: u64, again: bool },
}

/// Why [`Taking::run`] returned.
#[derive(Debug)]
enum End {
    /// Everything asked for was received and written, or a failure was met (in
    /// `Taking::failure`).
    Done,
    /// Standard output was closed by its reader: success, as for any filter.
    ReaderGone,
    /// The connection broke; with `--follow`, it is made again.
    Lost(Error),
}

/// The receive loop's state, which outlives a connection when `--follow` makes another.
#[derive(Debug)]
struct Taking {
    /// Acknowledge each message once written: its lease is this connection's.
    settle: bool,
    /// The lease asked for, for the note when one ran out.
    lease: Duration,
    mailbox: MailboxName,
    request: Request,
    /// Messages to print; `None` with `--follow`.
    limit: Option<u64>,
    printer: Printer,
    /// Scratch for [`Printer::flush`].
    written: Vec<u64>,
    /// Messages written whose ack is still to be submitted: `(id, written again)`.
    to_ack: VecDeque<(u64, bool)>,
    seen: Seen,
    /// Messages given to the printer.
    printed: u64,
    /// The first failure; nothing received after it is printed.
    failure: Option<Error>,
    /// Whether the note about a lease that ran out has been given.
    lapse_noted: bool,
    /// Messages written whose ack the loss of the connection left unanswered.
    unconfirmed: u64,
}

impl Taking {
    /// Receives, writes and acknowledges on `client` until the limit is reached, a
    /// failure is met, the reader goes away, or the connection breaks.
    fn run(&mut self, client: &mut BlockingClient) -> anyhow::Result<End> {
        // Every request waiting at the daemon counts against the connection's in-flight
        // allowance, so receives and acks together stay within it. Receives take at most
        // half the usual window (each may bring back a large message); acks, whose
        // replies are tiny, may use the rest of the allowance. They are unordered, so one
        // answered late holds up no receive, and a durable mailbox, which answers an ack
        // once its removal is stored, stores many per sync. `--follow` takes one message
        // at a time.
        let window = usize::try_from(client.welcome().max_in_flight)
            .unwrap_or(usize::MAX)
            .clamp(2, MAX_IN_FLIGHT);
        let depth = match self.limit {
            None => 1,
            Some(n) => usize::try_from(n).map_or(usize::MAX, |n| {
                n.min(pipeline::window(client) / 2).min(window / 2).max(1)
            }),
        };
        // With `--count`, receives are batched where the daemon can (not peeks, which
        // take nothing): each asks for up to a batch of what is still wanted, and the
        // depth is counted in messages, so a batch fills what single receives would.
        let batch = if self.limit.is_some() && batches(client, &self.request) {
            BATCH
        } else {
            1
        };
        let depth = if batch > 1 {
            self.limit.map_or(1, |n| {
                usize::try_from(n).map_or(2 * batch, |n| n.min(2 * batch))
            })
        } else {
            depth
        };
        let mut pipeline: Pipeline<'_, Op> = Pipeline::new(client, window);
        // Messages asked for by the receives in flight.
        let mut receiving = 0usize;
        // Refilled in batches, once half the receives are answered: each refill costs a
        // write to the socket.
        let mut filling = true;
        loop {
            if !pipeline.has_outcome() {
                // About to wait: what is gathered goes out now, and the acks of what was
                // written go with the next write to the socket.
                if let Some(end) = self.write_out(&mut pipeline)? {
                    return Ok(end);
                }
            }
            while !self.to_ack.is_empty() && !pipeline.is_full() {
                let (id, again) = self.to_ack.pop_front().expect("not empty");
                let ack = Request::Ack {
                    mailbox: self.mailbox.clone(),
                    id,
                };
                // A broken connection ended the lease: the message comes again.
                if let Err(e) = pipeline.submit_unordered(Op::Ack { id, again }, &ack) {
                    return Ok(self.lost(e));
                }
            }
            if receiving >= depth {
                filling = false;
            } else if receiving <= depth / 2 {
                filling = true;
            }
            let mut submitted = false;
            while filling && receiving < depth && !pipeline.is_full() && self.wants(receiving) {
                let asked = self.asked(receiving, batch);
                let request = self.receive(asked);
                if let Err(e) = pipeline.submit(Op::Recv(asked), &request) {
                    if e.is_connection_lost() {
                        return Ok(self.lost(e));
                    }
                    self.failure = Some(e);
                    break;
                }
                receiving += asked;
                submitted = true;
            }
            if submitted && pipeline.has_outcome() {
                // The daemon gets the new receives while the replies at hand are printed.
                if let Err(e) = pipeline.flush() {
                    return Ok(self.lost(e));
                }
            }
            let Some((op, outcome)) = pipeline.next() else {
                return Ok(End::Done);
            };
            match op {
                Op::Recv(asked) => {
                    receiving -= asked;
                    let messages = outcome.and_then(|reply| match reply {
                        Response::Messages(messages) => Ok(messages),
                        other => ipc_client::reply::message(other).map(|m| vec![m]),
                    });
                    match messages {
                        Ok(messages) => {
                            for message in &messages {
                                self.take(message)?;
                            }
                        }
                        Err(e) if e.is_connection_lost() => return Ok(self.lost(e)),
                        // Later receives still in flight are cancelled; any that got a
                        // message first are not printed, and their messages go back
                        // when the connection closes.
                        Err(e) => {
                            if self.failure.is_none() {
                                self.failure = Some(e);
                                let _ = pipeline.cancel_pending();
                            }
                        }
                    }
                }
                Op::Ack { id, again } => self.acked(id, again, outcome)?,
            }
            if self.printer.buffered() >= printer::BUFFER {
                if let Some(end) = self.write_out(&mut pipeline)? {
                    return Ok(end);
                }
            }
        }
    }

    /// How many messages the next receive asks for, with `receiving` asked for by those
    /// in flight: what is still wanted, up to `batch`.
    fn asked(&self, receiving: usize, batch: usize) -> usize {
        let wanted = self
            .limit
            .map_or(1, |n| n.saturating_sub(self.printed + receiving as u64));
        usize::try_from(wanted)
            .unwrap_or(usize::MAX)
            .clamp(1, batch)
    }

    /// The receive to make for `asked` messages: the command's own receive for one, a
    /// batched receive with the same terms for more.
    fn receive(&self, asked: usize) -> Request {
        match &self.request {
            Request::Recv(r) if asked > 1 => Request::RecvBatch(RecvBatchRequest {
                mailbox: r.mailbox.clone(),
                selector: r.selector,
                max: u32::try_from(asked).unwrap_or(MAX_BATCH),
                wait: r.wait,
                lease: r.lease,
            }),
            request => request.clone(),
        }
    }

    /// Whether to make another receive, with `receiving` in flight.
    fn wants(&self, receiving: usize) -> bool {
        self.failure.is_none()
            && self
                .limit
                .is_none_or(|n| self.printed + (receiving as u64) < n)
    }

    /// A message received: to the printer, unless this command wrote it already.
    fn take(&mut self, message: &Message) -> anyhow::Result<()> {
        if self.failure.is_some() {
            return Ok(());
        }
        if self.settle {
            if message.redelivered && self.seen.contains(message) {
                self.to_ack.push_back((message.id, true));
                return Ok(());
            }
            self.seen.insert(message);
        }
        self.printer
            .push(message)
            .context("cannot format a message")?;
        self.printed += 1;
        Ok(())
    }

    /// Writes what is gathered and queues the acks of what went out. `Some` when the
    /// output is gone: then the acks of what was written are made before returning.
    fn write_out(&mut self, pipeline: &mut Pipeline<'_, Op>) -> anyhow::Result<Option<End>> {
        let result = self.printer.flush(&mut self.written);
        if self.settle {
            self.to_ack
                .extend(self.written.iter().map(|&id| (id, false)));
        }
        self.written.clear();
        let Err(e) = result else {
            return Ok(None);
        };
        // The output is gone: nothing more is taken. What was written is acknowledged;
        // the rest goes back when the connection closes.
        let _ = pipeline.cancel_pending();
        self.settle_written(pipeline)?;
        if e.kind() == io::ErrorKind::BrokenPipe {
            Ok(Some(End::ReaderGone))
        } else {
            Err(anyhow::Error::from(e).context("cannot write to standard output"))
        }
    }

    /// After the output failed: makes the acks still to make and reads every outcome, so
    /// that the connection closes with nothing unanswered.
    fn settle_written(&mut self, pipeline: &mut Pipeline<'_, Op>) -> anyhow::Result<()> {
        loop {
            while !self.to_ack.is_empty() && !pipeline.is_full() {
                let (id, again) = self.to_ack.pop_front().expect("not empty");
                let ack = Request::Ack {
                    mailbox: self.mailbox.clone(),
                    id,
                };
                if pipeline
                    .submit_unordered(Op::Ack { id, again }, &ack)
                    .is_err()
                {
                    self.to_ack.clear();
                }
            }
            match pipeline.next() {
                None => return Ok(()),
                Some((Op::Ack { id, again }, outcome)) => self.acked(id, again, outcome)?,
                Some((Op::Recv(_), _)) => {}
            }
        }
    }

    /// The outcome of the ack of message `id`.
    fn acked(
        &mut self,
        id: u64,
        again: bool,
        outcome: Result<Response, Error>,
    ) -> anyhow::Result<()> {
        match outcome.and_then(ipc_client::reply::ok) {
            Ok(()) => {}
            // The lease ran out before the ack: the message was written, and is back in
            // the mailbox. A copy that came back to this command is acknowledged (above)
            // and not written again; another receiver may get one.
            Err(Error::Server {
                code: ErrorCode::NotLeased,
                ..
            }) => {
                if !again && !self.lapse_noted {
                    self.lapse_noted = true;
                    eprintln!(
                        "ipcctl: message {id} was written after its {} lease ran out, so it \
                         may be delivered again; a longer --lease suits a slow reader",
                        humantime::format_duration(self.lease)
                    );
                }
            }
            // If the ack did not reach the daemon, the lease ended with the connection
            // and the message comes again.
            Err(e) if e.is_connection_lost() => self.unconfirmed += u64::from(!again),
            Err(e) => {
                if self.failure.is_none() {
                    self.failure = Some(e);
                }
            }
        }
        Ok(())
    }

    /// The connection broke: what was gathered is still written (a message of a memory
    /// mailbox died with the daemon, and this is its only copy; one whose lease ended
    /// comes again, at least once), and nothing is acknowledged on it any more.
    fn lost(&mut self, e: Error) -> End {
        self.to_ack.clear();
        if let Err(write) = self.printer.flush(&mut self.written) {
            self.written.clear();
            if write.kind() == io::ErrorKind::BrokenPipe {
                return End::ReaderGone;
            }
        }
        self.written.clear();
        End::Lost(e)
    }

    /// The command's result once the loop has ended.
    fn finish(&mut self, end: End) -> anyhow::Result<()> {
        let failure = match end {
            End::ReaderGone => return Ok(()),
            End::Lost(e) => Some(e),
            End::Done => self.failure.take(),
        };
        let Some(e) = failure else {
            if self.unconfirmed > 0 {
                eprintln!(
                    "ipcctl: the connection to ipcd was lost before {} of the messages \
                     written were acknowledged; they may be delivered again",
                    self.unconfirmed
                );
            }
            return Ok(());
        };
        let printed = self.printed;
        let e = anyhow::Error::from(e);
        Err(match self.limit {
            Some(1) => e,
            Some(n) => e.context(format!("received {printed} of {n} messages")),
            None => e.context(format!(
                "received {printed} message{}",
                if printed == 1 { "" } else { "s" }
            )),
        })
    }
}

/// The most recent messages this command wrote, by id and time sent (an id alone may
/// come again from a mailbox removed and made anew).
#[derive(Debug, Default)]
struct Seen {
    order: VecDeque<(u64, Timestamp)>,
    set: HashSet<(u64, Timestamp)>,
}

impl Seen {
    fn insert(&mut self, message: &Message) {
        let key = (message.id, message.sent_at);
        if self.set.insert(key) {
            self.order.push_back(key);
            if self.order.len() > REMEMBERED {
                let old = self.order.pop_front().expect("not empty");
                self.set.remove(&old);
            }
        }
    }

    fn contains(&self, message: &Message) -> bool {
        self.set.contains(&(message.id, message.sent_at))
    }
}
