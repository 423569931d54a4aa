//! The `memlink` command: serve and call, demo and benchmark, inspect and clean up.
//!
//! No `unsafe` here except in `floor` (the benchmarks' raw shared-memory floor) and, built with
//! the feature `iceoryx2`, one block in `bench_iceoryx2`; both opt in.
#![deny(unsafe_code)]

mod bench;
mod bench_async;
#[cfg(feature = "iceoryx2")]
mod bench_iceoryx2;
mod bench_oneway;
mod bench_pubsub;
mod chaos;
mod chart;
mod demo;
mod find;
mod floor;
mod framing;
mod oneway;
mod peer;
mod rpc_floor;
mod ui;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use memlink::inventory::{self, ObjectInfo, ObjectState};
use memlink::{Client, Duplex, Permissions, Publisher, Server, Subscriber};

#[derive(Parser)]
#[command(
    name = "memlink",
    version,
    about = "Fast, crash-safe shared-memory IPC for Linux"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a server and several client processes, then compare memlink with a Unix socket.
    Demo {
        /// Client processes.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Calls per client.
        #[arg(long, default_value_t = 25_000)]
        calls: u64,
        /// Request (and reply) size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
    /// Run an echo server under NAME until Ctrl-C, printing its statistics every second.
    Serve {
        /// Service name.
        #[arg(long)]
        name: String,
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Admit clients of every user (default: only this user and root).
        #[arg(long)]
        everyone: bool,
    },
    /// Call the server NAME with TEXT and print its reply.
    Call {
        /// Service name.
        #[arg(long)]
        name: String,
        /// The request.
        text: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Talk to another `memlink chat NAME` (either may start first): lines typed here go to
    /// the peer, the peer's lines are printed. Ctrl-D ends your side; chat exits once both
    /// sides have ended (or the peer is gone).
    Chat {
        /// Channel name.
        name: String,
        /// Give up if no peer comes within this many milliseconds (default: wait as long as it
        /// takes).
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    /// Publish each line of stdin as one sample of TOPIC (subscribers may come and go).
    Pub {
        /// Topic name.
        #[arg(long)]
        topic: String,
        /// Samples the topic keeps for subscribers that fall behind.
        #[arg(long, default_value_t = 64)]
        capacity: usize,
        /// Samples a subscriber that joins late is given from before it joined.
        #[arg(long, default_value_t = 0)]
        history: usize,
        /// Admit subscribers of every user (default: only this user and root).
        #[arg(long)]
        everyone: bool,
    },
    /// Print each sample of TOPIC as a line (waits for the publisher, and for the next one
    /// after it goes); lag is reported on stderr.
    Sub {
        /// Topic name.
        #[arg(long)]
        topic: String,
        /// Exit after this many samples (default: run until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Find files under PATH whose name contains PATTERN, via a server started on demand.
    ///
    /// Prints each match (size, modification time in UTC, path) as the search finds it. The
    /// search runs in this user's file search server, which `find` starts if none runs; it
    /// serves later `find`s too, and exits once unused for a minute.
    Find {
        /// Directory to search.
        path: std::path::PathBuf,
        /// Text the file names must contain.
        pattern: String,
        /// Service name of the search server (default: memlink-find.UID).
        #[arg(long)]
        server: Option<String>,
        /// How long a server started by this find waits for clients before exiting.
        #[arg(long, default_value_t = 60, hide = true)]
        server_idle_secs: u64,
    },
    /// Attack a live system (servers, clients, duplex peers, publishers and subscribers
    /// SIGKILLed and restarted) and report what survived; fails if a promise broke.
    Chaos(chaos::ChaosArgs),
    /// List memlink servers, topics and objects on this machine.
    Ls,
    /// Remove an object by name. Refuses one whose creator is alive unless --force.
    Rm {
        /// Object name (as `memlink ls` shows it).
        name: String,
        /// Remove even if its creator is alive (processes that have it open keep their mapping).
        #[arg(long)]
        force: bool,
    },
    /// Internal: the file search server `find` starts.
    #[command(name = find::SERVER_SUBCOMMAND, hide = true)]
    FindServer {
        /// Service name.
        name: String,
        /// Exit once no client has been connected for this many seconds.
        #[arg(long, default_value_t = 60)]
        idle_secs: u64,
    },
    /// Internal: the child processes of `chaos`.
    #[command(name = "__chaos", hide = true)]
    ChaosPeer {
        #[command(subcommand)]
        role: chaos::Role,
    },
    /// Internal: the child processes of `bench` and `demo`.
    #[command(name = "__peer", hide = true)]
    Peer {
        #[command(subcommand)]
        role: PeerRole,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Request/response latency and throughput against the floors, Unix sockets, pipes and TCP.
    Rpc {
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
        /// Fewer samples (about a tenth): for a quick look, not for quoting.
        #[arg(long)]
        quick: bool,
        /// Server worker threads.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Also write a chart of the latency percentiles per transport and size to this SVG file.
        #[arg(long, value_name = "FILE")]
        svg: Option<std::path::PathBuf>,
    },
    /// Publish/subscribe latency (loaned and copied, 64 B to 4 MiB, awake and asleep) and
    /// fan-out to 1, 4 and 16 subscribers, against a Unix socket and a shared-memory floor.
    Pubsub {
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
        /// Fewer samples (about a tenth): for a quick look, not for quoting.
        #[arg(long)]
        quick: bool,
        /// Also write a chart of the awake latency percentiles per way and size to this SVG file.
        #[arg(long, value_name = "FILE")]
        svg: Option<std::path::PathBuf>,
    },
    /// One-way message rate and latency of a duplex channel against a Unix socket and a bare
    /// shared-memory ring (64 B to 1 MiB).
    Duplex {
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
        /// Fewer messages (about a tenth): for a quick look, not for quoting.
        #[arg(long)]
        quick: bool,
        /// Messages per rate run and latency samples per size, instead of the defaults (a smoke
        /// test; below 10,000 samples the latency tail is reported as the maximum).
        #[arg(long)]
        count: Option<u64>,
        /// Also write a chart of the one-way latency percentiles per transport and size to this
        /// SVG file.
        #[arg(long, value_name = "FILE")]
        svg: Option<std::path::PathBuf>,
        /// Only these message sizes, in bytes (comma-separated); targets whose sizes are left out
        /// are not evaluated.
        #[arg(long, value_delimiter = ',', hide = true)]
        sizes: Vec<usize>,
    },
    /// Item rate of a streaming reply (1,000,000 items of 64 B, 20,000 of 64 KiB) against a Unix
    /// socket and a bare shared-memory ring.
    Stream {
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
        /// Fewer items (about a tenth): for a quick look, not for quoting.
        #[arg(long)]
        quick: bool,
        /// Items per run instead of the defaults (a smoke test).
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Subcommand)]
enum PeerRole {
    Serve {
        transport: String,
        name: String,
        size: usize,
        workers: usize,
    },
    Client {
        transport: String,
        address: String,
        size: usize,
        calls: u64,
    },
    #[command(name = "pubsub-sub")]
    PubsubSub {
        way: String,
        address: String,
        size: usize,
        samples: u64,
    },
    Oneway {
        role: String,
        transport: String,
        address: String,
        size: usize,
        count: u64,
    },
    StreamServe {
        name: String,
    },
}

fn main() -> ExitCode {
    let result: Result<(), Box<dyn std::error::Error>> = match Cli::parse().command {
        Command::Demo {
            clients,
            calls,
            size,
        } => demo::run(&demo::DemoOptions {
            clients: clients.max(1),
            calls: calls.max(1),
            size,
        })
        .map_err(Into::into),
        Command::Bench {
            which:
                BenchCommand::Rpc {
                    json,
                    quick,
                    workers,
                    svg,
                },
        } => bench::run(&bench::BenchOptions {
            json,
            quick,
            workers: workers.max(1),
            svg,
        })
        .map_err(Into::into),
        Command::Bench {
            which: BenchCommand::Pubsub { json, quick, svg },
        } => bench_pubsub::run(&bench_pubsub::PubsubBenchOptions { json, quick, svg })
            .map_err(Into::into),
        Command::Bench {
            which:
                BenchCommand::Duplex {
                    json,
                    quick,
                    count,
                    svg,
                    sizes,
                },
        } => bench_oneway::run_duplex(
            &bench_oneway::OnewayOptions { json, quick, count },
            &sizes,
            svg.as_deref(),
        )
        .map_err(Into::into),
        Command::Bench {
            which: BenchCommand::Stream { json, quick, count },
        } => bench_oneway::run_stream(&bench_oneway::OnewayOptions { json, quick, count })
            .map_err(Into::into),
        Command::Serve {
            name,
            workers,
            everyone,
        } => serve(&name, workers, everyone).map_err(Into::into),
        Command::Call {
            name,
            text,
            timeout_ms,
        } => call(&name, &text, timeout_ms).map_err(Into::into),
        Command::Chat { name, timeout_ms } => chat(&name, timeout_ms).map_err(Into::into),
        Command::Pub {
            topic,
            capacity,
            history,
            everyone,
        } => publish(&topic, capacity, history, everyone).map_err(Into::into),
        Command::Sub { topic, count } => subscribe(&topic, count).map_err(Into::into),
        Command::Find {
            path,
            pattern,
            server,
            server_idle_secs,
        } => find::run(
            &path,
            &pattern,
            &server.unwrap_or_else(find::default_server_name),
            Duration::from_secs(server_idle_secs),
        ),
        Command::FindServer { name, idle_secs } => {
            find_server(&name, Duration::from_secs(idle_secs)).map_err(Into::into)
        }
        Command::Chaos(args) => chaos::run(&args),
        Command::ChaosPeer { role } => chaos::run_role(role).map_err(Into::into),
        Command::Ls => list().map_err(Into::into),
        Command::Rm { name, force } => inventory::remove(&name, force)
            .map(|()| println!("removed {name}"))
            .map_err(Into::into),
        Command::Peer { role } => run_peer(role).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memlink: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_peer(role: PeerRole) -> std::io::Result<()> {
    peer::pin_as_asked()?;
    let parse = |t: &str| {
        peer::Transport::parse(t)
            .ok_or_else(|| std::io::Error::other(format!("unknown transport {t}")))
    };
    match role {
        PeerRole::Serve {
            transport,
            name,
            size,
            workers,
        } => peer::serve(parse(&transport)?, &name, size, workers),
        PeerRole::Client {
            transport,
            address,
            size,
            calls,
        } => peer::client(parse(&transport)?, &address, size, calls),
        PeerRole::PubsubSub {
            way,
            address,
            size,
            samples,
        } => bench_pubsub::subscriber(&way, &address, size, samples),
        PeerRole::Oneway {
            role,
            transport,
            address,
            size,
            count,
        } => oneway::child(&role, &transport, &address, size, count),
        PeerRole::StreamServe { name } => oneway::stream_server(&name),
    }
}

fn serve(name: &str, workers: usize, everyone: bool) -> memlink::Result<()> {
    let permissions = if everyone {
        Permissions::Everyone
    } else {
        Permissions::OwnerOnly
    };
    // The server reports clients it drops for corrupting their rings, and resource exhaustion.
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .init();
    let server = Server::options()
        .workers(workers)
        .permissions(permissions)
        .bind(name)?;
    let stop = server.shutdown_handle();
    if let Err(e) = ctrlc::set_handler(move || stop.shutdown()) {
        eprintln!(
            "memlink: cannot install the Ctrl-C handler ({e}); stop the server with a signal"
        );
    }
    eprintln!(
        "serving '{name}' (pid {}, {workers} worker(s)); Ctrl-C or SIGTERM stops",
        std::process::id()
    );
    let (stop_status, stopped) = std::sync::mpsc::channel::<()>();
    let status = {
        let name = name.to_owned();
        std::thread::spawn(move || serve_status(&name, &stopped))
    };
    let served =
        server.serve(|request: &[u8], reply: &mut Vec<u8>| reply.extend_from_slice(request));
    drop(stop_status);
    let _ = status.join();
    served?;
    eprintln!("stopped");
    Ok(())
}

/// `memlink serve`'s statistics line, once a second until `stopped` says so (or disconnects): a
/// status line redrawn in place on a terminal, elsewhere a plain line whenever something changed.
fn serve_status(name: &str, stopped: &std::sync::mpsc::Receiver<()>) {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let line = terminal.then(indicatif::ProgressBar::new_spinner);
    let mut last = (0, u32::MAX);
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        stopped.recv_timeout(Duration::from_secs(1))
    {
        let Ok(stats) = memlink::rpc::server_stats(name) else {
            break;
        };
        let text = format!(
            "{} calls ({} /s), {} client connection(s)",
            stats.calls,
            stats.calls - last.0,
            stats.connections
        );
        match &line {
            Some(line) => {
                line.set_message(text);
                line.tick();
            }
            None if (stats.calls, stats.connections) != last => eprintln!("  {text}"),
            None => {}
        }
        last = (stats.calls, stats.connections);
    }
    if let Some(line) = line {
        line.finish_and_clear();
    }
}

/// `memlink __find-server`: its standard error is captured by the `find` that started it (and
/// shown if it fails to start), so warnings go there.
fn find_server(name: &str, idle: Duration) -> memlink::Result<()> {
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .init();
    find::serve(name, idle)
}

/// `memlink chat`: each line is one message (newline included); an empty message says "my
/// input has ended".
fn chat(name: &str, timeout_ms: Option<u64>) -> memlink::Result<()> {
    use std::io::{BufRead, Write};
    eprintln!("memlink chat '{name}': waiting for the peer...");
    let chan = std::sync::Arc::new(match timeout_ms {
        Some(ms) => Duplex::open_timeout(name, Duration::from_millis(ms))?,
        None => Duplex::open(name)?,
    });
    eprintln!(
        "connected to pid {}; type lines, Ctrl-D to end",
        chan.peer_pid()
    );
    let printer = {
        let chan = chan.clone();
        std::thread::spawn(move || {
            let mut out = std::io::stdout();
            let mut message = Vec::new();
            loop {
                match chan.recv_into(&mut message) {
                    Ok(()) if message.is_empty() => return, // the peer's input has ended
                    Ok(()) => {
                        let _ = out.write_all(&message);
                        let _ = out.flush();
                    }
                    Err(e) => {
                        // Gone before it said it had ended: killed, or broken.
                        eprintln!("memlink chat: {e}");
                        std::process::exit(1);
                    }
                }
            }
        })
    };
    let mut stdin = std::io::stdin().lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        match stdin.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if !line.ends_with(b"\n") {
            line.push(b'\n');
        }
        chan.send(&line)?;
    }
    chan.send(&[])?;
    // Stay until the peer has ended too, printing what it still sends.
    let _ = printer.join();
    Ok(())
}

/// `memlink pub`: each line of stdin (newline removed) is one sample.
fn publish(topic: &str, capacity: usize, history: usize, everyone: bool) -> memlink::Result<()> {
    use std::io::BufRead;
    let permissions = if everyone {
        Permissions::Everyone
    } else {
        Permissions::OwnerOnly
    };
    let mut publisher = Publisher::options()
        .capacity(capacity)
        .history(history)
        .permissions(permissions)
        .create(topic)?;
    eprintln!(
        "publishing '{topic}' (pid {}); each line is a sample, Ctrl-D ends",
        std::process::id()
    );
    let mut stdin = std::io::stdin().lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        match stdin.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.ends_with(b"\n") {
            line.pop();
        }
        publisher.publish(&line)?;
    }
    Ok(())
}

/// `memlink sub`: prints every sample as a line; lag and publisher changes go to stderr.
fn subscribe(topic: &str, count: Option<u64>) -> memlink::Result<()> {
    use std::io::Write;
    eprintln!("memlink sub '{topic}': waiting for the publisher...");
    let mut subscriber = Subscriber::subscribe(topic)?;
    eprintln!(
        "subscribed to pid {}",
        subscriber.publisher_pid().unwrap_or(0)
    );
    let mut out = std::io::stdout().lock();
    let mut received = 0;
    while count.is_none_or(|n| received < n) {
        match subscriber.recv() {
            Ok(sample) => {
                received += 1;
                let written = out
                    .write_all(&sample)
                    .and_then(|()| out.write_all(b"\n"))
                    .and_then(|()| out.flush());
                if written.is_err() {
                    // Our reader went away (a closed pipe): nothing more to do.
                    return Ok(());
                }
            }
            Err(memlink::Error::Lagged { missed, .. }) => {
                eprintln!("memlink sub: fell behind, missed {missed} samples");
            }
            Err(memlink::Error::Disconnected { .. }) => {
                eprintln!("memlink sub: the publisher is gone; waiting for the next one");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn call(name: &str, text: &str, timeout_ms: u64) -> memlink::Result<()> {
    let client = Client::connect(name)?;
    let reply = client.call_timeout(text.as_bytes(), Duration::from_millis(timeout_ms))?;
    println!("{}", String::from_utf8_lossy(&reply));
    Ok(())
}

/// `rows` under `header` as a table (see [`ui::table`]); columns from `first_right` on (if any)
/// are right-aligned.
fn print_table<const N: usize>(header: [&str; N], first_right: usize, rows: &[[String; N]]) {
    let mut table = ui::table(&header, first_right);
    for row in rows {
        table.add_row(row.iter());
    }
    println!("{table}");
}

fn list() -> memlink::Result<()> {
    let servers = memlink::rpc::list_servers();
    if servers.is_empty() {
        println!("no memlink servers");
    } else {
        let rows: Vec<[String; 8]> = servers
            .iter()
            .map(|s| match &s.stats {
                Ok(st) => [
                    s.name.clone(),
                    st.pid.to_string(),
                    st.connections.to_string(),
                    st.calls.to_string(),
                    st.workers.to_string(),
                    format!("{:.0}s", st.uptime_ms as f64 / 1000.0),
                    format!("{}/{}", st.failed_calls, st.expired_calls),
                    if st.handler_latency.samples == 0 {
                        "-".to_owned()
                    } else {
                        format!(
                            "{:.1?}/{:.1?}/{:.1?}",
                            st.handler_latency.p50, st.handler_latency.p99, st.handler_latency.max
                        )
                    },
                ],
                Err(e) => [
                    s.name.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    format!("({e})"),
                    "-".into(),
                    "-".into(),
                ],
            })
            .collect();
        print_table(
            [
                "SERVER",
                "PID",
                "CLIENTS",
                "CALLS",
                "WORKERS",
                "UPTIME",
                "FAILED/EXPIRED",
                "HANDLER p50/p99/max",
            ],
            usize::MAX,
            &rows,
        );
        // Each server's connections, indented under the table (calls per connection).
        for s in &servers {
            let Ok(st) = &s.stats else { continue };
            for c in &st.connection_list {
                println!(
                    "  - {} connection {}: pid {} uid {}, {} calls",
                    s.name, c.id, c.pid, c.uid, c.calls
                );
            }
        }
    }
    println!();
    let topics = memlink::pubsub::list_topics();
    if topics.is_empty() {
        println!("no memlink topics");
    } else {
        let rows: Vec<[String; 5]> = topics
            .iter()
            .map(|t| match &t.stats {
                Ok(st) => [
                    t.name.clone(),
                    st.publisher_pid.to_string(),
                    st.published.to_string(),
                    st.subscribers
                        .iter()
                        .map(|s| format!("{}(lag {}, held {})", s.pid, s.lag, s.held))
                        .collect::<Vec<_>>()
                        .join(" "),
                    if st.reliable { "reliable" } else { "lossy" }.to_owned(),
                ],
                Err(e) => [
                    t.name.clone(),
                    "-".into(),
                    "-".into(),
                    format!("({e})"),
                    "-".into(),
                ],
            })
            .collect();
        print_table(
            ["TOPIC", "PID", "PUBLISHED", "SUBSCRIBERS", "MODE"],
            usize::MAX,
            &rows,
        );
    }
    println!();
    let objects = inventory::list()?;
    if objects.is_empty() {
        println!("no memlink objects");
        return Ok(());
    }
    let rows: Vec<[String; 7]> = objects.iter().map(object_row).collect();
    print_table(
        ["NAME", "KIND", "SIZE", "MODE", "UID", "PID", "STATE"],
        usize::MAX,
        &rows,
    );
    Ok(())
}

fn object_row(o: &ObjectInfo) -> [String; 7] {
    [
        o.name.clone(),
        o.kind.map_or_else(|| "?".to_owned(), |k| k.to_string()),
        o.size.to_string(),
        format!("{:04o}", o.mode),
        o.owner_uid.to_string(),
        o.creator_pid
            .map_or_else(|| "-".to_owned(), |p| p.to_string()),
        match &o.state {
            ObjectState::Live => "live".to_owned(),
            ObjectState::Stale => "stale".to_owned(),
            ObjectState::Unknown(why) => format!("unknown ({why})"),
        },
    ]
}
