//! After the run: reads every ledger, checks each pattern's promises (see the module docs of
//! `chaos` for what acknowledged, lost and wrong mean), and prints the summary table or JSON.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::Path;
use std::time::Duration;

use comfy_table::{Table, presets};
use serde_json::{Value, json};

use super::ledger::{self, Board, Counter, Record, read_ledger};
use super::rpc::THREAD_SHIFT;
use super::{CODE_DISCONNECTED, CODE_TIMEOUT, ERROR_NAMES, WAKE_BOUND, WAKE_GOAL, kind};

/// A child's life as the driver saw it.
#[derive(Debug, Clone)]
pub(crate) struct Life {
    pub(crate) pid: u32,
    pub(crate) killed: bool,
    /// When the driver killed it (`CLOCK_MONOTONIC` ns), for servers and publishers.
    pub(crate) killed_at: Option<u64>,
}

impl Life {
    pub(crate) fn new(pid: u32) -> Self {
        Life {
            pid,
            killed: false,
            killed_at: None,
        }
    }
}

/// How a duplex pair ended after one side was killed.
#[derive(Debug, Clone)]
pub(crate) struct PairEnd {
    pub(crate) victim: u32,
    pub(crate) survivor: u32,
    pub(crate) hung: bool,
    pub(crate) clean_exit: bool,
    pub(crate) stderr: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Unexpected {
    pub(crate) role: &'static str,
    pub(crate) pid: u32,
    pub(crate) status: String,
    pub(crate) stderr: String,
}

/// Descriptors and resident memory of a process that lives through the run.
#[derive(Debug, Clone)]
pub(crate) struct Usage {
    pub(crate) role: &'static str,
    pub(crate) pid: u32,
    pub(crate) fds_start: Option<usize>,
    pub(crate) fds_end: Option<usize>,
    pub(crate) rss_kib_start: Option<u64>,
    pub(crate) rss_kib_end: Option<u64>,
}

/// An rpc server's descriptors while it had no connection.
#[derive(Debug, Clone)]
pub(crate) struct IdleServer {
    pub(crate) when: &'static str,
    pub(crate) pid: u32,
    pub(crate) workers: u32,
    pub(crate) fds: Option<usize>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Kills {
    pub(crate) server: u64,
    pub(crate) client: u64,
    pub(crate) duplex: u64,
    /// Duplex sides killed while their pair formed.
    pub(crate) duplex_early: u64,
    pub(crate) publisher: u64,
    pub(crate) subscriber: u64,
    pub(crate) on_demand_server: u64,
}

/// What the driver knows at the end of the run.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    pub(crate) seed: u64,
    pub(crate) seconds: u64,
    pub(crate) client_processes: usize,
    pub(crate) interrupted: bool,
    pub(crate) servers: Vec<Life>,
    pub(crate) clients: Vec<Life>,
    pub(crate) publishers: Vec<Life>,
    pub(crate) subscribers: Vec<Life>,
    pub(crate) duplex_peers: Vec<u32>,
    pub(crate) pairs: Vec<PairEnd>,
    pub(crate) pairing_failures: u64,
    pub(crate) kills: Kills,
    pub(crate) unexpected: Vec<Unexpected>,
    pub(crate) stuck: Vec<String>,
    pub(crate) usage: Vec<Usage>,
    pub(crate) idle_servers: Vec<IdleServer>,
    /// The driver's own delays: its longest turn of the attack loop (it sleeps 2 ms a turn),
    /// the slowest spawn.
    pub(crate) longest_turn: Duration,
    pub(crate) slowest_spawn: Duration,
    /// Each killed child: when it was killed and when it was found dead (`CLOCK_MONOTONIC` ns).
    pub(crate) deaths: HashMap<u32, (u64, u64)>,
    /// Killed children that took long to die, and what their threads were doing.
    pub(crate) slow_deaths: Vec<String>,
    /// Servers started on demand that came to the driver when their launcher died.
    pub(crate) orphans_reaped: u64,
}

impl Facts {
    /// Notes that the driver killed `pid` (at `at`, if it noted the instant).
    pub(crate) fn killed(&mut self, pid: u32, at: Option<u64>) {
        for life in self
            .servers
            .iter_mut()
            .chain(&mut self.clients)
            .chain(&mut self.publishers)
            .chain(&mut self.subscribers)
        {
            if life.pid == pid {
                life.killed = true;
                life.killed_at = at;
            }
        }
    }
}

/// Percentiles of a set of durations.
#[derive(Debug, Clone, Default)]
pub(crate) struct Dist {
    samples: Vec<u64>,
}

impl Dist {
    fn push(&mut self, ns: u64) {
        self.samples.push(ns);
    }

    fn finish(&mut self) {
        self.samples.sort_unstable();
    }

    fn at(&self, q: f64) -> Option<Duration> {
        let n = self.samples.len();
        (n > 0).then(|| {
            let i = ((n as f64 * q).ceil() as usize).clamp(1, n) - 1;
            Duration::from_nanos(self.samples[i])
        })
    }

    fn max(&self) -> Option<Duration> {
        self.samples.last().map(|&ns| Duration::from_nanos(ns))
    }

    fn json(&self) -> Value {
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
        json!({
            "samples": self.samples.len(),
            "p50_ms": ms(self.at(0.5)),
            "p99_ms": ms(self.at(0.99)),
            "max_ms": ms(self.max()),
        })
    }

    fn text(&self) -> String {
        match (self.at(0.5), self.at(0.99), self.max()) {
            (Some(p50), Some(p99), Some(max)) => format!(
                "{} samples: p50 {}, p99 {}, worst {}",
                self.samples.len(),
                ms(p50),
                ms(p99),
                ms(max)
            ),
            _ => "no samples".to_owned(),
        }
    }
}

/// Wake-ups of peers blocked when a process was killed: measured from the `SIGKILL` (what a
/// user sees), and from the moment the victim was found dead (the part memlink controls: a
/// killed process keeps its sockets until the kernel has torn down its memory, which on a
/// crowded machine can take seconds).
#[derive(Debug, Clone, Default)]
pub(crate) struct Wake {
    from_kill: Dist,
    after_death: Dist,
}

impl Wake {
    /// A peer of `victim` got its error `ns` after the kill.
    fn push(&mut self, ns: u64, victim: u32, deaths: &HashMap<u32, (u64, u64)>) {
        self.push_after_reading(ns, victim, deaths, 0);
    }

