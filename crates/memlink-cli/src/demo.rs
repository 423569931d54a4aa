//! `memlink demo`: a server process, several client processes, a progress bar, and the same
//! exchange over a Unix domain socket for comparison.

use std::io::{self, Write};
use std::time::Duration;

use crate::bench::{Latency, human_size, new_histogram, us};
use crate::peer::{self, PeerProcess, Transport};

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

fn progress_bar(label: &str, done: u64, total: u64) {
    use std::io::IsTerminal;
    // On a terminal redraw in place; elsewhere (logs, CI) print only at each quarter.
    let total = total.max(1);
    let crossed_quarter = done * 4 / total > done.saturating_sub(1000) * 4 / total;
    if !io::stderr().is_terminal() && done != total && !crossed_quarter {
        return;
    }
    let width = 30;
    let filled = (done * width / total.max(1)) as usize;
    let mut err = io::stderr().lock();
    let restart = if io::stderr().is_terminal() {
        "\r"
    } else {
        "\n"
    };
    let _ = write!(
        err,
        "{restart}  {label:<12} [{}{}] {:>3}%  {done}/{total} calls",
        "#".repeat(filled),
        "-".repeat(width as usize - filled),
        done * 100 / total.max(1)
    );
    let _ = err.flush();
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
        progress_bar(label, 0, total);
        let load = peer::Load {
            transport,
            address,
            clients: options.clients,
            size: options.size,
            calls: options.calls,
            seconds: 0.0,
        };
        let reports = peer::run_clients(&load, &mut histogram, |done| {
            progress_bar(label, done, total)
        })?;
        eprintln!();
        let slowest = reports
            .iter()
            .map(|r| r.elapsed)
            .max()
            .unwrap_or(Duration::ZERO);
        let calls: u64 = reports.iter().map(|r| r.calls).sum();
        outcomes.push(Outcome {
            label,
            calls,
            calls_per_second: calls as f64 / slowest.as_secs_f64().max(1e-9),
            latency: Latency::of(&histogram),
        });
    }

    println!();
    println!("  transport      calls     calls/s    p50 µs    p99 µs  p99.9 µs");
    for o in &outcomes {
        println!(
            "  {:<12} {:>7} {:>11.0} {:>9} {:>9} {:>9}",
            o.label,
            o.calls,
            o.calls_per_second,
            us(o.latency.p50),
            us(o.latency.p99),
            us(o.latency.p999)
        );
    }
    if let [memlink, uds] = &outcomes[..] {
        println!();
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
