//! The writer of received messages, in one of two ways:
//!
//! - **inline** (`--follow`): each message is written and flushed before the next receive
//!   is made, so a reader that goes away (`| head`) costs only the message whose write
//!   failed: every message received is gone from the mailbox.
//! - **threaded** (`--count`): a thread between the receive loop and standard output
//!   flushes whenever it has nothing more to write, so a reader at the other end of a
//!   pipe sees each message as soon as it arrives, yet a burst goes out in large writes.
//!   What waits for it is bounded by count and by bytes ([`BYTE_BUDGET`]), so a slow
//!   reader of large messages does not make the command hold hundreds of them.
//!   A broken pipe ends the process with status 0 from that thread (as ripgrep does): the
//!   receive loop may be blocked on the daemon indefinitely and could not notice.

use std::io::{self, BufWriter, StdoutLock, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use ipc_proto::Message;

use crate::output::{self, MessageFormat};

/// Output buffered before a write, when messages come faster than they are written.
const BUFFER: usize = 64 * 1024;

/// Payload bytes that may wait for the writer thread before the receive loop waits too.
/// One message larger than this is still handed over, alone.
pub const BYTE_BUDGET: usize = 8 * 1024 * 1024;

/// Payload bytes handed to the writer thread and not yet written.
#[derive(Debug, Default)]
pub struct Budget {
    state: Mutex<Queued>,
    freed: Condvar,
}

#[derive(Debug, Default)]
struct Queued {
    bytes: usize,
    /// The receive loop waits for room: only then does the writer signal, so that the
    /// usual case costs two uncontended locks per message and no system call.
    waiting: bool,
}

impl Budget {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts `len` more bytes queued; before the message goes to the writer, which may
    /// give them back at once.
    fn add(&self, len: usize) {
        self.lock().bytes += len;
    }

    /// Waits while more than the budget is queued.
    fn wait_for_room(&self) {
        let mut queued = self.lock();
        while queued.bytes > BYTE_BUDGET {
            queued.waiting = true;
            queued = self
                .freed
                .wait(queued)
                .unwrap_or_else(PoisonError::into_inner);
        }
        queued.waiting = false;
    }

    fn give_back(&self, len: usize) {
        let mut queued = self.lock();
        queued.bytes -= len;
        if queued.waiting {
            self.freed.notify_one();
        }
    }
}

/// Where received messages go.
#[derive(Debug)]
pub enum Printer {
    Inline {
        out: BufWriter<StdoutLock<'static>>,
        format: MessageFormat,
        mailbox: String,
    },
    Threaded {
        tx: Option<SyncSender<Message>>,
        budget: Arc<Budget>,
        thread: Option<JoinHandle<()>>,
    },
}

impl Printer {
    /// Writes each message before returning from [`Self::print`].
    pub fn inline(format: MessageFormat, mailbox: String) -> Self {
        Printer::Inline {
            out: BufWriter::with_capacity(BUFFER, io::stdout().lock()),
            format,
            mailbox,
        }
    }

    /// Starts a writer thread; `backlog` messages may wait for it before
    /// [`Self::print`] blocks.
    pub fn threaded(format: MessageFormat, mailbox: String, backlog: usize) -> Self {
        let (tx, rx) = mpsc::sync_channel(backlog);
        let budget = Arc::new(Budget::default());
        let written = Arc::clone(&budget);
        let thread = std::thread::Builder::new()
            .name("stdout".into())
            .spawn(move || {
                if let Err(e) = write_all(&rx, &written, format, &mailbox) {
                    exit_on_write_error(&e);
                }
            })
            .expect("start the output thread");
        Printer::Threaded {
            tx: Some(tx),
            budget,
            thread: Some(thread),
        }
    }

    /// Writes `message`, or hands it to the writer thread.
    pub fn print(&mut self, message: Message) -> io::Result<()> {
        match self {
            Printer::Inline {
                out,
                format,
                mailbox,
            } => {
                output::write_message(out, *format, mailbox, &message)?;
                out.flush()
            }
            Printer::Threaded { tx, budget, .. } => {
                let Some(tx) = tx else {
                    return Ok(());
                };
                budget.add(message.payload.len());
                // Waiting comes after the hand-over, so one message larger than the
                // budget waits only for itself. The writer stops only by ending the
                // process; should its thread die otherwise, nothing is left to wait for.
                if tx.send(message).is_ok() {
                    budget.wait_for_room();
                }
                Ok(())
            }
        }
    }

    /// Waits until every message handed over is written and flushed.
    pub fn finish(mut self) -> io::Result<()> {
        self.close()
    }

    fn close(&mut self) -> io::Result<()> {
        match self {
            Printer::Inline { out, .. } => out.flush(),
            Printer::Threaded { tx, thread, .. } => {
                drop(tx.take());
                if let Some(thread) = thread.take() {
                    let _ = thread.join();
                }
                Ok(())
            }
        }
    }
}

impl Drop for Printer {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn write_all(
    rx: &Receiver<Message>,
    budget: &Budget,
    format: MessageFormat,
    mailbox: &str,
) -> io::Result<()> {
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(BUFFER, stdout.lock());
    while let Ok(mut message) = rx.recv() {
        loop {
            output::write_message(&mut out, format, mailbox, &message)?;
            budget.give_back(message.payload.len());
            match rx.try_recv() {
                Ok(next) => message = next,
                Err(_) => break,
            }
        }
        out.flush()?;
    }
    out.flush()
}

fn exit_on_write_error(e: &io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    let _ = writeln!(io::stderr(), "ipcctl: cannot write to standard output: {e}");
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_holds_the_receiver_until_the_writer_catches_up() {
        let budget = Arc::new(Budget::default());
        // Under the budget: no wait.
        budget.add(BYTE_BUDGET);
        budget.wait_for_room();
        // One byte over: wait until the writer gives back, whichever runs first.
        budget.add(1);
        let writer = {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || budget.give_back(BYTE_BUDGET))
        };
        budget.wait_for_room();
        writer.join().unwrap();
        budget.give_back(1);
        assert_eq!(budget.lock().bytes, 0);
        assert!(!budget.lock().waiting);
    }
}
