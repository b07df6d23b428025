//! `ipcctl send`: one message from an argument, a file or standard input, or with
//! `--lines` one message per input line, pipelined.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use bytes::Bytes;
use ipc_client::{BlockingClient, Error};
use ipc_proto::{
    BatchMessage, HEADER_LEN, Headers, MailboxName, Request, Response, SendBatchRequest,
    SendRequest,
};
use serde::Serialize;

use super::{Context, mailbox_name, stdout};
use crate::cli::SendArgs;
use crate::output::write_json;
use crate::pipeline::{self, Pipeline};
use crate::report::Usage;

/// Input read per read call in `--lines` mode; large, because the pipeline drains before
/// each refill (see [`send_lines`]).
const INPUT_BUFFER: usize = 64 * 1024;

/// Where the payload comes from.
#[derive(Debug)]
enum Source {
    Data(Vec<u8>),
    File(PathBuf),
    Stdin,
}

impl Source {
    /// SPEC §9: DATA; else `--file`; else standard input when DATA is `-`, or when DATA
    /// is absent and standard input is not a terminal (someone typing is more likely to
    /// have forgotten DATA than to mean an interactive payload).
    fn choose(data: Option<OsString>, file: Option<PathBuf>) -> Result<Self, Usage> {
        match (data, file) {
            (Some(data), _) if data == "-" => Ok(Source::Stdin),
            (Some(data), _) => Ok(Source::Data(data.into_vec())),
            (None, Some(path)) if path == Path::new("-") => Ok(Source::Stdin),
            (None, Some(path)) => Ok(Source::File(path)),
            (None, None) if io::stdin().is_terminal() => Err(Usage(
                "no payload: give DATA, --file F, or `-` to read standard input".into(),
            )),
            (None, None) => Ok(Source::Stdin),
        }
    }

    fn open(self) -> anyhow::Result<Box<dyn Read>> {
        Ok(match self {
            Source::Data(data) => Box::new(io::Cursor::new(data)),
            Source::File(path) => Box::new(
                File::open(&path).with_context(|| format!("cannot open {}", path.display()))?,
            ),
            Source::Stdin => Box::new(io::stdin()),
        })
    }

    fn describe(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            _ => "standard input".into(),
        }
    }
}

/// The whole payload given as DATA, `--file F` or standard input, read before
/// connecting so that input problems are reported first (`publish`, `call`).
pub(super) fn read_payload(data: Option<OsString>, file: Option<PathBuf>) -> anyhow::Result<Bytes> {
    let source = Source::choose(data, file)?;
    let what = source.describe();
    let mut payload = Vec::new();
    source
        .open()?
        .read_to_end(&mut payload)
        .with_context(|| format!("cannot read {what}"))?;
    Ok(Bytes::from(payload))
}

/// A sent message in `send --json`.
#[derive(Debug, Serialize)]
struct SentJson<'a> {
    mailbox: &'a str,
    id: u64,
    /// The input line it came from, with `--lines`.
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u64>,
}

pub fn run(ctx: &Context, args: SendArgs) -> anyhow::Result<()> {
    let mailbox = mailbox_name(&args.name)?;
    let reply_to = args.reply_to.as_deref().map(mailbox_name).transpose()?;
    let template = SendRequest {
        mailbox,
        mtype: args.mtype,
        headers: Headers {
            reply_to,
            correlation_id: args.correlation_id,
            content_type: args.content_type,
            topic: None,
        }
        .into(),
        wait: args.wait.wait(),
        ttl_ms: args.ttl.map(crate::cli::millis),
        delay_ms: args.delay.map(crate::cli::millis),
        payload: Bytes::new(),
    };
    let source = Source::choose(args.data, args.file)?;
    let what = source.describe();
    // Input problems are reported before a connection is made.
    let mut input = source.open()?;
    if args.lines {
        let input = BufReader::with_capacity(INPUT_BUFFER, input);
        let mut client = ctx.connect()?;
        return send_lines(ctx, &mut client, &template, input, &what);
    }
    let mut payload = Vec::new();
    input
        .read_to_end(&mut payload)
        .with_context(|| format!("cannot read {what}"))?;
    let mut client = ctx.connect()?;
    check_size(&client, payload.len())?;
    let request = Request::Send(SendRequest {
        payload: Bytes::from(payload),
        ..template.clone()
    });
    let id = sent_id(client.request(&request)?)?;
    if ctx.json {
        let mut out = stdout();
        write_json(&mut out, &sent_json(&template.mailbox, id, None))?;
        out.flush()?;
    }
    Ok(())
}