    /// A subscriber (or duplex survivor) of `victim` got its `Disconnected` `ns` after the kill,
    /// having spent `reading` of that busy with the victim's samples (messages) it had taken:
    /// what the victim sent before the kill comes first, at the reader's own pace (a slow
    /// subscriber may be thousands of samples behind). The wait counts without that time, and
    /// memlink's share without the longer of it and the victim's dying.
    fn push_after_reading(
        &mut self,
        ns: u64,
        victim: u32,
        deaths: &HashMap<u32, (u64, u64)>,
        reading: u64,
    ) {
        self.from_kill.push(ns.saturating_sub(reading));
        let dying = deaths
            .get(&victim)
            .map_or(0, |(killed, dead)| dead.saturating_sub(*killed));
        self.after_death.push(ns.saturating_sub(dying.max(reading)));
    }

    fn finish(&mut self) {
        self.from_kill.finish();
        self.after_death.finish();
    }

    fn json(&self) -> Value {
        let mut from_kill = self.from_kill.json();
        from_kill["after_victim_dead_max_ms"] =
            json!(self.after_death.max().map(|d| d.as_secs_f64() * 1e3));
        from_kill
    }

    fn text(&self) -> String {
        match self.after_death.max() {
            Some(worst) => format!(
                "{}; once the victim was dead: worst {}",
                self.from_kill.text(),
                ms(worst)
            ),
            None => self.from_kill.text(),
        }
    }

