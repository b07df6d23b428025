//! Plain Unix stream sockets with length-prefixed frames: one hop (the floor any
//! socket-based broker pays once) and a minimal two-hop relay (producer → relay →
//! consumer: what a broker that copies every message through itself cannot beat).

use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::{Stream, Transport, check, in_order, payload};

pub struct Hop;
pub struct Relay;

fn write_frame(w: &mut impl Write, body: &[u8]) {
    w.write_all(&(body.len() as u32).to_le_bytes())
        .and_then(|()| w.write_all(body))
        .expect("write a frame");
}

fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> bool {
    let mut len = [0u8; 4];
    if r.read_exact(&mut len).is_err() {
        return false;
    }
    buf.resize(u32::from_le_bytes(len) as usize, 0);
    r.read_exact(buf).expect("read a frame body");
    true
}

/// Copies frames from `from` to `to` until `from` closes.
fn relay(from: UnixStream, to: UnixStream) {
    let mut from = BufReader::with_capacity(64 * 1024, from);
    let mut to = BufWriter::with_capacity(64 * 1024, to);
    let mut buf = Vec::new();
    while read_frame(&mut from, &mut buf) {
        write_frame(&mut to, &buf);
        // Flush when nothing more is waiting, so a lone message is not held back.
        if from.buffer().is_empty() {
            to.flush().expect("flush");
        }
    }
    let _ = to.flush();
}

/// A path from a producer's end to a consumer's end: direct, or through a relay thread.
fn path(relayed: bool) -> (UnixStream, UnixStream) {
    let (tx, rx) = UnixStream::pair().expect("socketpair");
    if !relayed {
        return (tx, rx);
    }
    let (tx2, rx2) = UnixStream::pair().expect("socketpair");
    std::thread::spawn(move || relay(rx, tx2));
    (tx, rx2)
}

fn stream(case: Stream, relayed: bool) -> f64 {
    // One path per producer/consumer pair: a stream socket has one reader.
    let pairs = case.producers.max(case.consumers);
    let per_pair = case.messages / pairs;
    let start = Instant::now();
    std::thread::scope(|s| {
        for p in 0..pairs {
            let (tx, rx) = path(relayed);
            s.spawn(move || {
                let mut w = BufWriter::with_capacity(64 * 1024, tx);
                for k in 0..per_pair {
                    write_frame(&mut w, &payload((p * per_pair + k) as u64, case.size));
                    // A window of N: at most N messages go out in one write.
                    if (k + 1) % case.window == 0 {
                        w.flush().expect("flush");
                    }
                }
                w.flush().expect("flush");
            });
            s.spawn(move || {
                let mut r = BufReader::with_capacity(64 * 1024, rx);
                let mut buf = Vec::new();
                let seqs: Vec<u64> = (0..per_pair)
                    .map(|_| {
                        assert!(read_frame(&mut r, &mut buf), "closed early");
                        check(&buf, case.size)
                    })
                    .collect();
                in_order(&seqs);
            });
        }
    });
    (per_pair * pairs) as f64 / start.elapsed().as_secs_f64()
}

fn ping_pong(size: usize, rounds: usize, relayed: bool) -> Vec<Duration> {
    let (mut ping_tx, mut ping_rx) = path(relayed);
    let (mut pong_tx, mut pong_rx) = path(relayed);
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut buf = Vec::new();
            for _ in 0..rounds {
                assert!(read_frame(&mut ping_rx, &mut buf));
                write_frame(&mut pong_tx, &buf);
            }
        });
        let mut buf = Vec::new();
        (0..rounds)
            .map(|i| {
                let start = Instant::now();
                write_frame(&mut ping_tx, &payload(i as u64, size));
                assert!(read_frame(&mut pong_rx, &mut buf));
                let elapsed = start.elapsed();
                assert_eq!(check(&buf, size), i as u64);
                elapsed
            })
            .collect()
    })
}

impl Transport for Hop {
    fn name(&self) -> &'static str {
        "socket hop"
    }
    fn stream(&mut self, case: Stream) -> Option<f64> {
        Some(stream(case, false))
    }
    fn ping_pong(&mut self, size: usize, rounds: usize) -> Option<Vec<Duration>> {
        Some(ping_pong(size, rounds, false))
    }
    /// A batch of N is N frames in one write, which is what a window already is here.
    fn batched(&mut self, case: Stream) -> Option<f64> {
        Some(stream(case, false))
    }
}

impl Transport for Relay {
    fn name(&self) -> &'static str {
        "2-hop relay"
    }
    fn stream(&mut self, case: Stream) -> Option<f64> {
        Some(stream(case, true))
    }
    fn ping_pong(&mut self, size: usize, rounds: usize) -> Option<Vec<Duration>> {
        Some(ping_pong(size, rounds, true))
    }
    /// A batch of N is N frames in one write, which is what a window already is here.
    fn batched(&mut self, case: Stream) -> Option<f64> {
        Some(stream(case, true))
    }
}