/// Refuses a payload above the daemon's ceiling before it is encoded: the daemon would
/// refuse it anyway, and this says so in the terms of the payload, not of frames.
fn check_size(client: &BlockingClient, len: usize) -> Result<(), Error> {
    let max = client.welcome().max_msg_size;
    if u64::try_from(len).is_ok_and(|len| len <= max) {
        return Ok(());
    }
    Err(Error::BadData(format!(
        "payload of {len} bytes exceeds the largest message ipcd accepts ({max} bytes)"
    )))
}

fn sent_id(response: Response) -> Result<u64, Error> {
    ipc_client::reply::sent(response)
}

fn sent_json(mailbox: &MailboxName, id: u64, line: Option<u64>) -> SentJson<'_> {
    SentJson {
        mailbox: mailbox.as_str(),
        id,
        line,
    }
}

/// Lines one batched send carries at most…
const BATCH_LINES: usize = ipc_proto::MAX_BATCH as usize;
/// …and bytes, counting each line's payload, headers and [`LINE_FIELDS`]: far past where
/// the cost of a request matters. A daemon whose largest frame is smaller gets batches
/// that fit its frame.
const BATCH_BYTES: usize = 256 * 1024;
/// Bytes a line's fixed fields take in a batch, at most (type, TTL, delay, lengths).
const LINE_FIELDS: usize = 48;
/// Batched sends kept in flight: each carries many lines, so a few keep the daemon busy.
const BATCH_WINDOW: usize = 8;

/// The most bytes `headers` take encoded: each header's bytes, its length and its tag.
fn encoded_headers(headers: &Headers) -> usize {
    let reply_to = headers.reply_to.as_ref().map_or(0, |n| n.as_str().len());
    let content_type = headers.content_type.as_ref().map_or(0, String::len);
    reply_to + content_type + 3 * 11
}

/// Lines read and not yet sent, with the number of the first.
#[derive(Debug, Default)]
struct Batch {
    first_line: u64,
    payloads: Vec<Bytes>,
    bytes: usize,
}

