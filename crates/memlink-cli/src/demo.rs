//! `memlink demo`: a server process, several client processes, a progress bar, and the same
//! exchange over a Unix domain socket (the benchmarks' baseline, [`crate::framing`]) for
//! comparison. Every client checks every reply; all clients of a run start at one instant, and
//! the rate is all their calls over the time from that instant to the last one's last call.

use std::io;

use crate::bench::{Latency, human_size, new_histogram, us};
use crate::peer::{self, PeerProcess, Transport};
use crate::ui;

/// Command-line options of `memlink demo`.
#[derive(Debug, Clone)]
pub(crate) struct DemoOptions {
    pub(crate) clients: usize,
    pub(crate) calls: u64,
    pub(crate) size: usize,
}

struct Outcome {
    label: &'static str,
    calls: u64,
    calls_per_second: f64,
    latency: Latency,
}

pub(crate) fn run(options: &DemoOptions) -> io::Result<()> {
    let pid = std::process::id();
    println!(
        "memlink demo: {} client processes x {} calls of {} each, against one server process",
        options.clients,
        options.calls,
        human_size(options.size)
    );
    let memlink_name = format!("demo-{pid}");
    let memlink_server = PeerProcess::spawn(&["serve", "memlink", &memlink_name, "0", "1"])?;
    println!(
        "  memlink server running as pid {} under the name '{memlink_name}'",
        memlink_server.pid()
    );
    let uds_name = format!("demo-uds-{pid}");
    let _uds_server = PeerProcess::spawn(&["serve", "uds", &uds_name, "0", "1"])?;

    let total = options.calls * options.clients as u64;
    let mut outcomes = Vec::new();
    for (label, transport, address) in [
        ("memlink", Transport::Memlink, &memlink_name),
        ("unix socket", Transport::Uds, &uds_name),
    ] {
        let mut histogram = new_histogram()?;
        let bar = ui::progress(total);
        bar.set_message(format!("{label}: calls"));
        let load = peer::Load {
            transport,
            address,
            clients: options.clients,
            size: options.size,
            calls: options.calls,
            warmup: std::time::Duration::ZERO,
            seconds: 0.0,
        };
        let outcome = peer::run_clients(&load, &mut histogram, |done| bar.set_position(done))?;
        bar.finish_and_clear();
        outcomes.push(Outcome {
            label,
            calls: outcome.counted(),
            calls_per_second: outcome.calls_per_second(),
            latency: Latency::of(&histogram),
        });
    }

    println!();
    let mut table = ui::table(
        &[
            "transport",
            "calls",
            "calls/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
        ],
        1,
    );
    for o in &outcomes {
        table.add_row([
            o.label.to_owned(),
            o.calls.to_string(),
            format!("{:.0}", o.calls_per_second),
            us(o.latency.p50),
            us(o.latency.p99),
            o.latency.tail_us(),
        ]);
    }
    println!("{table}");
    println!(
        "  every reply checked; p99.9 where at least 10,000 calls back it, else the maximum (max)"
    );
    if let [memlink, uds] = &outcomes[..] {
        println!(
            "  memlink: {:.1}x lower median latency and {:.1}x the throughput of a Unix socket on this machine.",
            uds.latency.p50 as f64 / memlink.latency.p50.max(1) as f64,
            memlink.calls_per_second / uds.calls_per_second.max(1e-9)
        );
    }
    println!(
        "  (`memlink bench rpc` measures every size and transport against the hardware floors.)"
    );
    Ok(())
}
