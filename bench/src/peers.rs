//! The peers a message broker is measured against: a Redis server (lists, `LPUSH` /
//! `BRPOP`) on a Unix socket and a NATS server (core NATS, one queue group) on local TCP,
//! each started privately by `bench/peers.sh` and named with `--peers`.
//!
//! The protocol clients here are deliberately minimal and written over std sockets rather
//! than taken from crates: the benchmark needs exact control of how many commands go into
//! one write and how many are outstanding, which a full client hides behind its own
//! buffering. Both are binary-safe (RESP bulk strings; NATS byte counts) and panic on any
//! error the server reports, as the rest of the bench does.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::{Stream, Transport, check, in_order, payload};

/// A fresh key or subject for each case, so that nothing left by one case (there should
/// be nothing) can reach the next.
fn fresh(prefix: &str) -> String {
    static CASES: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}.{}", CASES.fetch_add(1, Ordering::Relaxed))
}

/// Reads one `\r\n`-terminated line, without the terminator.
fn read_line(r: &mut impl BufRead, line: &mut Vec<u8>) {
    line.clear();
    let n = r.read_until(b'\n', line).expect("read from the server");
    assert!(n > 0, "the server closed the connection");
    assert!(line.ends_with(b"\r\n"), "a line not ending in CRLF");
    line.truncate(line.len() - 2);
}

fn parse_num<T: std::str::FromStr>(bytes: &[u8]) -> T {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a number: {:?}", String::from_utf8_lossy(bytes)))
}

/// Reads `len` payload bytes and the CRLF after them.
fn read_body(r: &mut impl Read, len: usize) -> Vec<u8> {
    let mut body = vec![0; len + 2];
    r.read_exact(&mut body).expect("read a payload");
    assert_eq!(&body[len..], b"\r\n", "a payload not followed by CRLF");
    body.truncate(len);
    body
}

/// A RESP2 reply. Errors are not a variant: the bench never expects one and panics.
#[derive(Debug)]
enum Reply {
    Simple,
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    fn into_array(self) -> Vec<Reply> {
        match self {
            Reply::Array(Some(items)) => items,
            other => panic!("expected an array, got {other:?}"),
        }
    }

    fn into_bulk(self) -> Vec<u8> {
        match self {
            Reply::Bulk(Some(b)) => b,
            other => panic!("expected a bulk string, got {other:?}"),
        }
    }
}

/// One connection to Redis. Commands are queued in `out` and written only when a reply
/// is awaited that nothing already read can supply, so everything queued since the last
/// read goes out in one write — that is what a window means here.
struct RedisConn {
    r: BufReader<UnixStream>,
    w: UnixStream,
    out: Vec<u8>,
    line: Vec<u8>,
}

impl RedisConn {
    fn connect(socket: &Path) -> Self {
        let w = UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connect to Redis at {}: {e}", socket.display()));
        let r = BufReader::with_capacity(64 * 1024, w.try_clone().expect("clone the socket"));
        RedisConn {
            r,
            w,
            out: Vec::new(),
            line: Vec::new(),
        }
    }

    /// Queues one command (an array of bulk strings).
    fn command(&mut self, args: &[&[u8]]) {
        write!(self.out, "*{}\r\n", args.len()).expect("write to a Vec");
        for a in args {
            write!(self.out, "${}\r\n", a.len()).expect("write to a Vec");
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b"\r\n");
        }
    }

    fn flush(&mut self) {
        if !self.out.is_empty() {
            self.w.write_all(&self.out).expect("write to Redis");
            self.out.clear();
        }
    }

    /// The reply to the oldest outstanding command. Queued commands are written first if
    /// nothing is buffered to read: a reply partly buffered is already on its way, so
    /// holding commands back then cannot stall.
    fn reply(&mut self) -> Reply {
        if self.r.buffer().is_empty() {
            self.flush();
        }
        self.value()
    }

    fn value(&mut self) -> Reply {
        read_line(&mut self.r, &mut self.line);
        let (kind, rest) = self.line.split_first().expect("an empty RESP line");
        match kind {
            b'+' => Reply::Simple,
            b'-' => panic!("Redis refused: {}", String::from_utf8_lossy(rest)),
            b':' => Reply::Int(parse_num(rest)),
            b'$' => match parse_num::<i64>(rest) {
                -1 => Reply::Bulk(None),
                n => Reply::Bulk(Some(read_body(&mut self.r, n as usize))),
            },
            b'*' => match parse_num::<i64>(rest) {
                -1 => Reply::Array(None),
                n => Reply::Array(Some((0..n).map(|_| self.value()).collect())),
            },
            _ => panic!("not RESP: {:?}", String::from_utf8_lossy(&self.line)),
        }
    }

    /// Runs `n` commands queued by `make` with up to `window` outstanding, handing each
    /// reply to `done` (Redis answers a connection's commands in order).
    fn pump(
        &mut self,
        n: usize,
        window: usize,
        mut make: impl FnMut(&mut Self, usize),
        mut done: impl FnMut(Reply),
    ) {
        let (mut submitted, mut answered) = (0, 0);
        while answered < n {
            while submitted < n && submitted - answered < window {
                make(self, submitted);
                submitted += 1;
            }
            done(self.reply());
            answered += 1;
        }
    }
}