impl Batch {
    /// Sends the lines gathered, once the pipeline has room — unless a failure was met
    /// while making room: then they are dropped unsent, as every line after a failure is.
    fn send(
        &mut self,
        template: &SendRequest,
        pipeline: &mut Pipeline<'_, u64>,
        failure: &mut Failure,
        mut settle_next: impl FnMut(&mut Pipeline<'_, u64>, &mut Failure) -> io::Result<()>,
    ) -> anyhow::Result<()> {
        if self.payloads.is_empty() {
            return Ok(());
        }
        while pipeline.is_full() {
            settle_next(pipeline, failure)?;
        }
        if failure.first.is_some() {
            self.payloads.clear();
            self.bytes = 0;
            return Ok(());
        }
        let first = self.first_line;
        pipeline
            .submit(first, &self.request(template))
            .with_context(|| format!("line {first}"))
    }

    /// The request that sends these lines: a batched send on a daemon that has them
    /// (`lines` above one), else one line's send.
    fn request(&mut self, template: &SendRequest) -> Request {
        let payloads = std::mem::take(&mut self.payloads);
        self.bytes = 0;
        if payloads.len() == 1 {
            let payload = payloads.into_iter().next().expect("one line");
            return Request::Send(SendRequest {
                payload,
                ..template.clone()
            });
        }
        Request::SendBatch(SendBatchRequest {
            mailbox: template.mailbox.clone(),
            wait: template.wait,
            messages: payloads
                .into_iter()
                .map(|payload| BatchMessage {
                    mtype: template.mtype,
                    headers: template.headers.clone(),
                    ttl_ms: template.ttl_ms,
                    delay_ms: template.delay_ms,
                    payload,
                })
                .collect(),
        })
    }
}

/// Sends each line of `input` as a message, in batches where the daemon has them, with a
/// window of requests in flight. Before any read that could block (no whole line
/// buffered), the lines read are sent, everything in flight is settled and its output
/// flushed, so that a slow producer such as `tail -f` sees each line sent and reported at
/// once, and a full mailbox holds back the reading of input.
///
/// On the first failure no more lines are read; sends already in flight are cancelled if
/// they still wait and reported if they went through, then the failure is returned,
/// naming its line.
fn send_lines(
    ctx: &Context,
    client: &mut BlockingClient,
    template: &SendRequest,
    mut input: BufReader<Box<dyn Read>>,
    what: &str,
) -> anyhow::Result<()> {
    let batching = client
        .welcome()
        .features
        .iter()
        .any(|f| f == ipc_proto::FEATURE_BATCH);
    let (max_lines, window) = if batching {
        (BATCH_LINES, pipeline::window(client).min(BATCH_WINDOW))
    } else {
        (1, pipeline::window(client))
    };
    let frame_room = usize::try_from(client.welcome().max_frame)
        .unwrap_or(usize::MAX)
        .saturating_sub(HEADER_LEN + 1024);
    let batch_bytes = BATCH_BYTES.min(frame_room);
    let line_cost = encoded_headers(&template.headers) + LINE_FIELDS;
    let mut pipeline: Pipeline<'_, u64> = Pipeline::new(client, window);
    let mut out = stdout();
    let mut failure = Failure::default();
    // Settles the oldest request's outcome.
    let settle_next = |pipeline: &mut Pipeline<'_, u64>, out: &mut _, failure: &mut Failure| {
        match pipeline.next() {
            Some(outcome) => settle(ctx.json, &template.mailbox, pipeline, out, failure, outcome),
            None => Ok(()),
        }
    };
    let mut batch = Batch::default();
    let mut line_number = 0u64;
    let mut line = Vec::new();
    loop {
        let may_block = !input.buffer().contains(&b'\n');
        if may_block {
            batch.send(template, &mut pipeline, &mut failure, |p, f| {
                settle_next(p, &mut out, f)
            })?;
            pipeline.flush()?;
        }
        while !pipeline.has_room() || (may_block && !pipeline.is_empty()) {
            settle_next(&mut pipeline, &mut out, &mut failure)?;
        }
        if may_block {
            out.flush()?;
        }
        if failure.first.is_some() {
            break;
        }
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read {what}"))?;
        if n == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        line_number += 1;
        if let Err(e) = check_size(pipeline.client(), line.len()) {
            // The lines before it go as they would have; then nothing more is sent.
            batch.send(template, &mut pipeline, &mut failure, |p, f| {
                settle_next(p, &mut out, f)
            })?;
            failure.fail(&mut pipeline, line_number, e);
            break;
        }
        let cost = line.len() + line_cost;
        let full = batch.payloads.len() >= max_lines
            || (!batch.payloads.is_empty() && batch.bytes + cost > batch_bytes);
        if full {
            batch.send(template, &mut pipeline, &mut failure, |p, f| {
                settle_next(p, &mut out, f)
            })?;
            if failure.first.is_some() {
                break;
            }
        }
        if batch.payloads.is_empty() {
            batch.first_line = line_number;
        }
        batch.bytes += cost;
        batch.payloads.push(Bytes::from(std::mem::take(&mut line)));
    }
    while !pipeline.is_empty() {
        settle_next(&mut pipeline, &mut out, &mut failure)?;
    }
    out.flush()?;
    failure.into_result()
}

