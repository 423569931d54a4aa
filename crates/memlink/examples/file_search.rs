//! A file search service: the server walks a directory tree for file names containing a pattern
//! and streams each match (path, size, modification time) as it finds it; the client prints each
//! one as it arrives.
//!
//! ```sh
//! cargo run --example file_search -- serve NAME ROOT      # in one terminal: serves ROOT (Ctrl-D stops)
//! cargo run --example file_search -- search NAME PATTERN  # in another: prints the matches
//! ```
//!
//! The walk runs on a stream handler thread, so it goes no faster than the client reads (a
//! client that stops reading holds the walk back instead of filling the server's memory), and
//! a client interrupted with Ctrl-C (or that drops the stream) stops the walk at its next match
//! or its next directory, whichever comes first.

use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use memlink::{Client, Server, StreamSink};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", name, root] => serve(name, PathBuf::from(root)),
        ["search", name, pattern] => search(name, pattern),
        _ => Err("usage: file_search serve NAME ROOT | file_search search NAME PATTERN".into()),
    }
}

fn serve(name: &str, root: PathBuf) -> Result<(), Box<dyn std::error::Error>> {
    let server = Server::bind(name)?;
    let stop = server.shutdown_handle();
    ctrlc_like_stop(stop);
    eprintln!(
        "serving files under {} as '{name}'; Ctrl-D stops",
        root.display()
    );
    let served = root.clone();
    server.serve_with(
        // Plain calls: the root being served.
        move |_request: &[u8], reply: &mut Vec<u8>| {
            reply.extend_from_slice(served.as_os_str().as_bytes());
        },
        move |pattern: &[u8], sink: &mut StreamSink| walk(&root, pattern, sink),
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

fn search(name: &str, pattern: &str) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(name)?;
    let mut matches = 0u64;
    let mut item = Vec::new();
    let mut stream = client.call_stream(pattern.as_bytes())?;
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