/// Redis lists as mailboxes: producers `LPUSH`, consumers pop from the other end.
pub struct Redis {
    socket: PathBuf,
}

impl Redis {
    pub fn new(socket: PathBuf) -> Self {
        let mut c = RedisConn::connect(&socket);
        c.command(&[b"PING"]);
        c.reply();
        Redis { socket }
    }

    fn conn(&self) -> RedisConn {
        RedisConn::connect(&self.socket)
    }

    /// Runs producers and consumers over one fresh list: `produce(conn, key, first seq,
    /// count)` for each producer's share, `consume(conn, key, count)` returning the
    /// sequence numbers seen for each consumer's share. Returns messages per second.
    fn fan_out(
        &self,
        case: Stream,
        produce: impl Fn(&mut RedisConn, &[u8], usize, usize) + Sync,
        consume: impl Fn(&mut RedisConn, &[u8], usize) -> Vec<u64> + Sync,
    ) -> f64 {
        let key = fresh("bench");
        let key = key.as_bytes();
        let per_producer = case.messages / case.producers;
        let per_consumer = case.messages / case.consumers;
        let mut producers: Vec<_> = (0..case.producers).map(|_| self.conn()).collect();
        let mut consumers: Vec<_> = (0..case.consumers).map(|_| self.conn()).collect();
        let start = Instant::now();
        let (elapsed, took) = std::thread::scope(|s| {
            for (p, c) in producers.iter_mut().enumerate() {
                let produce = &produce;
                s.spawn(move || produce(c, key, p * per_producer, per_producer));
            }
            let handles: Vec<_> = consumers
                .iter_mut()
                .map(|c| {
                    let consume = &consume;
                    s.spawn(move || consume(c, key, per_consumer))
                })
                .collect();
            let took: Vec<_> = handles
                .into_iter()
                .map(|h| h.join().expect("consumer"))
                .collect();
            (start.elapsed(), took)
        });
        // Checked once the clock has stopped, as for every transport.
        for seqs in &took {
            assert_eq!(seqs.len(), per_consumer);
            if case.producers == 1 && case.consumers == 1 {
                in_order(seqs);
            }
        }
        let rate = case.messages as f64 / elapsed.as_secs_f64();
        let mut c = self.conn();
        c.command(&[b"DEL", key]);
        assert!(
            matches!(c.reply(), Reply::Int(0)),
            "messages left in the list"
        );
        rate
    }
}

/// `BRPOP`'s reply: `[key, value]`.
fn popped(reply: Reply, size: usize) -> u64 {
    let mut pair = reply.into_array();
    assert_eq!(pair.len(), 2, "BRPOP answers [key, value]");
    check(&pair.pop().expect("two items").into_bulk(), size)
}

