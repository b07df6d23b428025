//! ipcd itself, served in this process on a temporary socket (its own runtime threads),
//! driven through the blocking client with pipelined requests.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ipc_client::{BlockingClient, LimitChanges, Selector, Wait};
use ipc_proto::{CreateRequest, MailboxName, RecvRequest, Request, Response, SendRequest};

use crate::{Stream, Transport, check, in_order, payload};

/// A daemon on its own runtime thread, stopped on drop.
pub struct Daemon {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let socket = dir.path().join("ipcd.sock");
        let config = ipcd::Config {
            state_dir: dir.path().join("state"),
            ..ipcd::Config::default()
        };
        let (listener, socket_file) = ipcd::bind(&socket).expect("bind the socket");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("the daemon's runtime");
            runtime
                .block_on(ipcd::run(listener, config, async {
                    let _ = stopped.await;
                }))
                .expect("the daemon ran");
            drop(socket_file);
        });
        Daemon {
            _dir: dir,
            socket,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn client(&self) -> BlockingClient {
        BlockingClient::connect_to(&self.socket).expect("connect to the daemon")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub struct Ipcd<'a> {
    daemon: &'a Daemon,
}

impl<'a> Ipcd<'a> {
    pub fn new(daemon: &'a Daemon) -> Self {
        Ipcd { daemon }
    }

    /// A fresh mailbox for one case, big enough for anything in flight.
    fn mailbox(&mut self) -> MailboxName {
        let name = fresh_name();
        self.daemon
            .client()
            .request(&create(&name))
            .expect("create the mailbox");
        name
    }

    /// `n` fresh mailboxes, made by `admin` many requests at a time.
    fn mailboxes(admin: &mut BlockingClient, n: usize) -> Vec<MailboxName> {
        let names: Vec<MailboxName> = (0..n).map(|_| fresh_name()).collect();
        pump(admin, n, 256, |k| create(&names[k]), |_, _| {});
        names
    }

    /// Removes `names`, many requests at a time.
    fn remove(admin: &mut BlockingClient, names: &[MailboxName]) {
        let remove = |k: usize| Request::Remove {
            mailbox: names[k].clone(),
        };
        pump(admin, names.len(), 256, remove, |_, _| {});
    }
}

/// A name no case has used.
fn fresh_name() -> MailboxName {
    static CASES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CASES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("bench.{n}").parse().expect("a valid name")
}

/// The creation of mailbox `name`, big enough for anything a case has in flight.
fn create(name: &MailboxName) -> Request {
    Request::Create(Box::new(CreateRequest {
        mailbox: name.clone(),
        mode: None,
        durable: false,
        fsync: None,
        limits: LimitChanges {
            max_msgs: Some(1_000_000),
            max_bytes: Some(1 << 30),
            max_msg_size: Some(1 << 20),
        },
        delivery: Default::default(),
        exist_ok: false,
    }))
}

fn send(mailbox: &MailboxName, body: Vec<u8>) -> Request {
    Request::Send(SendRequest {
        mailbox: mailbox.clone(),
        mtype: 1,
        headers: Default::default(),
        wait: Wait::Forever,
        ttl_ms: None,
        delay_ms: None,
        payload: Bytes::from(body),
    })
}

fn recv(mailbox: &MailboxName) -> Request {
    Request::Recv(RecvRequest {
        mailbox: mailbox.clone(),
        selector: Selector::Any,
        wait: Wait::Forever,
        peek: false,
        lease: None,
        max_size: None,
    })
}

/// Runs `n` requests made by `make` with up to `window` in flight; hands each reply to
/// `done` with its request id. Replies of blocked requests may arrive in any order; the
/// request ids say in which order they were asked.
fn pump(
    c: &mut BlockingClient,
    n: usize,
    window: usize,
    mut make: impl FnMut(usize) -> Request,
    mut done: impl FnMut(u64, Response),
) {
    let (mut submitted, mut answered) = (0, 0);
    while answered < n {
        // Refilled once half the window is answered, as `ipcctl`'s pipeline does: one
        // write carries half a window of requests, where refilling after every reply
        // would cost a write (and a wake-up of the daemon) per request.
        if submitted - answered <= window / 2 {
            while submitted < n && submitted - answered < window {
                c.submit(&make(submitted)).expect("submit");
                submitted += 1;
            }
        }
        let (id, reply) = c.next_reply().expect("a reply");
        if let Response::Error(e) = &reply {
            panic!("the daemon refused: {}", e.message);
        }
        done(id, reply);
        answered += 1;
    }
}

/// Moves `total` messages in requests of up to `batch` each, with up to `in_flight`
/// requests out: `make(first, count)` makes the request for messages `first..first +
/// count`, and `done` takes each reply with its request id and says how many messages it
/// moved (a receive may bring fewer than it asked for; what it did not bring is asked
/// again).
fn pump_batches(
    c: &mut BlockingClient,
    total: usize,
    batch: usize,
    in_flight: usize,
    mut make: impl FnMut(usize, usize) -> Request,
    mut done: impl FnMut(u64, Response) -> usize,
) {
    let mut asked = std::collections::HashMap::new();
    let (mut outstanding, mut moved) = (0, 0);
    while moved < total {
        while asked.len() < in_flight && moved + outstanding < total {
            let count = batch.min(total - moved - outstanding);
            let id = c.submit(&make(moved + outstanding, count)).expect("submit");
            asked.insert(id, count);
            outstanding += count;
        }
        let (id, reply) = c.next_reply().expect("a reply");
        if let Response::Error(e) = &reply {
            panic!("the daemon refused: {}", e.message);
        }
        outstanding -= asked.remove(&id).expect("a reply to a request made");
        moved += done(id, reply);
    }
}

impl Ipcd<'_> {
    /// Runs one streaming case on a fresh mailbox: `produce(client, mailbox, p)` sends
    /// producer `p`'s share, `consume(client, mailbox)` takes one consumer's share and
    /// returns `(request id, sequence number)` for each message it took. Checks that every
    /// consumer got its share and, 1→1, in order; returns messages per second.
    fn run_case(
        &mut self,
        case: Stream,
        produce: impl Fn(&mut BlockingClient, &MailboxName, usize) + Sync,
        consume: impl Fn(&mut BlockingClient, &MailboxName) -> Vec<(u64, u64)> + Sync,
    ) -> Option<f64> {
        let name = self.mailbox();
        let mut producers: Vec<_> = (0..case.producers).map(|_| self.daemon.client()).collect();
        let mut consumers: Vec<_> = (0..case.consumers).map(|_| self.daemon.client()).collect();
        let (produce, consume, name) = (&produce, &consume, &name);
        let start = Instant::now();
        let (elapsed, took) = std::thread::scope(|s| {
            for (p, c) in producers.iter_mut().enumerate() {
                s.spawn(move || produce(c, name, p));
            }
            let handles: Vec<_> = consumers
                .iter_mut()
                .map(|c| s.spawn(move || consume(c, name)))
                .collect();
            let took: Vec<_> = handles
                .into_iter()
                .map(|h| h.join().expect("consumer"))
                .collect();
            (start.elapsed(), took)
        });
        // Checked once the clock has stopped, as for every transport.
        for mut taken in took {
            assert_eq!(
                taken.len(),
                case.messages / case.consumers,
                "a consumer missed messages"
            );
            // Messages go to receives in the order they were asked; a stable sort by
            // request id keeps each reply's own order.
            taken.sort_by_key(|&(id, _)| id);
            if case.producers == 1 && case.consumers == 1 {
                in_order(&taken.into_iter().map(|(_, seq)| seq).collect::<Vec<_>>());
            }
        }
        let rate = case.messages as f64 / elapsed.as_secs_f64();
        self.daemon.client().remove(name.as_str()).expect("remove");
        Some(rate)
    }
}

