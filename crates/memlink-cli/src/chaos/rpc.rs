//! Request/response under attack: the server process (1 to 3 workers, rings of 4 to 256 KiB,
//! killed every ~2 s and restarted) and the client processes (one killed every ~50 ms and replaced; one or two calling
//! threads sharing a `Client` of one or eight connections, one thread with timeouts, one
//! without), plain calls and streams.
//!
//! The server's handlers write each call they execute to the server's ledger *before* the reply
//! leaves (`EXECUTED`, and `STREAM_DONE` before a stream's clean end), so a reply can be proven
//! to have come from a recorded execution. A client checks every reply and item (this call's id,
//! this request's bytes transformed; items in order) and writes every outcome to its ledger.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memlink::{Client, Error, Server, ServerCommand, StreamSink};

use super::ledger::{Board, Counter, Ledger, Record, Stop, Victim, now_ns};
use super::wire::{self, MAX_PAYLOAD, Request, Rng};
use super::{Common, code, enter, kind, other};

/// How long a client waits for one call or stream item. The server is killed every ~2 s, so a
/// call blocked this long is stuck (counted as hung).
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a server (or publisher) waits for its killed predecessor to free the name.
pub(crate) const NAME_WAIT: Duration = Duration::from_secs(30);
/// The share of calls that ask for a stream, in percent.
const STREAM_PERCENT: u64 = 10;
/// The share of streams that the client drops part-way (cancelling them), in percent.
const CANCEL_PERCENT: u64 = 30;

/// `memlink __chaos rpc-server`: serves until killed (or SIGTERM at the end of the run).
pub(crate) fn server(common: &Common, name: &str, idle_exit: Option<Duration>) -> io::Result<()> {
    let (_board, ledger) = enter(common)?;
    let pid = std::process::id();
    let started = Instant::now();
    let mut rng = Rng::new(common.seed);
    let workers = 1 + rng.below(3) as usize;
    // Rings from the smallest (a 1 MiB message wraps a 4 KiB ring hundreds of times) to the
    // default.
    let ring = 4096 << (2 * rng.below(4));
    let mut options = Server::options();
    if let Some(idle) = idle_exit {
        options = options.exit_when_idle(idle);
    }
    let server = loop {
        let bound = options
            .clone()
            .workers(workers)
            .ring_capacity(ring)
            .max_clients(4096)
            .max_clients_per_uid(4096)
            .max_streams(256)
            .max_streams_per_uid(256)
            .shutdown_grace(Duration::from_secs(1))
            .bind(name);
        match bound {
            Ok(server) => break server,
            // The previous incarnation was killed just before this one started: its name is
            // free once the kernel has finished it off (on a crowded machine, up to seconds).
            Err(Error::AlreadyRunning { .. }) if started.elapsed() < NAME_WAIT => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(other(e)),
        }
    };
    let stop = server.shutdown_handle();
    ctrlc::set_handler(move || stop.shutdown()).map_err(other)?;
    ledger.write(Record::new(kind::SERVER_UP, 0, now_ns(), 0, 0))?;
    let ledger = Arc::new(ledger);
    let record = {
        let ledger = Arc::clone(&ledger);
        move |record: Record| {
            if let Err(e) = ledger.write(record) {
                // Without its record a reply could not be checked: stop loudly instead.
                eprintln!("chaos server: cannot write the ledger: {e}");
                std::process::exit(3);
            }
        }
    };
    let plain = {
        let record = record.clone();
        move |request: &[u8], reply: &mut Vec<u8>| match wire::parse_request(request) {
            Ok(parsed) if parsed.items == 0 => {
                record(Record::new(
                    kind::EXECUTED,
                    0,
                    parsed.client,
                    parsed.call,
                    0,
                ));
                wire::encode_reply(&parsed, pid, reply);
            }
            Ok(_) => wire::encode_refusal("a stream request arrived as a plain call", reply),
            Err(why) => {
                record(Record::new(kind::BAD_REQUEST, 0, 0, 0, 0));
                eprintln!("chaos server: bad request: {why}");
                wire::encode_refusal(why, reply);
            }
        }
    };
    let streams = move |request: &[u8], sink: &mut StreamSink| -> memlink::Result<()> {
        let parsed = wire::parse_request(request).map_err(|why| {
            record(Record::new(kind::BAD_REQUEST, 1, 0, 0, 0));
            eprintln!("chaos server: bad stream request: {why}");
            Error::Os {
                op: "chaos: checking a stream request",
                source: io::Error::other(why),
            }
        })?;
        record(Record::new(
            kind::STREAM_STARTED,
            0,
            parsed.client,
            parsed.call,
            0,
        ));
        let mut item = Vec::new();
        for index in 0..parsed.items {
            wire::encode_item(&parsed, index, pid, &mut item);
            sink.send(&item)?;
        }
        record(Record::new(
            kind::STREAM_DONE,
            0,
            parsed.client,
            parsed.call,
            parsed.items,
        ));
        Ok(())
    };
    server.serve_with(plain, streams).map_err(other)
}