    fn promise(&self) -> String {
        match (self.from_kill.max(), self.after_death.max()) {
            (Some(worst), Some(dead)) => {
                let goal = if worst <= WAKE_GOAL { "met" } else { "missed" };
                let bound = if dead <= WAKE_BOUND { "ok" } else { "FAILED" };
                format!(
                    "goal {}: {goal}; bound {} once dead: {bound}",
                    ms(WAKE_GOAL),
                    ms(WAKE_BOUND)
                )
            }
            _ => String::new(),
        }
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn error_name(code: u32) -> &'static str {
    ERROR_NAMES.get(code as usize).copied().unwrap_or("other")
}

#[derive(Debug, Default)]
struct Rpc {
    calls: u64,
    replies: u64,
    wrong: u64,
    lost: u64,
    executed_twice: u64,
    errors: BTreeMap<&'static str, u64>,
    connect_errors: BTreeMap<&'static str, u64>,
    hung: u64,
    executed_unanswered: u64,
    ended_by_client_death: u64,
    bad_requests: u64,
    on_demand_servers: u64,
    orphans_reaped: u64,
    on_demand_wake: Wake,
    wake: Wake,
    service_back: Dist,
    restarts_without_reply: u64,
}

#[derive(Debug, Default)]
struct Streams {
    started: u64,
    completed: u64,
    cancelled: u64,
    items: u64,
    broken: BTreeMap<&'static str, u64>,
    wrong: u64,
    lost: u64,
}

#[derive(Debug, Default)]
struct DuplexResult {
    pairs_killed: u64,
    messages: u64,
    acknowledged: u64,
    lost: u64,
    wrong: u64,
    without_disconnect: u64,
    hung: u64,
    pairing_failures: u64,
    errors: BTreeMap<&'static str, u64>,
    wake: Wake,
}

#[derive(Debug, Default)]
struct PubsubResult {
    publishers: u64,
    published: u64,
    received: u64,
    lag_reports: u64,
    missed: u64,
    wrong: u64,
    lost: u64,
    disconnects: u64,
    held_at_end: Option<u64>,
    publish_errors: u64,
    errors: BTreeMap<&'static str, u64>,
    wake: Wake,
}

/// The run's result.
#[derive(Debug)]
pub(crate) struct Report {
    seed: u64,
    seconds: u64,
    clients: usize,
    interrupted: bool,
    kills: Kills,
    rpc: Rpc,
    streams: Streams,
    duplex: DuplexResult,
    pubsub: PubsubResult,
    usage: Vec<Usage>,
    idle_servers: Vec<IdleServer>,
    longest_turn: Duration,
    slowest_spawn: Duration,
    /// How long killed children took to die (SIGKILL to reaped).
    deaths: Dist,
    slow_deaths: Vec<String>,
    unexpected: Vec<Unexpected>,
    stuck: Vec<String>,
    failed_survivors: Vec<String>,
    shm_left: Vec<String>,
    sockets_left: Vec<String>,
    children_left: Vec<u32>,
}

/// Executions a server recorded for one client: (call id, record kind, server pid), sorted.
type Executions = HashMap<u64, Vec<(u64, u32, u32)>>;

fn has(executions: &Executions, client: u64, call: u64, kind: u32, server: Option<u32>) -> bool {
    executions.get(&client).is_some_and(|v| {
        let from = v.partition_point(|&(c, k, _)| (c, k) < (call, kind));
        v[from..]
            .iter()
            .take_while(|&&(c, k, _)| (c, k) == (call, kind))
            .any(|&(_, _, s)| server.is_none_or(|want| want == s))
    })
}

/// Reads every ledger and checks every promise.
/// The board's live counters at the end of the run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Totals {
    pub(crate) calls: u64,
    pub(crate) streams: u64,
    pub(crate) duplex_messages: u64,
    pub(crate) samples: u64,
}

impl Totals {
    pub(crate) fn of(board: &Board) -> Self {
        Totals {
            calls: board.get(Counter::Calls),
            streams: board.get(Counter::Streams),
            duplex_messages: board.get(Counter::DuplexMessages),
            samples: board.get(Counter::Samples),
        }
    }
}

pub(crate) fn analyse(dir: &Path, facts: &Facts, totals: &Totals) -> io::Result<Report> {
    let mut report = Report {
        seed: facts.seed,
        seconds: facts.seconds,
        clients: facts.client_processes,
        interrupted: facts.interrupted,
        kills: facts.kills.clone(),
        rpc: Rpc::default(),
        streams: Streams::default(),
        duplex: DuplexResult::default(),
        pubsub: PubsubResult::default(),
        usage: facts.usage.clone(),
        idle_servers: facts.idle_servers.clone(),
        longest_turn: facts.longest_turn,
        deaths: {
            let mut deaths = Dist::default();
            for (killed, dead) in facts.deaths.values() {
                deaths.push(dead.saturating_sub(*killed));
            }
            deaths.finish();
            deaths
        },
        slowest_spawn: facts.slowest_spawn,
        slow_deaths: facts.slow_deaths.clone(),
        unexpected: facts.unexpected.clone(),
        stuck: facts.stuck.clone(),
        failed_survivors: Vec::new(),
        shm_left: Vec::new(),
        sockets_left: Vec::new(),
        children_left: Vec::new(),
    };
    report.rpc.orphans_reaped = facts.orphans_reaped;
    rpc(dir, facts, totals, &mut report)?;
    duplex(dir, facts, totals, &mut report)?;
    pubsub(dir, facts, totals, &mut report)?;
    Ok(report)
}

fn rpc(dir: &Path, facts: &Facts, totals: &Totals, report: &mut Report) -> io::Result<()> {
    let r = &mut report.rpc;
    let s = &mut report.streams;
    let mut executions = Executions::new();
    // The driver's servers, and those its clients started on demand (which it did not spawn:
    // they are the other ledgers that say a server came up).
    let known: HashSet<u32> = facts
        .servers
        .iter()
        .chain(&facts.clients)
        .chain(&facts.publishers)
        .chain(&facts.subscribers)
        .map(|l| l.pid)
        .chain(facts.duplex_peers.iter().copied())
        .collect();
    let mut servers: Vec<u32> = facts.servers.iter().map(|l| l.pid).collect();
    for pid in ledger::ledger_pids(dir) {
        if !known.contains(&pid)
            && read_ledger(dir, pid)?
                .first()
                .is_some_and(|r| r.kind == kind::SERVER_UP)
        {
            servers.push(pid);
            r.on_demand_servers += 1;
        }
    }
    for &server in &servers {
        for record in read_ledger(dir, server)? {
            match record.kind {
                kind::EXECUTED | kind::STREAM_STARTED | kind::STREAM_DONE => executions
                    .entry(record.a)
                    .or_default()
                    .push((record.b, record.kind, server)),
                kind::BAD_REQUEST => r.bad_requests += 1,
                _ => {}
            }
        }
    }
    for calls in executions.values_mut() {
        calls.sort_unstable();
        r.executed_twice += calls
            .windows(2)
            .filter(|w| {
                (w[0].0, w[0].1) == (w[1].0, w[1].1)
                    && matches!(w[0].1, kind::EXECUTED | kind::STREAM_STARTED)
            })
            .count() as u64;
    }
    let streams_started = totals.streams;
    r.calls = totals.calls.saturating_sub(streams_started);
    s.started = streams_started;
    let mut first_reply: HashMap<u32, u64> = HashMap::new();
    for client in &facts.clients {
        let me = u64::from(client.pid);
        // Per calling thread (calls of one thread are made one after another).
        let mut last_outcome: HashMap<u64, u64> = HashMap::new();
        for record in read_ledger(dir, client.pid)? {
            let Record { kind, aux, a, b, c } = record;
            match kind {
                kind::REPLY_OK => {
                    r.replies += 1;
                    if !has(&executions, me, a, kind::EXECUTED, Some(b as u32)) {
                        r.lost += 1;
                        eprintln!(
                            "memlink chaos: LOST: call {me}/{a} was answered by server {b}, which has no record of executing it"
                        );
                    }
                }
                kind::STREAM_OK => {
                    s.completed += 1;
                    s.items += c;
                    if !has(&executions, me, a, kind::STREAM_DONE, Some(b as u32)) {
                        s.lost += 1;
                        eprintln!(
                            "memlink chaos: LOST: stream {me}/{a} ended cleanly but server {b} has no record of finishing it"
                        );
                    }
                }
                kind::STREAM_SHORT => {
                    s.lost += 1;
                    s.items += b;
                }
                kind::STREAM_CANCELLED => {
                    s.cancelled += 1;
                    s.items += b;
                }
                kind::CALL_FAILED => {
                    let name = error_name(aux);
                    let stream = b == u64::from(kind::PATTERN_STREAM);
                    if stream {
                        *s.broken.entry(name).or_default() += 1;
                        s.items += c;
                    } else {
                        *r.errors.entry(name).or_default() += 1;
                    }
                    let executed = if stream {
                        has(&executions, me, a, kind::STREAM_STARTED, None)
                    } else {
                        has(&executions, me, a, kind::EXECUTED, None)
                    };
                    if aux == CODE_TIMEOUT {
                        r.hung += 1;
                        if executed {
                            // Executed, the client alive, and neither a reply nor an error.
                            r.lost += 1;
                        }
                    } else if aux == CODE_DISCONNECTED && executed {
                        r.executed_unanswered += 1;
                    }
                }
                kind::WRONG if aux == kind::PATTERN_STREAM => s.wrong += 1,
                kind::WRONG => r.wrong += 1,
                kind::WAKE if aux == kind::PATTERN_ON_DEMAND => {
                    r.on_demand_wake.push(a, b as u32, &facts.deaths);
                }
                kind::WAKE => r.wake.push(a, b as u32, &facts.deaths),
                kind::FIRST_REPLY => {
                    let first = first_reply.entry(a as u32).or_insert(b);
                    *first = (*first).min(b);
                }
                kind::CONNECT_FAILED => *r.connect_errors.entry(error_name(aux)).or_default() += 1,
                kind::HUNG => r.hung += 1,
                _ => {}
            }
            if matches!(
                kind,
                kind::REPLY_OK
                    | kind::STREAM_OK
                    | kind::STREAM_SHORT
                    | kind::STREAM_CANCELLED
                    | kind::CALL_FAILED
                    | kind::WRONG
            ) {
                let last = last_outcome.entry(a >> THREAD_SHIFT).or_default();
                *last = (*last).max(a);
            }
        }
        // Calls the server executed after the client's last recorded outcome: its death
        // interrupted them, or, for a client that lived to the end, they were lost.
        if let Some(calls) = executions.get(&me) {
            let mut after: Vec<u64> = calls
                .iter()
                .filter(|&&(call, kind, _)| {
                    let last = last_outcome
                        .get(&(call >> THREAD_SHIFT))
                        .copied()
                        .unwrap_or(0);
                    call > last && matches!(kind, kind::EXECUTED | kind::STREAM_STARTED)
                })
                .map(|&(call, _, _)| call)
                .collect();
            after.dedup();
            if client.killed {
                r.ended_by_client_death += after.len() as u64;
            } else if !after.is_empty() {
                r.lost += after.len() as u64;
                eprintln!(
                    "memlink chaos: LOST: client {me} lived on but has no outcome for executed calls {after:?}"
                );
            }
        }
    }
    r.wake.finish();
    r.on_demand_wake.finish();
    for pair in facts.servers.windows(2) {
        match (pair[0].killed_at, first_reply.get(&pair[1].pid)) {
            (Some(killed), Some(&first)) => r.service_back.push(first.saturating_sub(killed)),
            (Some(_), None) => r.restarts_without_reply += 1,
            _ => {}
        }
    }
    r.service_back.finish();
    Ok(())
}

fn duplex(dir: &Path, facts: &Facts, totals: &Totals, report: &mut Report) -> io::Result<()> {
    let d = &mut report.duplex;
    d.messages = totals.duplex_messages;
    d.pairing_failures = facts.pairing_failures;
    for pid in &facts.duplex_peers {
        for record in read_ledger(dir, *pid)? {
            match record.kind {
                kind::WRONG => d.wrong += 1,
                kind::DUPLEX_ERROR => *d.errors.entry(error_name(record.aux)).or_default() += 1,
                _ => {}
            }
        }
    }
    for end in &facts.pairs {
        d.pairs_killed += 1;
        let sent = read_ledger(dir, end.victim)?
            .iter()
            .filter(|r| r.kind == kind::SENT)
            .map(|r| r.a)
            .max()
            .unwrap_or(0);
        d.acknowledged += sent;
        let disconnected = read_ledger(dir, end.survivor)?
            .into_iter()
            .find(|r| r.kind == kind::DISCONNECTED);
        if end.hung {
            d.hung += 1;
        }
        match disconnected {
            Some(record) => {
                let received = record.a;
                if received < sent {
                    d.lost += sent - received;
                    eprintln!(
                        "memlink chaos: LOST: duplex survivor {} got Disconnected after {received} messages; victim {} had {sent} acknowledged",
                        end.survivor, end.victim
                    );
                }
                if received > sent + 1 || record.b != u64::from(end.victim) {
                    d.wrong += 1;
                    eprintln!(
                        "memlink chaos: WRONG: duplex survivor {} received {received} messages from {}; victim {} acknowledged {sent}",
                        end.survivor, record.b, end.victim
                    );
                }
                if record.c != u64::MAX {
                    let reading = u64::from(record.aux) * 1000;
                    d.wake
                        .push_after_reading(record.c, end.victim, &facts.deaths, reading);
                }
            }
            None if !end.hung => {
                d.without_disconnect += 1;
                report.failed_survivors.push(format!(
                    "duplex survivor {} (victim {}) ended without Disconnected{}: {}",
                    end.survivor,
                    end.victim,
                    if end.clean_exit { "" } else { " and failed" },
                    end.stderr
                ));
            }
            None => {}
        }
    }
    d.wake.finish();
    Ok(())
}

fn pubsub(dir: &Path, facts: &Facts, totals: &Totals, report: &mut Report) -> io::Result<()> {
    let p = &mut report.pubsub;
    p.received = totals.samples;
    p.publishers = facts.publishers.len() as u64;
    let mut published: HashMap<u32, u64> = HashMap::new();
    for publisher in &facts.publishers {
        let mut count = 0;
        for record in read_ledger(dir, publisher.pid)? {
            match record.kind {
                kind::PUBLISHED => count = count.max(record.a),
                kind::HELD_AT_END => p.held_at_end = Some(record.a),
                kind::PUBLISH_FAILED => p.publish_errors += 1,
                kind::WRONG => p.wrong += 1,
                _ => {}
            }
        }
        published.insert(publisher.pid, count);
        p.published += count;
    }
    let killed: HashSet<u32> = facts
        .publishers
        .iter()
        .filter(|l| l.killed)
        .map(|l| l.pid)
        .collect();
    for subscriber in &facts.subscribers {
        for record in read_ledger(dir, subscriber.pid)? {
            match record.kind {
                kind::SUB_DISCONNECTED => {
                    p.disconnects += 1;
                    let publisher = record.a as u32;
                    let reading = (record.a >> 32).saturating_mul(1000);
                    if record.c != u64::MAX {
                        p.wake
                            .push_after_reading(record.c, publisher, &facts.deaths, reading);
                    }
                    if !killed.contains(&publisher) {
                        continue;
                    }
                    let acknowledged = published.get(&publisher).copied().unwrap_or(0);
                    let short = if record.b != u64::MAX {
                        if record.b > acknowledged + 1 {
                            p.wrong += 1;
                            eprintln!(
                                "memlink chaos: WRONG: subscriber {} was due sample {} of publisher {publisher}, which acknowledged {acknowledged}",
                                subscriber.pid, record.b
                            );
                        }
                        acknowledged.saturating_sub(record.b)
                    } else if record.aux == 0 {
                        acknowledged
                    } else {
                        0
                    };
                    if short > 0 {
                        p.lost += short;
                        eprintln!(
                            "memlink chaos: LOST: subscriber {} got Disconnected from publisher {publisher} {short} samples short of the {acknowledged} it acknowledged",
                            subscriber.pid
                        );
                    }
                }
                kind::LAGGED => {
                    p.lag_reports += 1;
                    p.missed += record.a;
                }
                kind::WRONG => p.wrong += 1,
                kind::SUBSCRIBE_FAILED => *p.errors.entry(error_name(record.aux)).or_default() += 1,
                _ => {}
            }
        }
    }
    p.wake.finish();
    Ok(())
}

/// The last lines a child wrote to its standard error (at most 600 bytes).
pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(4).collect();
    let mut tail: String = lines.into_iter().rev().collect::<Vec<_>>().join(" / ");
    if tail.len() > 600 {
        let mut cut = tail.len() - 600;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = format!("...{}", &tail[cut..]);
    }
    tail
}