impl Transport for Redis {
    fn name(&self) -> &'static str {
        "Redis"
    }

    /// A window of N is N commands outstanding per connection, both ways. Consumers
    /// pipeline N `BRPOP key 0`: Redis serves a blocked client's later commands only once
    /// its blocking one is answered, so N pipelined blocking pops behave as N receives
    /// waiting in turn — the same as N receives outstanding on a mailbox — where
    /// pipelined `RPOP`s would return nil on an empty list and make the consumer poll.
    fn stream(&mut self, case: Stream) -> Option<f64> {
        Some(self.fan_out(
            case,
            |c, key, first, count| {
                c.pump(
                    count,
                    case.window,
                    |c, k| c.command(&[b"LPUSH", key, &payload((first + k) as u64, case.size)]),
                    |reply| assert!(matches!(reply, Reply::Int(_)), "{reply:?}"),
                );
            },
            |c, key, count| {
                let mut seqs = Vec::with_capacity(count);
                c.pump(
                    count,
                    case.window,
                    |c, _| c.command(&[b"BRPOP", key, b"0"]),
                    |reply| seqs.push(popped(reply, case.size)),
                );
                seqs
            },
        ))
    }

    /// A batch of N is one command carrying N messages, one command outstanding per
    /// connection: `LPUSH key v1 … vN` (which leaves v1 nearest the tail) and
    /// `BLMPOP 0 1 key RIGHT COUNT N` (Redis 7), which waits for a non-empty list and
    /// takes up to N from the tail in order.
    fn batched(&mut self, case: Stream) -> Option<f64> {
        Some(self.fan_out(
            case,
            |c, key, first, count| {
                for start in (0..count).step_by(case.window) {
                    let bodies: Vec<Vec<u8>> = (start..(start + case.window).min(count))
                        .map(|k| payload((first + k) as u64, case.size))
                        .collect();
                    let mut args: Vec<&[u8]> = vec![b"LPUSH", key];
                    args.extend(bodies.iter().map(Vec::as_slice));
                    c.command(&args);
                    let reply = c.reply();
                    assert!(matches!(reply, Reply::Int(_)), "{reply:?}");
                }
            },
            |c, key, count| {
                let mut seqs = Vec::with_capacity(count);
                while seqs.len() < count {
                    let want = case.window.min(count - seqs.len()).to_string();
                    c.command(&[
                        b"BLMPOP",
                        b"0",
                        b"1",
                        key,
                        b"RIGHT",
                        b"COUNT",
                        want.as_bytes(),
                    ]);
                    let mut reply = c.reply().into_array();
                    assert_eq!(reply.len(), 2, "BLMPOP answers [key, [values]]");
                    for v in reply.pop().expect("two items").into_array() {
                        seqs.push(check(&v.into_bulk(), case.size));
                    }
                }
                seqs
            },
        ))
    }

    /// Two lists; each side writes its `LPUSH` and its next `BRPOP` together, as any
    /// pipelining client would, so a round is one write and one wait on each side.
    fn ping_pong(&mut self, size: usize, rounds: usize) -> Option<Vec<Duration>> {
        let (ping, pong) = (fresh("ping"), fresh("pong"));
        let (ping, pong) = (ping.as_bytes(), pong.as_bytes());
        let mut echo = self.conn();
        let mut me = self.conn();
        let times = std::thread::scope(|s| {
            s.spawn(move || {
                echo.command(&[b"BRPOP", ping, b"0"]);
                for i in 0..rounds {
                    let mut pair = echo.reply().into_array();
                    let body = pair.pop().expect("two items").into_bulk();
                    echo.command(&[b"LPUSH", pong, &body]);
                    if i + 1 < rounds {
                        echo.command(&[b"BRPOP", ping, b"0"]);
                    }
                    echo.reply();
                }
            });
            (0..rounds)
                .map(|i| {
                    let start = Instant::now();
                    me.command(&[b"LPUSH", ping, &payload(i as u64, size)]);
                    me.command(&[b"BRPOP", pong, b"0"]);
                    me.reply();
                    let reply = me.reply();
                    let elapsed = start.elapsed();
                    assert_eq!(popped(reply, size), i as u64);
                    elapsed
                })
                .collect()
        });
        Some(times)
    }
}

/// What the server sent that the bench cares about (`PING` is answered, `INFO` and `+OK`
/// are skipped inside `NatsConn::event`).
enum Event {
    Msg {
        sid: u64,
        reply: Option<String>,
        payload: Vec<u8>,
    },
    Pong,
}

/// One connection to a NATS server; like `RedisConn`, operations are queued and written
/// together on `flush`.
struct NatsConn {
    r: BufReader<TcpStream>,
    w: TcpStream,
    out: Vec<u8>,
    line: Vec<u8>,
    /// The server's `max_payload` from its `INFO`: a larger message cannot be published.
    max_payload: usize,
}

