//! The writer of received messages, which knows exactly which messages have been written.
//!
//! `recv` acknowledges a message only once its output is written, so this module writes
//! standard output itself — straight to its file descriptor, with no `Stdout` line buffer
//! in between that could hold back a message's last bytes — and keeps, for every message
//! gathered and not yet written in full, where its bytes end. [`Printer::flush`] reports
//! each message as soon as the kernel has taken its last byte, also when a later write
//! then fails: a reader that goes away (`| head -1`) leaves the messages it never got
//! unreported, and so unacknowledged.
//!
//! Output is gathered while messages keep coming and written in large pieces; the caller
//! flushes before it waits for more, so that a reader at the other end of a pipe sees each
//! message as soon as it arrived.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;

use ipc_proto::Message;

use crate::output::{self, MessageFormat};

/// Output gathered before the caller should write it without waiting for a pause.
pub const BUFFER: usize = 64 * 1024;

/// Formats messages and writes them to `W` (standard output outside the tests).
#[derive(Debug)]
pub struct Printer<W = File> {
    out: W,
    format: MessageFormat,
    mailbox: String,
    /// Formatted output, written up to `start`.
    buf: Vec<u8>,
    /// How much of `buf` is written: one write may take part of it.
    start: usize,
    /// Where the bytes of each message gathered and not yet reported end in `buf`, with
    /// its id, oldest first.
    ends: VecDeque<(usize, u64)>,
}

impl Printer<File> {
    /// Writes to this process's standard output, through a descriptor of its own (a
    /// duplicate of descriptor 1).
    pub fn stdout(format: MessageFormat, mailbox: String) -> io::Result<Self> {
        let fd = io::stdout().as_fd().try_clone_to_owned()?;
        Ok(Self::new(File::from(fd), format, mailbox))
    }
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, format: MessageFormat, mailbox: String) -> Self {
        Self {
            out,
            format,
            mailbox,
            buf: Vec::with_capacity(BUFFER),
            start: 0,
            ends: VecDeque::new(),
        }
    }

    /// Adds `message` to the output; it is written by a later [`Self::flush`].
    pub fn push(&mut self, message: &Message) -> io::Result<()> {
        output::write_message(&mut self.buf, self.format, &self.mailbox, message)?;
        self.ends.push_back((self.buf.len(), message.id));
        Ok(())
    }

    /// Bytes gathered and not yet written.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Writes everything gathered. Appends to `written` the id of each message whose
    /// last byte the kernel has taken, as soon as it has, so that on failure `written`
    /// still names every message that did go out in full.
    pub fn flush(&mut self, written: &mut Vec<u64>) -> io::Result<()> {
        loop {
            while let Some(&(end, id)) = self.ends.front() {
                if end > self.start {
                    break;
                }
                written.push(id);
                self.ends.pop_front();
            }
            if self.start == self.buf.len() {
                break;
            }
            match self.out.write(&self.buf[self.start..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.start += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.buf.clear();
        self.start = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use ipc_proto::{Credentials, HeaderBox, Timestamp};

    use super::*;

    /// Takes at most `chunk` bytes per write and fails once `room` bytes are taken, as a
    /// pipe whose reader went away after reading them.
    struct Pipe {
        taken: Vec<u8>,
        room: usize,
        chunk: usize,
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.chunk).min(self.room - self.taken.len());
            if n == 0 {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn message(id: u64, payload: &'static str) -> Message {
        Message {
            id,
            mtype: 1,
            sender: Credentials {
                pid: 1,
                uid: 0,
                gid: 0,
            },
            sent_at: Timestamp(0),
            headers: HeaderBox::default(),
            redelivered: false,
            deliveries: 1,
            payload: Bytes::from_static(payload.as_bytes()),
        }
    }

    fn printer(format: MessageFormat, room: usize, chunk: usize) -> Printer<Pipe> {
        let pipe = Pipe {
            taken: Vec::new(),
            room,
            chunk,
        };
        Printer::new(pipe, format, "q".into())
    }

    #[test]
    fn every_message_written_in_full_is_reported_and_no_other() {
        // "one\n" and "two\n" fit, "three\n" only in part.
        let mut printer = printer(MessageFormat::Line, 10, 3);
        for (id, payload) in [(1, "one"), (2, "two"), (3, "three")] {
            printer.push(&message(id, payload)).unwrap();
        }
        let mut written = Vec::new();
        let e = printer.flush(&mut written).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(written, [1, 2]);
        assert_eq!(printer.out.taken, b"one\ntwo\nth");
    }

    #[test]
    fn a_message_without_bytes_is_written_with_the_one_before() {
        let mut printer = printer(MessageFormat::Raw, 100, 100);
        printer.push(&message(1, "a")).unwrap();
        printer.push(&message(2, "")).unwrap();
        let mut written = Vec::new();
        printer.flush(&mut written).unwrap();
        assert_eq!(written, [1, 2]);
        assert_eq!(printer.buffered(), 0);
        printer.push(&message(3, "")).unwrap();
        printer.flush(&mut written).unwrap();
        assert_eq!(written, [1, 2, 3]);
    }

    #[test]
    fn json_lines_are_reported_once_whole() {
        let mut printer = printer(MessageFormat::Json, 1 << 20, 7);
        printer.push(&message(4, "x")).unwrap();
        let mut written = Vec::new();
        printer.flush(&mut written).unwrap();
        assert_eq!(written, [4]);
        let line: serde_json::Value = serde_json::from_slice(&printer.out.taken).unwrap();
        assert_eq!(line["id"], 4);
        assert_eq!(line["payload"], "x");
    }
}