impl Transport for Ipcd<'_> {
    fn name(&self) -> &'static str {
        "ipcd"
    }

    fn stream(&mut self, case: Stream) -> Option<f64> {
        let per_producer = case.messages / case.producers;
        let per_consumer = case.messages / case.consumers;
        let produce = |c: &mut BlockingClient, name: &MailboxName, p: usize| {
            let first = p * per_producer;
            let send = |k| send(name, payload((first + k) as u64, case.size));
            pump(c, per_producer, case.window, send, |_, _| {});
        };
        let consume = |c: &mut BlockingClient, name: &MailboxName| {
            let mut taken = Vec::with_capacity(per_consumer);
            let take = recv(name);
            let took = |id, reply| match reply {
                Response::Message(m) => taken.push((id, check(&m.payload, case.size))),
                other => panic!("{other:?}"),
            };
            pump(c, per_consumer, case.window, |_| take.clone(), took);
            taken
        };
        self.run_case(case, produce, consume)
    }

    /// Streaming in batches: each producer sends `case.window` messages per request
    /// (`SendBatch`), each consumer takes up to as many per request (`RecvBatch`); two
    /// requests in flight per connection.
    fn batched(&mut self, case: Stream) -> Option<f64> {
        let per_producer = case.messages / case.producers;
        let per_consumer = case.messages / case.consumers;
        let produce = |c: &mut BlockingClient, name: &MailboxName, p: usize| {
            let make = |first: usize, count: usize| {
                let messages = (first..first + count)
                    .map(|k| ipc_proto::BatchMessage {
                        mtype: 1,
                        headers: Default::default(),
                        ttl_ms: None,
                        delay_ms: None,
                        payload: Bytes::from(payload((p * per_producer + k) as u64, case.size)),
                    })
                    .collect();
                Request::SendBatch(ipc_proto::SendBatchRequest {
                    mailbox: name.clone(),
                    wait: Wait::Forever,
                    messages,
                })
            };
            let sent = |_, reply| match reply {
                Response::SentBatch(outcomes) => {
                    assert!(outcomes.iter().all(Result::is_ok), "a send failed");
                    outcomes.len()
                }
                other => panic!("{other:?}"),
            };
            pump_batches(c, per_producer, case.window, 2, make, sent);
        };
        let consume = |c: &mut BlockingClient, name: &MailboxName| {
            let mut taken = Vec::with_capacity(per_consumer);
            let take = |_, count: usize| {
                Request::RecvBatch(ipc_proto::RecvBatchRequest {
                    mailbox: name.clone(),
                    selector: Selector::Any,
                    max: u32::try_from(count).expect("a batch"),
                    wait: Wait::Forever,
                    lease: None,
                })
            };
            let took = |id, reply| match reply {
                Response::Messages(messages) => {
                    for m in &messages {
                        taken.push((id, check(&m.payload, case.size)));
                    }
                    messages.len()
                }
                other => panic!("{other:?}"),
            };
            pump_batches(c, per_consumer, case.window, 2, take, took);
            taken
        };
        self.run_case(case, produce, consume)
    }

    /// Each side writes its send and its next receive together and reads both answers:
    /// the send's answer is still read and checked, but the receive is not held back
    /// behind it (the kernel's queues and the sockets answer a send with no round trip).
    fn ping_pong(&mut self, size: usize, rounds: usize) -> Option<Vec<Duration>> {
        let (ping, pong) = (self.mailbox(), self.mailbox());
        let mut echo = self.daemon.client();
        let mut me = self.daemon.client();
        let times = std::thread::scope(|s| {
            let (ping, pong) = (&ping, &pong);
            s.spawn(move || {
                let mut unsent = 0;
                let mut waiting = echo.submit(&recv(ping)).expect("recv");
                for i in 0..rounds {
                    let m = message_for(&mut echo, waiting, &mut unsent);
                    echo.submit(&send(pong, m.payload.to_vec())).expect("send");
                    unsent += 1;
                    if i + 1 < rounds {
                        waiting = echo.submit(&recv(ping)).expect("recv");
                    }
                }
                sends_answered(&mut echo, &mut unsent);
            });
            let mut unsent = 0;
            let times = (0..rounds)
                .map(|i| {
                    let start = Instant::now();
                    me.submit(&send(ping, payload(i as u64, size)))
                        .expect("send");
                    unsent += 1;
                    let waiting = me.submit(&recv(pong)).expect("recv");
                    let m = message_for(&mut me, waiting, &mut unsent);
                    let elapsed = start.elapsed();
                    assert_eq!(check(&m.payload, size), i as u64);
                    elapsed
                })
                .collect();
            sends_answered(&mut me, &mut unsent);
            times
        });
        Some(times)
    }
}

