//! The writer of received messages, in one of two ways:
//!
//! - **inline** (`--follow`): each message is written and flushed before the next receive
//!   is made, so a reader that goes away (`| head`) costs only the message whose write
//!   failed: every message received is gone from the mailbox.
//! - **threaded** (`--count`): a thread between the receive loop and standard output
//!   flushes whenever it has nothing more to write, so a reader at the other end of a
//!   pipe sees each message as soon as it arrives, yet a burst goes out in large writes.
//!   A broken pipe ends the process with status 0 from that thread (as ripgrep does): the
//!   receive loop may be blocked on the daemon indefinitely and could not notice.

use std::io::{self, BufWriter, StdoutLock, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use ipc_proto::Message;

use crate::output::{self, MessageFormat};

/// Output buffered before a write, when messages come faster than they are written.
const BUFFER: usize = 64 * 1024;

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
        let thread = std::thread::Builder::new()
            .name("stdout".into())
            .spawn(move || {
                if let Err(e) = write_all(&rx, format, &mailbox) {
                    exit_on_write_error(&e);
                }
            })
            .expect("start the output thread");
        Printer::Threaded {
            tx: Some(tx),
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
            Printer::Threaded { tx, .. } => {
                if let Some(tx) = tx {
                    // The writer only stops by ending the process, so the channel cannot
                    // be closed while this handle lives.
                    let _ = tx.send(message);
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
            Printer::Threaded { tx, thread } => {
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

fn write_all(rx: &Receiver<Message>, format: MessageFormat, mailbox: &str) -> io::Result<()> {
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(BUFFER, stdout.lock());
    while let Ok(mut message) = rx.recv() {
        loop {
            output::write_message(&mut out, format, mailbox, &message)?;
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