/// The first failure of a pipelined send, and what happened after it.
#[derive(Debug, Default)]
struct Failure {
    first: Option<anyhow::Error>,
    /// Lines after the failed one that were in flight already and went through.
    sent_after: u64,
}

impl Failure {
    /// Records the first failure, and cancels the sends still waiting behind it.
    fn fail(&mut self, pipeline: &mut Pipeline<'_, u64>, line: u64, e: Error) {
        if self.first.is_none() {
            self.first = Some(anyhow::Error::from(e).context(format!("line {line}")));
        }
        // Best effort: the failure is reported whether or not this works.
        let _ = pipeline.cancel_pending();
    }

    fn into_result(self) -> anyhow::Result<()> {
        let Some(e) = self.first else {
            return Ok(());
        };
        if self.sent_after == 0 {
            return Err(e);
        }
        // Pipelining means lines after the failed one may be in the mailbox already; say
        // so rather than let the user believe that sending stopped there.
        let n = self.sent_after;
        let (lines, were) = if n == 1 {
            ("line", "was")
        } else {
            ("lines", "were")
        };
        let text = format!("{e:#} ({n} later {lines} already in flight {were} sent)");
        Err(e.context(text))
    }
}

/// Settles the outcome of a send of lines from `first_line` on: prints each id, or
/// records the first failure and cancels what is still waiting behind it.
fn settle(
    json: bool,
    mailbox: &MailboxName,
    pipeline: &mut Pipeline<'_, u64>,
    out: &mut impl Write,
    failure: &mut Failure,
    (first_line, outcome): (u64, Result<Response, Error>),
) -> io::Result<()> {
    let outcomes = match outcome {
        Ok(Response::SentBatch(outcomes)) => outcomes
            .into_iter()
            .map(|o| o.map_err(Error::from))
            .collect(),
        other => vec![other.and_then(sent_id)],
    };
    for (line, outcome) in (first_line..).zip(outcomes) {
        match outcome {
            Ok(id) => {
                if failure.first.is_some() {
                    failure.sent_after += 1;
                }
                if json {
                    write_json(out, &sent_json(mailbox, id, Some(line)))?;
                }
            }
            Err(e) if failure.first.is_none() => failure.fail(pipeline, line, e),
            // Later failures follow from the first, or are its cancellations.
            Err(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_sources() {
        let data = |s: &str| Some(OsString::from(s));
        assert!(matches!(Source::choose(data("-"), None), Ok(Source::Stdin)));
        assert!(matches!(
            Source::choose(data("hi"), None),
            Ok(Source::Data(d)) if d == b"hi"
        ));
        assert!(matches!(
            Source::choose(None, Some("-".into())),
            Ok(Source::Stdin)
        ));
        assert!(matches!(
            Source::choose(None, Some("f".into())),
            Ok(Source::File(p)) if p == Path::new("f")
        ));
        // Arguments are bytes, not necessarily UTF-8.
        let raw = OsString::from_vec(vec![0xff, b'a']);
        assert!(matches!(
            Source::choose(Some(raw), None),
            Ok(Source::Data(d)) if d == [0xff, b'a']
        ));
    }

    #[test]
    fn sent_json_keys() {
        let name = MailboxName::new("q").unwrap();
        let text = serde_json::to_string(&sent_json(&name, 5, None)).unwrap();
        assert_eq!(text, r#"{"mailbox":"q","id":5}"#);
        let text = serde_json::to_string(&sent_json(&name, 5, Some(2))).unwrap();
        assert_eq!(text, r#"{"mailbox":"q","id":5,"line":2}"#);
    }
}