fn counts(map: &BTreeMap<&'static str, u64>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Descriptors a survivor may gain over the run before it counts as a leak (a client between
/// connections holds a few fewer than one connected, and a thread or two may come and go).
const FD_SLACK: usize = 32;

impl Report {
    /// Looks for what the run may have left behind, once everything is reaped.
    pub(crate) fn cleanup(&mut self, me: u32, tag: &str) {
        self.children_left = ledger::children_of(me);
        self.shm_left = ledger::shm_leftovers(tag);
        self.sockets_left = ledger::socket_leftovers(tag);
    }

    /// The latest a peer was woken after its victim was dead.
    fn worst_wake(&self) -> Option<Duration> {
        [
            &self.rpc.wake,
            &self.rpc.on_demand_wake,
            &self.duplex.wake,
            &self.pubsub.wake,
        ]
        .iter()
        .filter_map(|w| w.after_death.max())
        .max()
    }

    fn leaked_fds(&self) -> Vec<String> {
        let mut leaks: Vec<String> = self
            .usage
            .iter()
            .filter_map(|u| match (u.fds_start, u.fds_end) {
                (Some(a), Some(b)) if b > a + FD_SLACK => {
                    Some(format!("{} {}: {a} -> {b} descriptors", u.role, u.pid))
                }
                _ => None,
            })
            .collect();
        if let [first, .., last] = &self.idle_servers[..] {
            if let (Some(a), Some(b)) = (first.fds, last.fds) {
                if b > a + FD_SLACK {
                    leaks.push(format!(
                        "idle rpc server: {a} descriptors in the first, {b} in the last"
                    ));
                }
            }
        }
        leaks
    }

    /// Every broken promise, in words.
    pub(crate) fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |bad: bool, what: String| {
            if bad {
                out.push(what);
            }
        };
        check(self.interrupted, "the run was interrupted".into());
        let wrong = self.rpc.wrong + self.streams.wrong + self.duplex.wrong + self.pubsub.wrong;
        check(
            wrong > 0,
            format!("{wrong} wrong replies, items, messages or samples"),
        );
        let lost = self.rpc.lost + self.streams.lost + self.duplex.lost + self.pubsub.lost;
        check(
            lost > 0,
            format!("{lost} acknowledged calls, items, messages or samples lost"),
        );
        check(
            self.rpc.executed_twice > 0,
            format!("{} calls executed twice", self.rpc.executed_twice),
        );
        check(
            self.rpc.hung > 0,
            format!("{} calls stuck until their 5 s timeout", self.rpc.hung),
        );
        if let Some(worst) = self.worst_wake() {
            check(
                worst > WAKE_BOUND,
                format!(
                    "a blocked peer was woken {} after its victim was dead (bound {})",
                    ms(worst),
                    ms(WAKE_BOUND)
                ),
            );
        }
        check(
            self.duplex.without_disconnect + self.duplex.hung + self.duplex.pairing_failures > 0,
            format!(
                "duplex: {} survivors without Disconnected, {} hung, {} pairs that never formed",
                self.duplex.without_disconnect, self.duplex.hung, self.duplex.pairing_failures
            ),
        );
        check(
            self.pubsub.held_at_end != Some(0),
            format!(
                "the last publisher still had {:?} slots held after every subscriber left",
                self.pubsub.held_at_end
            ),
        );
        check(
            !self.unexpected.is_empty(),
            format!("{} processes exited by themselves", self.unexpected.len()),
        );
        check(
            !self.stuck.is_empty(),
            format!("stuck: {}", self.stuck.join(", ")),
        );
        let leaked = self.leaked_fds();
        check(
            !leaked.is_empty(),
            format!("descriptors leaked: {}", leaked.join(", ")),
        );
        check(
            !self.shm_left.is_empty(),
            format!("left in /dev/shm: {}", self.shm_left.join(" ")),
        );
        check(
            !self.sockets_left.is_empty(),
            format!("sockets left bound: {}", self.sockets_left.join(" ")),
        );
        check(
            !self.children_left.is_empty(),
            format!("child processes left: {:?}", self.children_left),
        );
        out
    }

    pub(crate) fn interrupted(&self) -> bool {
        self.interrupted
    }

    pub(crate) fn passed(&self) -> bool {
        self.failures().is_empty()
    }

    pub(crate) fn to_json(&self) -> Value {
        let map = |m: &BTreeMap<&'static str, u64>| json!(m);
        json!({
            "seed": self.seed,
            "seconds": self.seconds,
            "clients": self.clients,
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "interrupted": self.interrupted,
            "kills": {
                "server": self.kills.server,
                "client": self.kills.client,
                "duplex_peer": self.kills.duplex,
                "duplex_peer_while_pairing": self.kills.duplex_early,
                "publisher": self.kills.publisher,
                "subscriber": self.kills.subscriber,
                "on_demand_server": self.kills.on_demand_server,
            },
            "rpc": {
                "calls": self.rpc.calls,
                "replies_correct": self.rpc.replies,
                "wrong": self.rpc.wrong,
                "lost": self.rpc.lost,
                "executed_twice": self.rpc.executed_twice,
                "errors": map(&self.rpc.errors),
                "connect_errors": map(&self.rpc.connect_errors),
                "hung": self.rpc.hung,
                "executed_then_server_died": self.rpc.executed_unanswered,
                "ended_by_client_death": self.rpc.ended_by_client_death,
                "bad_requests": self.rpc.bad_requests,
                "server_restarts": self.kills.server,
                "wake_after_server_death": self.rpc.wake.json(),
                "service_back_after_restart": self.rpc.service_back.json(),
                "restarts_without_reply": self.rpc.restarts_without_reply,
                "on_demand": {
                    "servers_started": self.rpc.on_demand_servers,
                    "servers_killed": self.kills.on_demand_server,
                    "orphans_reaped": self.rpc.orphans_reaped,
                    "wake_after_server_death": self.rpc.on_demand_wake.json(),
                },
            },
            "streams": {
                "started": self.streams.started,
                "completed": self.streams.completed,
                "cancelled": self.streams.cancelled,
                "items_checked": self.streams.items,
                "errors": map(&self.streams.broken),
                "wrong": self.streams.wrong,
                "lost": self.streams.lost,
            },
            "duplex": {
                "pairs_killed": self.duplex.pairs_killed,
                "messages_checked": self.duplex.messages,
                "acknowledged_by_victims": self.duplex.acknowledged,
                "wrong": self.duplex.wrong,
                "lost": self.duplex.lost,
                "survivors_without_disconnect": self.duplex.without_disconnect,
                "hung": self.duplex.hung,
                "pairing_failures": self.duplex.pairing_failures,
                "errors": map(&self.duplex.errors),
                "wake_after_peer_death": self.duplex.wake.json(),
            },
            "pubsub": {
                "publishers": self.pubsub.publishers,
                "publisher_restarts": self.kills.publisher,
                "published": self.pubsub.published,
                "received": self.pubsub.received,
                "lag_reports": self.pubsub.lag_reports,
                "missed": self.pubsub.missed,
                "wrong": self.pubsub.wrong,
                "lost": self.pubsub.lost,
                "disconnects": self.pubsub.disconnects,
                "held_slots_at_end": self.pubsub.held_at_end,
                "publish_errors": self.pubsub.publish_errors,
                "errors": map(&self.pubsub.errors),
                "wake_after_publisher_death": self.pubsub.wake.json(),
            },
            "wake_goal_ms": WAKE_GOAL.as_secs_f64() * 1e3,
            "wake_bound_ms": WAKE_BOUND.as_secs_f64() * 1e3,
            "survivors": self.usage.iter().map(|u| json!({
                "role": u.role,
                "pid": u.pid,
                "fds_start": u.fds_start,
                "fds_end": u.fds_end,
                "rss_kib_start": u.rss_kib_start,
                "rss_kib_end": u.rss_kib_end,
            })).collect::<Vec<_>>(),
            "idle_servers": self.idle_servers.iter().map(|s| json!({
                "when": s.when, "pid": s.pid, "workers": s.workers, "fds": s.fds,
            })).collect::<Vec<_>>(),
            "driver": {
                "longest_turn_ms": self.longest_turn.as_secs_f64() * 1e3,
                "victim_death": self.deaths.json(),
                "slowest_spawn_ms": self.slowest_spawn.as_secs_f64() * 1e3,
                "slow_deaths": self.slow_deaths,
            },
            "unexpected_exits": self.unexpected.iter().map(|u| json!({
                "role": u.role, "pid": u.pid, "status": u.status, "stderr": u.stderr,
            })).collect::<Vec<_>>(),
            "stuck": self.stuck,
            "leftovers": {
                "shm": self.shm_left,
                "sockets": self.sockets_left,
                "children": self.children_left,
            },
            "failures": self.failures(),
            "passed": self.passed(),
        })
    }

    pub(crate) fn print(&self) {
        let verdict = |ok: bool| if ok { "ok" } else { "FAILED" };
        let mut table = Table::new();
        table.load_preset(presets::ASCII_MARKDOWN);
        table.set_header(["pattern", "measure", "result", "promise"]);
        let mut row = |pattern: &str, measure: &str, result: String, promise: String| {
            table.add_row([pattern.to_owned(), measure.to_owned(), result, promise]);
        };
        let r = &self.rpc;
        row(
            "request/response",
            "calls made",
            r.calls.to_string(),
            String::new(),
        );
        row("", "replies correct", r.replies.to_string(), String::new());
        row(
            "",
            "wrong replies",
            r.wrong.to_string(),
            format!("0: {}", verdict(r.wrong == 0)),
        );
        row(
            "",
            "acknowledged, then lost",
            r.lost.to_string(),
            format!("0: {}", verdict(r.lost == 0)),
        );
        row(
            "",
            "executed twice",
            r.executed_twice.to_string(),
            format!("0: {}", verdict(r.executed_twice == 0)),
        );
        row("", "errors", counts(&r.errors), String::new());
        row(
            "",
            "stuck (timed out after 5 s)",
            r.hung.to_string(),
            format!("0: {}", verdict(r.hung == 0)),
        );
        row(
            "",
            "executed, reply lost to the server's death",
            r.executed_unanswered.to_string(),
            "reported as Disconnected".into(),
        );
        row(
            "",
            "interrupted by the client's own death",
            r.ended_by_client_death.to_string(),
            String::new(),
        );
        row(
            "",
            "server / client processes killed",
            format!("{} / {}", self.kills.server, self.kills.client),
            String::new(),
        );
        row(
            "",
            "server death to blocked caller's error",
            r.wake.text(),
            r.wake.promise(),
        );
        row(
            "",
            "server death to first reply from the next",
            r.service_back.text(),
            String::new(),
        );
        row(
            "",
            "servers started on demand by clients / killed / orphans reaped",
            format!(
                "{} / {} / {}",
                r.on_demand_servers, self.kills.on_demand_server, r.orphans_reaped
            ),
            String::new(),
        );
        row(
            "",
            "on-demand server death to blocked caller's error",
            r.on_demand_wake.text(),
            r.on_demand_wake.promise(),
        );
        let s = &self.streams;
        row(
            "streams",
            "started / completed / cancelled",
            format!("{} / {} / {}", s.started, s.completed, s.cancelled),
            String::new(),
        );
        row("", "items checked", s.items.to_string(), String::new());
        row("", "ended by errors", counts(&s.broken), String::new());
        row(
            "",
            "wrong items",
            s.wrong.to_string(),
            format!("0: {}", verdict(s.wrong == 0)),
        );
        row(
            "",
            "lost (clean end short, or unrecorded)",
            s.lost.to_string(),
            format!("0: {}", verdict(s.lost == 0)),
        );
        let d = &self.duplex;
        row(
            "duplex",
            "sides killed once paired / while pairing",
            format!("{} / {}", self.kills.duplex, self.kills.duplex_early),
            String::new(),
        );
        row(
            "",
            "survivors checked",
            d.pairs_killed.to_string(),
            String::new(),
        );
        row(
            "",
            "messages checked (victims acknowledged)",
            format!("{} ({})", d.messages, d.acknowledged),
            String::new(),
        );
        row(
            "",
            "wrong messages",
            d.wrong.to_string(),
            format!("0: {}", verdict(d.wrong == 0)),
        );
        row(
            "",
            "acknowledged, then lost",
            d.lost.to_string(),
            format!("0: {}", verdict(d.lost == 0)),
        );
        row(
            "",
            "survivors without Disconnected / hung",
            format!("{} / {}", d.without_disconnect, d.hung),
            format!("0: {}", verdict(d.without_disconnect + d.hung == 0)),
        );
        row(
            "",
            "peer death to survivor's Disconnected (less time busy with its messages)",
            d.wake.text(),
            d.wake.promise(),
        );
        let p = &self.pubsub;
        row(
            "publish/subscribe",
            "publishers / subscribers killed",
            format!("{} / {}", self.kills.publisher, self.kills.subscriber),
            String::new(),
        );
        row(
            "",
            "samples published / checked",
            format!("{} / {}", p.published, p.received),
            String::new(),
        );
        row(
            "",
            "Lagged reports (samples missed)",
            format!("{} ({})", p.lag_reports, p.missed),
            "exact counts".into(),
        );
        row(
            "",
            "wrong samples",
            p.wrong.to_string(),
            format!("0: {}", verdict(p.wrong == 0)),
        );
        row(
            "",
            "acknowledged, then lost",
            p.lost.to_string(),
            format!("0: {}", verdict(p.lost == 0)),
        );
        row(
            "",
            "slots still held at the end",
            p.held_at_end.map_or("unknown".into(), |h| h.to_string()),
            format!("0: {}", verdict(p.held_at_end == Some(0))),
        );
        row(
            "",
            "publisher death to subscriber's Disconnected (less time busy with its samples)",
            p.wake.text(),
            p.wake.promise(),
        );
        for (i, u) in self.usage.iter().enumerate() {
            let show = |a: Option<u64>, b: Option<u64>| match (a, b) {
                (Some(a), Some(b)) => format!("{a} -> {b}"),
                _ => "-".to_owned(),
            };
            row(
                if i == 0 { "survivors" } else { "" },
                &format!("{} {}", u.role, u.pid),
                format!(
                    "descriptors {}, RSS KiB {}",
                    show(u.fds_start.map(|n| n as u64), u.fds_end.map(|n| n as u64)),
                    show(u.rss_kib_start, u.rss_kib_end)
                ),
                String::new(),
            );
        }
        for s in &self.idle_servers {
            row(
                "",
                &format!("rpc server {} with no connection ({})", s.pid, s.when),
                format!(
                    "descriptors {} ({} workers)",
                    s.fds.map_or("-".to_owned(), |n| n.to_string()),
                    s.workers
                ),
                String::new(),
            );
        }
        row(
            "",
            "driver: longest loop turn / slowest spawn",
            format!("{} / {}", ms(self.longest_turn), ms(self.slowest_spawn)),
            String::new(),
        );
        row(
            "",
            "killed processes: SIGKILL to dead",
            self.deaths.text(),
            String::new(),
        );
        row(
            "cleanup",
            "left in /dev/shm / sockets bound / children",
            format!(
                "{} / {} / {}",
                self.shm_left.len(),
                self.sockets_left.len(),
                self.children_left.len()
            ),
            format!(
                "0: {}",
                verdict(
                    self.shm_left.is_empty()
                        && self.sockets_left.is_empty()
                        && self.children_left.is_empty()
                )
            ),
        );
        row(
            "",
            "processes that exited by themselves / stuck",
            format!("{} / {}", self.unexpected.len(), self.stuck.len()),
            format!(
                "0: {}",
                verdict(self.unexpected.is_empty() && self.stuck.is_empty())
            ),
        );
        println!("{table}");
        for u in self.unexpected.iter().take(5) {
            println!(
                "  exited by itself: {} {} ({}): {}",
                u.role, u.pid, u.status, u.stderr
            );
        }
        for s in self.failed_survivors.iter().take(5) {
            println!("  {s}");
        }
        for s in &self.slow_deaths {
            println!("  slow death: {s}");
        }
        println!(
            "machine: {} CPUs. Wake-up goal {}, failure bound {}.",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            ms(WAKE_GOAL),
            ms(WAKE_BOUND)
        );
        let failures = self.failures();
        if failures.is_empty() {
            println!("PASSED: every promise held (seed {}).", self.seed);
        } else {
            println!("FAILED (seed {}):", self.seed);
            for f in failures {
                println!("  - {f}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The checks themselves, on staged ledgers: each kind of broken promise is caught.
    use super::*;
    use crate::chaos::ledger::append;

    /// A directory for one test's ledgers, removed when dropped.
    struct Staged(std::path::PathBuf);

    impl Staged {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("memlink-chaos-test-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Staged(dir)
        }

        fn put(&self, pid: u32, records: &[Record]) {
            for &record in records {
                append(&self.0, pid, record).unwrap();
            }
        }
    }

    impl Drop for Staged {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn rec(kind: u32, aux: u32, a: u64, b: u64, c: u64) -> Record {
        Record::new(kind, aux, a, b, c)
    }

    fn life(pid: u32, killed_at: Option<u64>) -> Life {
        Life {
            pid,
            killed: killed_at.is_some(),
            killed_at,
        }
    }

    #[test]
    fn rpc_checks_catch_unrecorded_replies_double_execution_silence_and_timeouts() {
        let staged = Staged::new("rpc");
        let (client, killed_client) = (10u64, 11u64);
        staged.put(
            100,
            &[
                rec(kind::EXECUTED, 0, client, 1, 0),
                rec(kind::EXECUTED, 0, client, 3, 0),
                rec(kind::STREAM_STARTED, 0, client, 5, 0),
                rec(kind::STREAM_DONE, 0, client, 5, 3),
                rec(kind::EXECUTED, 0, killed_client, 9, 0),
            ],
        );
        staged.put(
            200,
            &[
                // Call 3 again, on the next server: executed twice.
                rec(kind::EXECUTED, 0, client, 3, 0),
                // Executed, but its client, alive to the end, never heard of it: lost.
                rec(kind::EXECUTED, 0, client, 6, 0),
            ],
        );
        staged.put(
            10,
            &[
                rec(kind::REPLY_OK, 0, 1, 100, 0),
                // Answered by server 200, which has no record of call 2: lost.
                rec(kind::REPLY_OK, 0, 2, 200, 0),
                rec(kind::REPLY_OK, 0, 3, 100, 0),
                rec(
                    kind::CALL_FAILED,
                    CODE_TIMEOUT,
                    4,
                    kind::PATTERN_RPC.into(),
                    0,
                ),
                rec(kind::STREAM_OK, 0, 5, 100, 3),
                rec(
                    kind::WRONG,
                    kind::PATTERN_RPC,
                    (1 << THREAD_SHIFT) | 1,
                    0,
                    0,
                ),
                rec(kind::FIRST_REPLY, 0, 200, 1_500, 0),
            ],
        );
        let facts = Facts {
            servers: vec![life(100, Some(1_000)), life(200, None)],
            clients: vec![life(10, None), life(11, Some(2_000))],
            publishers: vec![life(400, None)],
            ..Facts::default()
        };
        staged.put(400, &[rec(kind::HELD_AT_END, 0, 0, 0, 0)]);
        let report = analyse(&staged.0, &facts, &Totals::default()).unwrap();
        let r = &report.rpc;
        assert_eq!(r.replies, 3);
        assert_eq!(r.lost, 2);
        assert_eq!(r.executed_twice, 1);
        assert_eq!(r.hung, 1);
        assert_eq!(r.wrong, 1);
        assert_eq!(r.ended_by_client_death, 1);
        assert_eq!(report.streams.completed, 1);
        assert_eq!(report.streams.lost, 0);
        assert_eq!(r.service_back.max(), Some(Duration::from_nanos(500)));
        let failures = report.failures().join("; ");
        for needle in ["wrong", "lost", "executed twice", "stuck"] {
            assert!(failures.contains(needle), "{needle}: {failures}");
        }
    }

    #[test]
    fn a_wake_up_counts_against_memlink_only_from_the_victims_death() {
        let deaths = HashMap::from([(7, (1_000_000_000, 3_000_000_000))]);
        let mut wake = Wake::default();
        wake.push(2_005_000_000, 7, &deaths); // victim took 2 s to die; woken 5 ms after
        wake.push(3_000_000, 8, &deaths); // death unknown: all of it counts
        wake.finish();
        assert_eq!(wake.from_kill.max(), Some(Duration::from_millis(2005)));
        assert_eq!(wake.after_death.max(), Some(Duration::from_millis(5)));
    }

    #[test]
    fn a_subscribers_wake_up_counts_only_once_it_read_the_victims_samples() {
        // Killed at 1 s, dead 2 ms later; the subscriber was busy with its backlog for 200 ms
        // after the kill and got `Disconnected` 3 ms after that.
        let deaths = HashMap::from([(7, (1_000_000_000, 1_002_000_000))]);
        let mut wake = Wake::default();
        wake.push_after_reading(203_000_000, 7, &deaths, 200_000_000);
        // Busy for less than the victim took to die: counted from the death.
        wake.push_after_reading(10_000_000, 7, &deaths, 1_000_000);
        wake.finish();
        assert_eq!(wake.from_kill.max(), Some(Duration::from_millis(9)));
        assert_eq!(wake.after_death.max(), Some(Duration::from_millis(8)));
        assert_eq!(wake.after_death.at(0.0), Some(Duration::from_millis(3)));
    }

    #[test]
    fn duplex_and_pubsub_checks_catch_short_drains_phantoms_and_missing_disconnects() {
        let staged = Staged::new("patterns");
        staged.put(
            300,
            &(1..=5)
                .map(|n| rec(kind::SENT, 0, n, 0, 0))
                .collect::<Vec<_>>(),
        );
        // Busy 0.4 ms with the victim's messages after the kill: waited 0.6 ms in all.
        staged.put(301, &[rec(kind::DISCONNECTED, 400, 3, 300, 1_000_000)]);
        staged.put(302, &[rec(kind::SENT, 0, 4, 0, 0)]);
        staged.put(303, &[rec(kind::DISCONNECTED, 0, 6, 302, u64::MAX)]);
        staged.put(304, &[rec(kind::SENT, 0, 2, 0, 0)]);
        staged.put(400, &[rec(kind::PUBLISHED, 0, 10, 0, 0)]);
        staged.put(
            401,
            &[
                rec(kind::PUBLISHED, 0, 3, 0, 0),
                rec(kind::HELD_AT_END, 0, 2, 0, 0),
            ],
        );
        // Busy 2 ms with samples after the kill (the high half of `a`): waited 3 ms in all.
        staged.put(
            500,
            &[rec(
                kind::SUB_DISCONNECTED,
                1,
                400 | 2000 << 32,
                8,
                5_000_000,
            )],
        );
        staged.put(
            501,
            &[rec(kind::SUB_DISCONNECTED, 0, 400, u64::MAX, u64::MAX)],
        );
        staged.put(502, &[rec(kind::SUB_DISCONNECTED, 1, 400, 10, u64::MAX)]);
        staged.put(503, &[rec(kind::LAGGED, 0, 5, 0, 0)]);
        let end = |victim, survivor| PairEnd {
            victim,
            survivor,
            hung: false,
            clean_exit: true,
            stderr: String::new(),
        };
        let facts = Facts {
            duplex_peers: (300..306).collect(),
            pairs: vec![end(300, 301), end(302, 303), end(304, 305)],
            publishers: vec![life(400, Some(1)), life(401, None)],
            subscribers: (500..504).map(|pid| life(pid, None)).collect(),
            ..Facts::default()
        };
        let report = analyse(&staged.0, &facts, &Totals::default()).unwrap();
        let d = &report.duplex;
        assert_eq!((d.lost, d.wrong, d.without_disconnect), (2, 1, 1));
        assert_eq!(d.wake.from_kill.max(), Some(Duration::from_micros(600)));
        let p = &report.pubsub;
        assert_eq!(p.lost, 2 + 10);
        assert_eq!((p.lag_reports, p.missed, p.disconnects), (1, 5, 3));
        assert_eq!(p.held_at_end, Some(2));
        assert_eq!(p.wake.from_kill.max(), Some(Duration::from_millis(3)));
        assert_eq!(p.published, 13);
        let failures = report.failures().join("; ");
        for needle in ["lost", "wrong", "without Disconnected", "slots held"] {
            assert!(failures.contains(needle), "{needle}: {failures}");
        }
    }
}
