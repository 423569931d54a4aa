//! The `memlink` command: inspect and clean up memlink objects on this machine.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use memlink::inventory::{self, ObjectInfo, ObjectState};

#[derive(Parser)]
#[command(
    name = "memlink",
    version,
    about = "Shared-memory IPC for Linux: inspect and manage memlink objects"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List memlink objects on this machine: name, kind, size, permissions, creator, alive or stale.
    Ls,
    /// Remove an object by name. Refuses one whose creator is alive unless --force.
    Rm {
        /// Object name (as `memlink ls` shows it).
        name: String,
        /// Remove even if its creator is alive (processes that have it open keep their mapping).
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ls => list(),
        Command::Rm { name, force } => {
            inventory::remove(&name, force).map(|()| println!("removed {name}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memlink: {e}");
            ExitCode::FAILURE
        }
    }
}

fn list() -> memlink::Result<()> {
    let objects = inventory::list()?;
    if objects.is_empty() {
        println!("no memlink objects");
        return Ok(());
    }
    let rows: Vec<[String; 7]> = objects.iter().map(row).collect();
    let header = ["NAME", "KIND", "SIZE", "MODE", "UID", "PID", "STATE"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(())
}

fn row(o: &ObjectInfo) -> [String; 7] {
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
