//! `memlink find PATH PATTERN`: files under PATH whose name contains PATTERN, printed as a file
//! search server streams them, the server started on demand.
//!
//! Each user has one search server (`memlink-find.UID`: service names are shared by every user
//! of the machine, so the uid keeps users apart). A `find` that finds none running starts it by
//! running this very binary again as `memlink __find-server --idle-secs N -- NAME` (the library
//! makes sure that of many `find`s starting at once only one starts a server, and detaches it);
//! the server serves every later `find` and exits once unused for a minute. It runs in `/`, so `find`
//! sends the directory as an absolute path.
//!
//! Wire format: a request is the absolute directory, a NUL byte, and the pattern; each streamed
//! item is the file's size (u64, little-endian), its modification time (i64 seconds since the
//! epoch, little-endian) and its path.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use memlink::{ClientOptions, Error, Server, ServerCommand, StreamSink};

/// The hidden subcommand that runs the search server.
pub(crate) const SERVER_SUBCOMMAND: &str = "__find-server";

/// This user's search server's service name.
pub(crate) fn default_server_name() -> String {
    format!("memlink-find.{}", rustix::process::geteuid().as_raw())
}

/// `memlink find`: prints each match under `path` as it streams in; the count goes to stderr.
pub(crate) fn run(
    path: &Path,
    pattern: &str,
    server: &str,
    server_idle: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    // The server runs in `/`, and may have been started by a `find` in another directory.
    let dir = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !dir.is_dir() {
        return Err(format!("{}: not a directory", path.display()).into());
    }
    // `--` before the name: a name may start with `-`, which would otherwise read as an option.
    let command = ServerCommand::current_exe()?.args([
        OsStr::new(SERVER_SUBCOMMAND),
        OsStr::new("--idle-secs"),
        OsStr::new(&server_idle.as_secs().to_string()),
        OsStr::new("--"),
        OsStr::new(server),
    ]);
    let client = ClientOptions::new().start_server(command).connect(server)?;
    let mut request = dir.into_os_string().into_vec();
    request.push(0);
    request.extend_from_slice(pattern.as_bytes());

    let mut out = std::io::stdout().lock();
    let mut matches = 0u64;
    let mut item = Vec::new();
    let mut stream = client.call_stream(&request)?;
    while stream.next_into(&mut item)? {
        let (size, modified, path) = decode(&item).ok_or("the server sent a malformed match")?;
        let line = writeln!(
            out,
            "{size:>12}  {}  {}",
            utc_timestamp(modified),
            path.display()
        )
        .and_then(|()| out.flush());
        match line {
            Ok(()) => {}
            // stdout closed (`memlink find ... | head`): not an error. Dropping the stream
            // stops the search.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            // Anything else (a full disk, an I/O error) leaves the output truncated: say so.
            Err(e) => return Err(format!("writing the matches to standard output: {e}").into()),
        }
        matches += 1;
    }
    eprintln!("{matches} matches");
    Ok(())
}

/// `memlink __find-server NAME`: serves searches until unused for `idle`.
pub(crate) fn serve(name: &str, idle: Duration) -> memlink::Result<()> {
    let server = Server::options().exit_when_idle(idle).bind(name)?;
    eprintln!(
        "memlink find server '{name}' (pid {}) serving until idle for {idle:?}",
        std::process::id()
    );
    server.serve_with(
        |_request: &[u8], _reply: &mut Vec<u8>| {},
        |request: &[u8], sink: &mut StreamSink| {
            let nul = request
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| failed("a request is DIR, a NUL byte and PATTERN"))?;
            let dir = Path::new(OsStr::from_bytes(&request[..nul]));
            if !dir.is_absolute() {
                return Err(failed("the directory must be an absolute path"));
            }
            walk(dir, &request[nul + 1..], sink)
        },
    )
}

fn failed(why: &str) -> Error {
    Error::Os {
        op: "searching",
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
    }
}

/// Streams every file (anything but a directory) under `root` whose name contains `pattern`.
/// Directories that cannot be read are skipped; symbolic links are reported, never followed.
fn walk(root: &Path, pattern: &[u8], sink: &mut StreamSink) -> memlink::Result<()> {
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        // A walk that finds nothing never sends: look once per directory whether the client
        // is still there.
        if sink.is_cancelled() {
            return Err(Error::Cancelled);
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
                let modified =
                    m.modified()
                        .ok()
                        .map_or(0, |t| match t.duration_since(UNIX_EPOCH) {
                            Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
                            Err(before) => {
                                -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX)
                            }
                        });
                (m.len(), modified)
            });
            sink.send(&encode(size, modified, &entry.path()))?;
        }
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn encode(size: u64, modified: i64, path: &Path) -> Vec<u8> {
    let mut item = Vec::with_capacity(16 + path.as_os_str().len());
    item.extend_from_slice(&size.to_le_bytes());
    item.extend_from_slice(&modified.to_le_bytes());
    item.extend_from_slice(path.as_os_str().as_bytes());
    item
}

fn decode(item: &[u8]) -> Option<(u64, i64, PathBuf)> {
    let size = u64::from_le_bytes(item.get(..8)?.try_into().ok()?);
    let modified = i64::from_le_bytes(item.get(8..16)?.try_into().ok()?);
    let path = PathBuf::from(OsString::from_vec(item.get(16..)?.to_vec()));
    Some((size, modified, path))
}

/// `seconds` since the epoch as `YYYY-MM-DD HH:MM:SS` in UTC (Howard Hinnant's `civil_from_days`).
fn utc_timestamp(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(utc_timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc_timestamp(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(utc_timestamp(-1), "1969-12-31 23:59:59");
    }

    #[test]
    fn items_round_trip_and_short_ones_are_refused() {
        let item = encode(42, -7, Path::new("/tmp/a b"));
        assert_eq!(decode(&item), Some((42, -7, PathBuf::from("/tmp/a b"))));
        assert_eq!(decode(&item[..15]), None);
    }
}