/// Reads answers until the one to receive `id`, each other one the answer to a send
/// (counted off `unsent`).
fn message_for(client: &mut BlockingClient, id: u64, unsent: &mut usize) -> ipc_proto::Message {
    loop {
        match client.next_reply().expect("a reply") {
            (got, Response::Message(m)) if got == id => return m,
            (_, Response::Sent { .. }) => *unsent -= 1,
            (_, other) => panic!("{other:?}"),
        }
    }
}

/// Reads the answers to the sends still unanswered.
fn sends_answered(client: &mut BlockingClient, unsent: &mut usize) {
    while *unsent > 0 {
        match client.next_reply().expect("a reply") {
            (_, Response::Sent { .. }) => *unsent -= 1,
            (_, other) => panic!("{other:?}"),
        }
    }
}

/// A scale case's figures: the median of its rounds' rates, and of the CPU time the
/// process (clients and daemon) spent per message.
#[derive(Debug, Clone, Copy)]
pub struct Scaled {
    pub rate: f64,
    pub cpu_per_message: Duration,
}

/// Rounds of scale cases, the cases taking turns within each round: a scale figure is a
/// cost compared across cases, and a machine whose speed drifts during the run (a VM's
/// host busy for a while) then slows every case alike, instead of the cases measured
/// while it lasted.
struct Rounds {
    messages: usize,
    /// Each case's rounds so far: msg/s, and CPU time per message.
    cases: Vec<Vec<(f64, Duration)>>,
}