/// One calling thread of a client process.
struct Caller {
    board: Arc<Board>,
    ledger: Arc<Ledger>,
    me: u64,
    /// Call ids of this thread are `thread << THREAD_SHIFT | n`.
    thread: u64,
    /// Whether this thread gives its calls a timeout (or waits as long as it takes).
    timed: bool,
    /// What kind of server it calls (whose kills it looks for when woken by a death).
    victim: Victim,
    rng: Rng,
    /// Servers this thread has had a reply from (it writes down the first reply from each).
    servers_seen: Vec<u32>,
    sent: Vec<u8>,
    reply: Vec<u8>,
    watch: Arc<Watch>,
}

/// Where a calling thread's call ids start: `thread << THREAD_SHIFT`.
pub(crate) const THREAD_SHIFT: u32 = 40;

/// What the watchdog sees of a calling thread: the call in progress and since when.
struct Watch {
    call: AtomicU64,
    since: AtomicU64,
    /// How long a call may run before it counts as hung: [`CALL_TIMEOUT`] for calls without a
    /// timeout, twice that for calls with one (which should have ended with `Timeout` by then,
    /// and are counted as hung for that).
    limit: Duration,
}

impl Watch {
    fn begin(&self, call: u64) {
        self.call.store(call, Ordering::Relaxed);
        self.since.store(now_ns(), Ordering::Relaxed);
    }

    fn end(&self) {
        self.since.store(0, Ordering::Relaxed);
    }
}

/// `memlink __chaos rpc-client`: calls until told to stop (or killed), from one or two
/// threads sharing one `Client`; one thread gives its calls a timeout, the other waits as long
/// as it takes, with a watchdog writing down any call that takes longer than [`CALL_TIMEOUT`].
pub(crate) fn client(common: &Common, name: &str, on_demand: bool) -> io::Result<()> {
    let (board, ledger) = enter(common)?;
    let mut rng = Rng::new(common.seed);
    let threads = 1 + rng.below(2);
    // Half the clients have one connection for their threads to share: then a thread waits
    // for the other's call (or stream) to end before it can call.
    let connections = if rng.percent(50) { 1 } else { 8 };
    let mut options = Client::options().max_concurrent_calls(connections);
    if on_demand {
        // This very program as the server, exiting after a second without clients.
        let command = ServerCommand::current_exe()
            .map_err(other)?
            .arg("__chaos")
            .arg("rpc-server")
            .arg("--dir")
            .arg(&common.dir)
            .args(["--board", &common.board])
            .args(["--run-seed", &common.run_seed.to_string()])
            .args(["--seed", &rng.next_u64().to_string()])
            .args(["--parent", "0", "--name", name, "--idle-exit-ms", "1000"]);
        options = options.start_server(command);
    }
    let victim = if on_demand {
        Victim::OnDemandServer
    } else {
        Victim::Server
    };
    let client = loop {
        if board.stopped(Stop::Clients) {
            return Ok(());
        }
        let connected = if on_demand {
            options.connect(name)
        } else {
            options.connect_timeout(name, Duration::from_secs(1))
        };
        match connected {
            Ok(client) => break client,
            Err(e) => {
                ledger.write(Record::new(kind::CONNECT_FAILED, code(&e), 0, 0, 0))?;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    };
    let (board, ledger, client) = (Arc::new(board), Arc::new(ledger), Arc::new(client));
    let mut callers: Vec<Caller> = (0..threads)
        .map(|thread| Caller {
            board: board.clone(),
            ledger: ledger.clone(),
            me: u64::from(std::process::id()),
            thread,
            timed: thread == 0,
            rng: Rng::new(wire::derive(common.seed, thread + 1)),
            victim,
            servers_seen: Vec::new(),
            sent: Vec::new(),
            reply: Vec::new(),
            watch: Arc::new(Watch {
                call: AtomicU64::new(0),
                since: AtomicU64::new(0),
                limit: if thread == 0 {
                    2 * CALL_TIMEOUT
                } else {
                    CALL_TIMEOUT
                },
            }),
        })
        .collect();
    let watches: Vec<Arc<Watch>> = callers.iter().map(|c| c.watch.clone()).collect();
    {
        let ledger = ledger.clone();
        std::thread::spawn(move || watchdog(&ledger, &watches));
    }
    let first = callers.remove(0);
    let others: Vec<_> = callers
        .into_iter()
        .map(|caller| {
            let client = client.clone();
            std::thread::spawn(move || caller.run(&client))
        })
        .collect();
    let mut result = first.run(&client);
    for other_thread in others {
        let joined = other_thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("a calling thread panicked")));
        result = result.and(joined);
    }
    result
}

