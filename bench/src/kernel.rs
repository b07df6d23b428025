//! The kernel's own queues: System V (`msgsnd`/`msgrcv`) and POSIX (`mq_send`/
//! `mq_receive`), with their default limits — a message above `msgmax` or
//! `msgsize_max` cannot be carried and shows as "n/a".

use std::ffi::CString;
use std::time::{Duration, Instant};

use crate::{Stream, Transport, check, in_order, payload};

/// Runs `case` over a shared queue: each producer thread calls `send(seq, scratch)` for
/// its share of sequence numbers, each consumer thread `recv(scratch)` for its share;
/// checks per-consumer order when there is one producer. Returns messages per second.
fn fan_out(
    case: Stream,
    send: impl Fn(u64, &mut Vec<u8>) + Sync,
    recv: impl Fn(&mut Vec<u8>) -> u64 + Sync,
) -> f64 {
    let per_producer = case.messages / case.producers;
    let per_consumer = case.messages / case.consumers;
    let start = Instant::now();
    let (elapsed, took) = std::thread::scope(|s| {
        for p in 0..case.producers {
            let send = &send;
            s.spawn(move || {
                let mut scratch = Vec::new();
                for k in 0..per_producer {
                    send((p * per_producer + k) as u64, &mut scratch);
                }
            });
        }
        let consumers: Vec<_> = (0..case.consumers)
            .map(|_| {
                let recv = &recv;
                s.spawn(move || {
                    let mut scratch = Vec::new();
                    (0..per_consumer)
                        .map(|_| recv(&mut scratch))
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let took: Vec<_> = consumers
            .into_iter()
            .map(|c| c.join().expect("consumer"))
            .collect();
        (start.elapsed(), took)
    });
    // Checked once the clock has stopped, as for every transport.
    if case.producers == 1 {
        took.iter().for_each(|seqs| in_order(seqs));
    }
    case.messages as f64 / elapsed.as_secs_f64()
}

pub struct SysV;
pub struct Posix;

fn sysctl(path: &str) -> usize {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(8192)
}

/// A private SysV queue, removed on drop.
struct Queue(libc::c_int);

impl Queue {
    fn new() -> Self {
        // SAFETY: msgget takes plain integers.
        let id = unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600) };
        assert!(id >= 0, "msgget: {}", std::io::Error::last_os_error());
        Queue(id)
    }

    fn send(&self, mtype: i64, body: &[u8], buf: &mut Vec<u8>) {
        buf.clear();
        buf.extend_from_slice(&mtype.to_ne_bytes());
        buf.extend_from_slice(body);
        loop {
            // SAFETY: buf holds a long mtype followed by body.len() bytes.
            let rc = unsafe { libc::msgsnd(self.0, buf.as_ptr().cast(), body.len(), 0) };
            if rc == 0 {
                return;
            }
            let e = std::io::Error::last_os_error();
            assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "msgsnd: {e}");
        }
    }

    fn recv(&self, mtype: i64, size: usize, buf: &mut Vec<u8>) -> usize {
        buf.resize(8 + size, 0);
        loop {
            // SAFETY: buf has room for a long and `size` bytes.
            let n = unsafe { libc::msgrcv(self.0, buf.as_mut_ptr().cast(), size, mtype, 0) };
            if n >= 0 {
                return n as usize;
            }
            let e = std::io::Error::last_os_error();
            assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "msgrcv: {e}");
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: removing our own queue; no buffer is passed.
        unsafe { libc::msgctl(self.0, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}

impl Transport for SysV {
    fn name(&self) -> &'static str {
        "SysV msgq"
    }

    fn stream(&mut self, case: Stream) -> Option<f64> {
        if case.size.max(8) > sysctl("/proc/sys/kernel/msgmax") {
            return None;
        }
        let q = Queue::new();
        Some(fan_out(
            case,
            |seq, buf| q.send(1, &payload(seq, case.size), buf),
            |buf| {
                let n = q.recv(0, case.size.max(8), buf);
                check(&buf[8..8 + n], case.size)
            },
        ))
    }

    fn ping_pong(&mut self, size: usize, rounds: usize) -> Option<Vec<Duration>> {
        let q = Queue::new();
        std::thread::scope(|s| {
            let q = &q;
            s.spawn(move || {
                let mut buf = Vec::new();
                let mut out = Vec::new();
                for _ in 0..rounds {
                    let n = q.recv(1, size.max(8), &mut buf);
                    let body = buf[8..8 + n].to_vec();
                    q.send(2, &body, &mut out);
                }
            });
            let mut buf = Vec::new();
            let mut out = Vec::new();
            Some(
                (0..rounds)
                    .map(|i| {
                        let start = Instant::now();
                        q.send(1, &payload(i as u64, size), &mut out);
                        let n = q.recv(2, size.max(8), &mut buf);
                        let elapsed = start.elapsed();
                        assert_eq!(check(&buf[8..8 + n], size), i as u64);
                        elapsed
                    })
                    .collect(),
            )
        })
    }
}

/// A POSIX queue, unlinked on drop.
struct Mq {
    fd: libc::mqd_t,
    name: CString,
}

impl Mq {
    fn new(tag: &str, size: usize) -> Self {
        let name = CString::new(format!("/ipc-bench-{}-{tag}", std::process::id()))
            .expect("no NUL in the name");
        // SAFETY: an all-zero mq_attr is valid; we set the fields mq_open reads.
        let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
        attr.mq_maxmsg = sysctl("/proc/sys/fs/mqueue/msg_max").min(10) as libc::c_long;
        attr.mq_msgsize = size as libc::c_long;
        // SAFETY: name is NUL-terminated; attr lives across the call.
        let fd = unsafe {
            libc::mq_unlink(name.as_ptr());
            libc::mq_open(
                name.as_ptr(),
                libc::O_CREAT | libc::O_RDWR,
                0o600 as libc::mode_t,
                &attr as *const libc::mq_attr,
            )
        };
        assert!(fd >= 0, "mq_open: {}", std::io::Error::last_os_error());
        Mq { fd, name }
    }

    fn send(&self, body: &[u8]) {
        // SAFETY: body is a valid slice; fd is open.
        let rc = unsafe { libc::mq_send(self.fd, body.as_ptr().cast(), body.len(), 0) };
        assert_eq!(rc, 0, "mq_send: {}", std::io::Error::last_os_error());
    }

    fn recv(&self, buf: &mut [u8]) -> usize {
        // SAFETY: buf is writable for its length, which is at least mq_msgsize.
        let n = unsafe {
            libc::mq_receive(
                self.fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                std::ptr::null_mut(),
            )
        };
        assert!(n >= 0, "mq_receive: {}", std::io::Error::last_os_error());
        n as usize
    }
}

impl Drop for Mq {
    fn drop(&mut self) {
        // SAFETY: closing and unlinking our own queue.
        unsafe {
            libc::mq_close(self.fd);
            libc::mq_unlink(self.name.as_ptr());
        }
    }
}

fn mq_fits(size: usize) -> bool {
    size.max(8) <= sysctl("/proc/sys/fs/mqueue/msgsize_max")
}

impl Transport for Posix {
    fn name(&self) -> &'static str {
        "POSIX mq"
    }

    fn stream(&mut self, case: Stream) -> Option<f64> {
        if !mq_fits(case.size) {
            return None;
        }
        let size = case.size.max(8);
        let q = Mq::new("stream", size);
        Some(fan_out(
            case,
            |seq, _| q.send(&payload(seq, case.size)),
            |buf| {
                buf.resize(size, 0);
                let n = q.recv(buf);
                check(&buf[..n], case.size)
            },
        ))
    }

    fn ping_pong(&mut self, size: usize, rounds: usize) -> Option<Vec<Duration>> {
        if !mq_fits(size) {
            return None;
        }
        let (ping, pong) = (Mq::new("ping", size.max(8)), Mq::new("pong", size.max(8)));
        std::thread::scope(|s| {
            let (ping, pong) = (&ping, &pong);
            s.spawn(move || {
                let mut buf = vec![0; size.max(8)];
                for _ in 0..rounds {
                    let n = ping.recv(&mut buf);
                    pong.send(&buf[..n]);
                }
            });
            let mut buf = vec![0; size.max(8)];
            Some(
                (0..rounds)
                    .map(|i| {
                        let start = Instant::now();
                        ping.send(&payload(i as u64, size));
                        let n = pong.recv(&mut buf);
                        let elapsed = start.elapsed();
                        assert_eq!(check(&buf[..n], size), i as u64);
                        elapsed
                    })
                    .collect(),
            )
        })
    }
}