impl NatsConn {
    fn connect(addr: &str) -> Self {
        let w =
            TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to NATS at {addr}: {e}"));
        // Small writes (a lone PUB, a PING) must not wait for Nagle's timer.
        w.set_nodelay(true).expect("TCP_NODELAY");
        let r = BufReader::with_capacity(64 * 1024, w.try_clone().expect("clone the socket"));
        let mut c = NatsConn {
            r,
            w,
            out: Vec::new(),
            line: Vec::new(),
            max_payload: 0,
        };
        read_line(&mut c.r, &mut c.line);
        let info = String::from_utf8_lossy(&c.line).into_owned();
        assert!(
            info.starts_with("INFO "),
            "NATS greets with INFO, not {info}"
        );
        c.max_payload = info
            .split("\"max_payload\":")
            .nth(1)
            .map(|rest| parse_num(rest.split([',', '}']).next().unwrap_or("").as_bytes()))
            .unwrap_or(1 << 20);
        // verbose:false: no +OK per operation; pedantic:false: no extra subject checks.
        c.out.extend_from_slice(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"ipc-bench\"}\r\n",
        );
        c.sync();
        c
    }

    fn publish(&mut self, subject: &str, reply: Option<&str>, body: &[u8]) {
        match reply {
            Some(reply) => write!(self.out, "PUB {subject} {reply} {}\r\n", body.len()),
            None => write!(self.out, "PUB {subject} {}\r\n", body.len()),
        }
        .expect("write to a Vec");
        self.out.extend_from_slice(body);
        self.out.extend_from_slice(b"\r\n");
    }

    fn subscribe(&mut self, subject: &str, queue: Option<&str>, sid: u64) {
        match queue {
            Some(queue) => write!(self.out, "SUB {subject} {queue} {sid}\r\n"),
            None => write!(self.out, "SUB {subject} {sid}\r\n"),
        }
        .expect("write to a Vec");
    }

    fn flush(&mut self) {
        if !self.out.is_empty() {
            self.w.write_all(&self.out).expect("write to NATS");
            self.out.clear();
        }
    }

    /// Writes everything queued and a `PING`, and waits for the `PONG`: the server has
    /// then processed all of it (subscriptions are in place; publications are delivered
    /// to the subscribers' connections).
    fn sync(&mut self) {
        self.out.extend_from_slice(b"PING\r\n");
        self.flush();
        // Only connections no message can reach at the time sync: producers, which
        // subscribe to nothing, and subscribers before anything is published to them.
        match self.event() {
            Event::Pong => {}
            Event::Msg { .. } => panic!("a message where only a PONG was due"),
        }
    }

    fn event(&mut self) -> Event {
        loop {
            read_line(&mut self.r, &mut self.line);
            let line = &self.line;
            if let Some(rest) = line.strip_prefix(b"MSG ") {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let fields: Vec<&[u8]> = rest.split(|&b| b == b' ').collect();
                let (sid, reply, len) = match fields[..] {
                    [_, sid, len] => (sid, None, len),
                    [_, sid, reply, len] => {
                        (sid, Some(String::from_utf8_lossy(reply).into_owned()), len)
                    }
                    _ => panic!("malformed MSG: {}", String::from_utf8_lossy(line)),
                };
                let (sid, len) = (parse_num(sid), parse_num(len));
                return Event::Msg {
                    sid,
                    reply,
                    payload: read_body(&mut self.r, len),
                };
            } else if line == b"PING" {
                // The server's keep-alive: answered at once, ahead of anything queued
                // (which holds only whole operations, so nothing is split).
                self.w.write_all(b"PONG\r\n").expect("write to NATS");
            } else if line == b"PONG" {
                return Event::Pong;
            } else if line.starts_with(b"-ERR") {
                panic!("NATS refused: {}", String::from_utf8_lossy(line));
            } else if !(line.starts_with(b"INFO ") || line == b"+OK") {
                panic!("unexpected from NATS: {}", String::from_utf8_lossy(line));
            }
        }
    }

    fn message(&mut self) -> (u64, Option<String>, Vec<u8>) {
        match self.event() {
            Event::Msg {
                sid,
                reply,
                payload,
            } => (sid, reply, payload),
            Event::Pong => panic!("an unexpected PONG"),
        }
    }
}

/// Core NATS as a mailbox: producers publish to a subject, consumers share it through one
/// queue group, so each message goes to exactly one consumer.
pub struct Nats {
    addr: String,
}

impl Nats {
    pub fn new(addr: String) -> Self {
        drop(NatsConn::connect(&addr));
        Nats { addr }
    }

    fn conn(&self) -> NatsConn {
        NatsConn::connect(&self.addr)
    }
}

/// The subscription ids each consumer uses.
const DATA: u64 = 1;
const DONE: u64 = 2;