/// Writes down (once per call) every call that has been running longer than its limit, for
/// as long as the process lives (a call stuck at the end is caught too).
fn watchdog(ledger: &Ledger, watches: &[Arc<Watch>]) {
    let mut reported = vec![0u64; watches.len()];
    loop {
        std::thread::sleep(Duration::from_millis(100));
        for (watch, reported) in watches.iter().zip(&mut reported) {
            let since = watch.since.load(Ordering::Relaxed);
            let call = watch.call.load(Ordering::Relaxed);
            if since != 0
                && call != *reported
                && now_ns().saturating_sub(since) > watch.limit.as_nanos() as u64
            {
                *reported = call;
                eprintln!(
                    "chaos client: call {call} has been running for over {:?}",
                    watch.limit
                );
                let _ = ledger.write(Record::new(kind::HUNG, 0, call, 0, 0));
            }
        }
    }
}

impl Caller {
    fn run(mut self, client: &Client) -> io::Result<()> {
        let mut n = 0;
        while !self.board.stopped(Stop::Clients) {
            n += 1;
            let call = (self.thread << THREAD_SHIFT) | n;
            self.watch.begin(call);
            if self.rng.percent(STREAM_PERCENT) {
                self.stream(client, call)?;
            } else {
                self.plain(client, call)?;
            }
            self.watch.end();
        }
        Ok(())
    }

    fn plain(&mut self, client: &Client, call: u64) -> io::Result<()> {
        let request = Request {
            client: self.me,
            call,
            payload_seed: self.rng.next_u64(),
            items: 0,
            stream_seed: 0,
        };
        let len = wire::skewed_size(&mut self.rng, MAX_PAYLOAD);
        request.encode(len, &mut self.sent);
        self.board.add(Counter::Calls, 1);
        let t0 = now_ns();
        let result = if self.timed {
            client.call_into_timeout(&self.sent, &mut self.reply, CALL_TIMEOUT)
        } else {
            client.call_into(&self.sent, &mut self.reply)
        };
        let t1 = now_ns();
        match result {
            Ok(()) => match wire::check_reply(&self.reply, &request, &self.sent) {
                Ok(server) => {
                    self.ledger.write(Record::new(
                        kind::REPLY_OK,
                        0,
                        call,
                        u64::from(server),
                        0,
                    ))?;
                    self.board.add(Counter::Replies, 1);
                    self.first_reply(server, t1)?;
                }
                Err(why) => self.wrong(kind::PATTERN_RPC, call, &why)?,
            },
            Err(e) => self.failed(&e, call, false, 0, t0, t1)?,
        }
        Ok(())
    }