impl Rounds {
    fn new(cases: usize, messages: usize) -> Self {
        Self {
            messages,
            cases: vec![Vec::new(); cases],
        }
    }

    /// Runs one round of case `case`: `round` moves `messages` and returns its msg/s.
    fn run(&mut self, case: usize, round: impl FnOnce() -> f64) {
        let before = cpu_time();
        let rate = round();
        let cpu =
            cpu_time().saturating_sub(before) / u32::try_from(self.messages).unwrap_or(u32::MAX);
        self.cases[case].push((rate, cpu));
    }

    /// Each case's medians.
    fn medians(self) -> Vec<Scaled> {
        self.cases
            .into_iter()
            .map(|mut rounds| {
                let mid = rounds.len() / 2;
                rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
                let rate = rounds[mid].0;
                rounds.sort_by_key(|r| r.1);
                Scaled {
                    rate,
                    cpu_per_message: rounds[mid].1,
                }
            })
            .collect()
    }
}

/// Rounds each scale case runs.
pub const SCALE_ROUNDS: usize = 3;

/// The CPU time this process has used, user and system, all threads.
fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is valid, and getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid out-pointer.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0;
    assert!(ok, "getrusage: {}", std::io::Error::last_os_error());
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// This process's resident memory, in bytes (the daemon runs in it).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS in /proc/self/status")
        * 1024
}

impl Ipcd<'_> {
    /// 1→1, 64 B, window 64, through one mailbox while the daemon holds each of
    /// `counts` mailboxes in all (ascending), the cases taking turns in each round.
    pub fn with_mailboxes(&mut self, counts: &[usize], messages: usize) -> Vec<Scaled> {
        let mut admin = self.daemon.client();
        let mut rounds = Rounds::new(counts.len(), messages);
        for _ in 0..SCALE_ROUNDS {
            let mut others = Vec::new();
            for (case, &count) in counts.iter().enumerate() {
                let more = count.saturating_sub(others.len() + 1);
                others.extend(Self::mailboxes(&mut admin, more));
                rounds.run(case, || {
                    self.stream(Stream {
                        producers: 1,
                        consumers: 1,
                        size: 64,
                        window: 64,
                        messages,
                    })
                    .expect("ipcd carries 64 B")
                });
            }
            Self::remove(&mut admin, &others);
        }
        rounds.medians()
    }

    /// 1→1, 64 B, window 64, through a mailbox already holding each of `depths` messages
    /// (taken from the front as new ones go to the back): one mailbox per depth, all
    /// filled first, the cases taking turns in each round.
    pub fn with_depth(&mut self, depths: &[usize], messages: usize) -> Vec<Scaled> {
        let mut producer = self.daemon.client();
        let mut consumer = self.daemon.client();
        let mut filled: Vec<(MailboxName, usize)> = depths
            .iter()
            .map(|&depth| {
                let mailbox = self.mailbox();
                pump(
                    &mut producer,
                    depth,
                    256,
                    |k| send(&mailbox, payload(k as u64, 64)),
                    |_, _| {},
                );
                (mailbox, depth)
            })
            .collect();
        let mut rounds = Rounds::new(depths.len(), messages);
        for _ in 0..SCALE_ROUNDS {
            for (case, (mailbox, sent)) in filled.iter_mut().enumerate() {
                rounds.run(case, || {
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        let (mailbox, producer, first) = (&*mailbox, &mut producer, *sent);
                        s.spawn(move || {
                            pump(
                                producer,
                                messages,
                                64,
                                |k| send(mailbox, payload((first + k) as u64, 64)),
                                |_, _| {},
                            );
                        });
                        let take = recv(mailbox);
                        pump(&mut consumer, messages, 64, |_| take.clone(), |_, _| {});
                    });
                    messages as f64 / start.elapsed().as_secs_f64()
                });
                *sent += messages;
            }
        }
        let mut admin = self.daemon.client();
        for (mailbox, _) in filled {
            admin.remove(mailbox.as_str()).expect("remove");
        }
        rounds.medians()
    }

    /// Resident bytes the daemon adds per queued 64-byte message beyond its payload, with
    /// `count` queued in one memory mailbox.
    pub fn bytes_per_message(&mut self, count: usize) -> f64 {
        let mailbox = self.mailbox();
        let mut producer = self.daemon.client();
        let before = rss_bytes();
        pump(
            &mut producer,
            count,
            256,
            |k| send(&mailbox, payload(k as u64, 64)),
            |_, _| {},
        );
        let after = rss_bytes();
        self.daemon
            .client()
            .remove(mailbox.as_str())
            .expect("remove");
        after.saturating_sub(before) as f64 / count as f64 - 64.0
    }
}