impl Transport for Nats {
    fn name(&self) -> &'static str {
        "NATS"
    }

    /// NATS has no per-message acknowledgement, so a window of N is N `PUB`s in one write
    /// followed by `PING`, and the next window waits for the `PONG`: at most N
    /// publications are unprocessed by the server at a time. Consumers are pushed to and
    /// have no window. The queue group hands messages to consumers in no fixed shares, so
    /// consumers count to the total together; the one that takes the last message
    /// publishes on a second, plain subject that every consumer subscribes to, which
    /// releases them all (every data message has been read by then). Nothing bounds how
    /// far consumers fall behind: one more than the server's `max_pending` (64 MiB by
    /// default) behind is cut off as a slow consumer, and the run fails loudly rather
    /// than report a rate for messages that were dropped.
    fn stream(&mut self, case: Stream) -> Option<f64> {
        let subject = fresh("bench");
        let done = format!("{subject}.done");
        let mut producers: Vec<_> = (0..case.producers).map(|_| self.conn()).collect();
        if case.size.max(8) > producers[0].max_payload {
            return None;
        }
        let mut consumers: Vec<_> = (0..case.consumers)
            .map(|_| {
                let mut c = self.conn();
                c.subscribe(&subject, Some("bench"), DATA);
                c.subscribe(&done, None, DONE);
                c.sync();
                c
            })
            .collect();
        let per_producer = case.messages / case.producers;
        let total = per_producer * case.producers;
        let received = AtomicUsize::new(0);
        let start = Instant::now();
        let (elapsed, took) = std::thread::scope(|s| {
            for (p, c) in producers.iter_mut().enumerate() {
                let subject = &subject;
                s.spawn(move || {
                    for k in 0..per_producer {
                        c.publish(
                            subject,
                            None,
                            &payload((p * per_producer + k) as u64, case.size),
                        );
                        if (k + 1) % case.window == 0 || k + 1 == per_producer {
                            c.sync();
                        }
                    }
                });
            }
            let handles: Vec<_> = consumers
                .iter_mut()
                .map(|c| {
                    let (received, done) = (&received, &done);
                    s.spawn(move || {
                        let mut seqs = Vec::new();
                        loop {
                            let (sid, _, body) = c.message();
                            if sid == DONE {
                                return seqs;
                            }
                            seqs.push(check(&body, case.size));
                            if received.fetch_add(1, Ordering::Relaxed) + 1 == total {
                                c.publish(done, None, b"");
                                c.flush();
                            }
                        }
                    })
                })
                .collect();
            let took: Vec<_> = handles
                .into_iter()
                .map(|h| h.join().expect("consumer"))
                .collect();
            (start.elapsed(), took)
        });
        // Checked once the clock has stopped, as for every transport.
        let seen: usize = took.iter().map(Vec::len).sum();
        assert_eq!(seen, total, "messages lost or duplicated");
        if case.producers == 1 && case.consumers == 1 {
            took.iter().for_each(|seqs| in_order(seqs));
        }
        Some(total as f64 / elapsed.as_secs_f64())
    }

    /// The same as a window: N `PUB`s in one write, then `PING`/`PONG`. Core NATS has no
    /// operation carrying several messages, and this is how its clients batch.
    fn batched(&mut self, case: Stream) -> Option<f64> {
        self.stream(case)
    }

    /// Request/reply: the echo side subscribes and publishes each message back to its
    /// reply subject, the asking side's own inbox.
    fn ping_pong(&mut self, size: usize, rounds: usize) -> Option<Vec<Duration>> {
        let (subject, inbox) = (fresh("ping"), fresh("inbox"));
        let mut echo = self.conn();
        if size.max(8) > echo.max_payload {
            return None;
        }
        echo.subscribe(&subject, None, DATA);
        echo.sync();
        let mut me = self.conn();
        me.subscribe(&inbox, None, DATA);
        me.sync();
        let times = std::thread::scope(|s| {
            s.spawn(move || {
                for _ in 0..rounds {
                    let (_, reply, body) = echo.message();
                    echo.publish(&reply.expect("a request has a reply subject"), None, &body);
                    echo.flush();
                }
            });
            (0..rounds)
                .map(|i| {
                    let start = Instant::now();
                    me.publish(&subject, Some(&inbox), &payload(i as u64, size));
                    me.flush();
                    let (_, _, body) = me.message();
                    let elapsed = start.elapsed();
                    assert_eq!(check(&body, size), i as u64);
                    elapsed
                })
                .collect()
        });
        Some(times)
    }
}