    fn stream(&mut self, client: &Client, call: u64) -> io::Result<()> {
        let items = self.rng.range(1, 64);
        let cancel_at = self
            .rng
            .percent(CANCEL_PERCENT)
            .then(|| self.rng.below(items));
        let request = Request {
            client: self.me,
            call,
            payload_seed: self.rng.next_u64(),
            items,
            stream_seed: self.rng.next_u64(),
        };
        let len = wire::skewed_size(&mut self.rng, 4096);
        request.encode(len, &mut self.sent);
        self.board.add(Counter::Calls, 1);
        self.board.add(Counter::Streams, 1);
        let t0 = now_ns();
        let opened = if self.timed {
            client.call_stream_timeout(&self.sent, CALL_TIMEOUT)
        } else {
            client.call_stream(&self.sent)
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(e) => return self.failed(&e, call, true, 0, t0, now_ns()),
        };
        let mut got = 0;
        let mut server = None;
        loop {
            if cancel_at == Some(got) {
                drop(stream); // cancels it on the server
                return self
                    .ledger
                    .write(Record::new(kind::STREAM_CANCELLED, 0, call, got, items));
            }
            let t0 = now_ns();
            let next = if self.timed {
                stream.next_into_timeout(&mut self.reply, CALL_TIMEOUT)
            } else {
                stream.next_into(&mut self.reply)
            };
            let t1 = now_ns();
            match next {
                Ok(true) => match wire::check_item(&self.reply, &request, got) {
                    Ok(pid) if server.is_none_or(|s| s == pid) => {
                        server = Some(pid);
                        got += 1;
                    }
                    Ok(pid) => {
                        let why = format!(
                            "item {got} from server {pid}, the ones before from {server:?}"
                        );
                        return self.wrong(kind::PATTERN_STREAM, call, &why);
                    }
                    Err(why) => return self.wrong(kind::PATTERN_STREAM, call, &why),
                },
                Ok(false) => {
                    let server = server.unwrap_or(0);
                    if got == items {
                        self.ledger.write(Record::new(
                            kind::STREAM_OK,
                            0,
                            call,
                            u64::from(server),
                            got,
                        ))?;
                        self.board.add(Counter::Replies, 1);
                        return self.first_reply(server, t1);
                    }
                    eprintln!(
                        "chaos client: stream {call} ended cleanly after {got} of {items} items"
                    );
                    return self
                        .ledger
                        .write(Record::new(kind::STREAM_SHORT, 0, call, got, items));
                }
                Err(e) => return self.failed(&e, call, true, got, t0, t1),
            }
        }
    }

    fn first_reply(&mut self, server: u32, at: u64) -> io::Result<()> {
        if !self.servers_seen.contains(&server) {
            self.servers_seen.push(server);
            self.ledger
                .write(Record::new(kind::FIRST_REPLY, 0, u64::from(server), at, 0))?;
        }
        Ok(())
    }

    fn wrong(&mut self, pattern: u32, call: u64, why: &str) -> io::Result<()> {
        eprintln!("chaos client {}: WRONG call {call}: {why}", self.me);
        self.board.add(Counter::Wrong, 1);
        self.ledger
            .write(Record::new(kind::WRONG, pattern, call, 0, 0))
    }

    /// A call (or a stream, after `items` good items) that ended with `error`, between `t0`
    /// and `t1`.
    fn failed(
        &mut self,
        error: &Error,
        call: u64,
        stream: bool,
        items: u64,
        t0: u64,
        t1: u64,
    ) -> io::Result<()> {
        if let Error::HandlerFailed { reason, .. } = error {
            // Our stream handler fails only for a request that arrived broken.
            let why = format!("server: {reason}");
            return self.wrong(kind::PATTERN_STREAM, call, &why);
        }
        self.board.add(Counter::Errors, 1);
        let pattern = if stream {
            kind::PATTERN_STREAM
        } else {
            kind::PATTERN_RPC
        };
        self.ledger.write(Record::new(
            kind::CALL_FAILED,
            code(error),
            call,
            pattern.into(),
            items,
        ))?;
        match error {
            Error::Disconnected { .. } => {
                // Blocked when the server was killed: how long the wake-up took.
                if let Some((killed, server)) = self.board.kill_between(self.victim, t0, t1) {
                    let pattern = if self.victim == Victim::OnDemandServer {
                        kind::PATTERN_ON_DEMAND
                    } else {
                        pattern
                    };
                    let kills = self.board.kills_between(self.victim, t0, t1);
                    self.ledger.write(Record::new(
                        kind::WAKE,
                        pattern,
                        t1 - killed,
                        u64::from(server),
                        // How many servers died during the call (more than one: it was sent
                        // again to the next server, which died too), and when it ended.
                        (kills << 56) | t1.min((1 << 56) - 1),
                    ))?;
                }
            }
            Error::NotRunning { .. } => std::thread::sleep(Duration::from_millis(1)),
            _ => {}
        }
        Ok(())
    }
}
