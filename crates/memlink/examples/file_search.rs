//! A file search service: the server walks a directory tree for file names containing a pattern
//! and streams each match (path, size, modification time) as it finds it; the client prints each
//! one as it arrives.
//!
//! ```sh
//! cargo run --example file_search -- find DIR PATTERN       # the whole job: starts a server if needed
//! cargo run --example file_search -- serve NAME ROOT        # or by hand: serves ROOT (Ctrl-D stops)
//! cargo run --example file_search -- search NAME PATTERN    # and prints the matches under ROOT
//! ```
//!
//! `find` connects to this user's search server (`file-search.UID`: service names are shared
//! by every user of the machine) and, if none runs, starts one by running this very program
//! again as `serve NAME / --on-demand` ([`ClientOptions::start_server`]). However many `find`s
//! start at once, one server results; it outlives the `find` that started it, serves the next
//! ones, and exits once nobody has used it for 30 seconds
//! ([`ServerOptions::exit_when_idle`](memlink::ServerOptions::exit_when_idle)). It runs in `/`,
//! so `find` sends the directory as an absolute path.
//!
//! The walk runs on a stream handler thread, so it goes no faster than the client reads (a
//! client that stops reading holds the walk back instead of filling the server's memory), and
//! a client interrupted with Ctrl-C (or that drops the stream) stops the walk at its next match
//! or its next directory, whichever comes first.

use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use memlink::{Client, ClientOptions, Server, ServerCommand, StreamSink};

/// How long a server started on demand waits for clients before it exits.
const ON_DEMAND_IDLE: Duration = Duration::from_secs(30);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["find", dir, pattern] => find(dir, pattern),
        ["serve", name, root] => serve(name, PathBuf::from(root), false),
        ["serve", name, root, "--on-demand"] => serve(name, PathBuf::from(root), true),
        ["search", name, pattern] => search(name, pattern),
        _ => Err(
            "usage: file_search find DIR PATTERN | file_search serve NAME ROOT | \
                  file_search search NAME PATTERN"
                .into(),
        ),
    }
}

/// Serves searches: a request is `DIR`, a NUL byte and the pattern (searched under DIR, an
/// absolute path), or just a pattern (searched under `root`). In a terminal, Ctrl-D stops it;
/// started on demand (no terminal, stdin is empty) it stops once idle instead.
fn serve(name: &str, root: PathBuf, on_demand: bool) -> Result<(), Box<dyn std::error::Error>> {
    let mut options = Server::options();
    if on_demand {
        options = options.exit_when_idle(ON_DEMAND_IDLE);
    }
    let server = options.bind(name)?;
    if on_demand {
        eprintln!("serving file searches as '{name}' until idle for {ON_DEMAND_IDLE:?}");
    } else {
        ctrlc_like_stop(server.shutdown_handle());
        eprintln!(
            "serving files under {} as '{name}'; Ctrl-D stops",
            root.display()
        );
    }
    let served = root.clone();
    server.serve_with(
        // Plain calls: the root being served.
        move |_request: &[u8], reply: &mut Vec<u8>| {
            reply.extend_from_slice(served.as_os_str().as_bytes());
        },
        move |request: &[u8], sink: &mut StreamSink| {
            let (dir, pattern) = match request.iter().position(|&b| b == 0) {
                Some(nul) => (
                    Path::new(OsStr::from_bytes(&request[..nul])),
                    &request[nul + 1..],
                ),
                None => (root.as_path(), request),
            };
            if !dir.is_absolute() {
                return Err(memlink::Error::Os {
                    op: "searching a relative directory",
                    source: std::io::ErrorKind::InvalidInput.into(),
                });
            }
            walk(dir, pattern, sink)
        },
    )?;
    Ok(())
}

/// Streams every file under `root` whose name contains `pattern`. Directories that cannot be
/// read are skipped; symbolic links are reported, never followed.
fn walk(root: &Path, pattern: &[u8], sink: &mut StreamSink) -> memlink::Result<()> {
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        // A walk that finds nothing never calls `send`: look once per directory whether the
        // client is still there.
        if sink.is_cancelled() {
            return Err(memlink::Error::Cancelled);
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(entry.path());
                continue;
            }
            if !contains(entry.file_name().as_bytes(), pattern) {
                continue;
            }
            let (size, modified) = entry.metadata().map_or((0, 0), |m| {
                let modified = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                (m.len(), modified)
            });
            // One item: size, modification time (seconds since the epoch), then the path.
            let mut item = Vec::with_capacity(16 + entry.path().as_os_str().len());
            item.extend_from_slice(&size.to_le_bytes());
            item.extend_from_slice(&modified.to_le_bytes());
            item.extend_from_slice(entry.path().as_os_str().as_bytes());
            sink.send(&item)?; // Cancelled once the client is gone: the walk stops here
        }
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// `find DIR PATTERN`: connects to this user's search server, starting it if none runs, and
/// prints the matches under DIR.
fn find(dir: &str, pattern: &str) -> Result<(), Box<dyn std::error::Error>> {
    // The server runs in `/`, and may have been started by a client in another directory.
    let dir = std::fs::canonicalize(dir).map_err(|e| format!("{dir}: {e}"))?;
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self")?);
    let name = format!("file-search.{uid}");
    let server = ServerCommand::current_exe()?.args(["serve", &name, "/", "--on-demand"]);
    let client = ClientOptions::new().start_server(server).connect(&name)?;
    let mut request = dir.into_os_string().into_vec();
    request.push(0);
    request.extend_from_slice(pattern.as_bytes());
    print_matches(&client, &request)
}

/// `search NAME PATTERN`: the matches under the root of the server NAME (started by hand).
fn search(name: &str, pattern: &str) -> Result<(), Box<dyn std::error::Error>> {
    print_matches(&Client::connect(name)?, pattern.as_bytes())
}

/// Prints each match of `request` as it streams in: size, modification time, path.
fn print_matches(client: &Client, request: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    let mut matches = 0u64;
    let mut item = Vec::new();
    let mut stream = client.call_stream(request)?;
    while stream.next_into(&mut item)? {
        let (Some(size), Some(modified), Some(path)) = (
            item.get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes),
            item.get(8..16)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes),
            item.get(16..),
        ) else {
            return Err("the server sent a malformed match".into());
        };
        let path = PathBuf::from(std::ffi::OsString::from_vec(path.to_vec()));
        println!("{size:>12} {modified:>11} {}", path.display());
        matches += 1;
    }
    eprintln!("{matches} matches");
    Ok(())
}

/// Stops the server on stdin's end (Ctrl-D), to keep the example free of signal handling.
fn ctrlc_like_stop(stop: memlink::ShutdownHandle) {
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        stop.shutdown();
    });
}
