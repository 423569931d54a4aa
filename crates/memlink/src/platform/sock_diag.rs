//! Who holds an abstract socket name, asked of the kernel without touching the socket:
//! `NETLINK_SOCK_DIAG` for Unix sockets (`unix_diag(7)`), and `/proc/*/fd` for the process.
//!
//! Connecting to a socket to learn its owner (`SO_PEERCRED`) lets the owner answer: on a kernel
//! without `SO_PASSRIGHTS` (before 6.16) it can pass us a descriptor whose close blocks, and the
//! connection waits in its backlog for as long as it likes. A sock_diag dump only reads the
//! kernel's socket table: the owner never learns it was asked and can hand us nothing.
//!
//! # References
//! `sock_diag(7)`, `netlink(7)`; `include/uapi/linux/unix_diag.h` (`UDIAG_SHOW_UID`, Linux 5.3).

use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, netlink};

/// An abstract Unix socket found bound under a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BoundSocket {
    /// Its inode number in sockfs (what `/proc/PID/fd/N` shows as `socket:[INODE]`).
    pub(crate) inode: u32,
    /// The user that created it, if the kernel says (`UDIAG_SHOW_UID`, Linux 5.3+).
    pub(crate) uid: Option<u32>,
}

// `linux/netlink.h`, `linux/sock_diag.h`, `linux/unix_diag.h`.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x100 | 0x200;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_NAME: u32 = 0x01;
const UDIAG_SHOW_UID: u32 = 0x40;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_UID: u16 = 7;
/// `struct unix_diag_msg`: family, type, state, pad (one byte each), inode, cookie[2].
const UNIX_DIAG_MSG_LEN: usize = 16;
/// Socket states (`TCP_CLOSE`, `TCP_LISTEN`) of a socket that owns a name: bound and idle, or
/// listening. A connection accepted from a listener shares its name but is `TCP_ESTABLISHED`,
/// and its recorded uid is not the listener's: it must not pass for the name's holder.
const TCP_CLOSE: u32 = 7;
const TCP_LISTEN: u32 = 10;
/// `SOCK_SEQPACKET`: abstract names are per socket type, so the type is part of what we match.
const SEQPACKET: u8 = 5;
const NO_COOKIE: u32 = !0;
/// Longest the kernel may take to answer (it answers at once; this only bounds a broken kernel).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// The `SOCK_SEQPACKET` Unix socket bound (idle or listening) under the abstract name `name` in
/// our network namespace, if there is one. `Ok(None)` if there is none.
///
/// # Errors
/// Whatever stops the question being asked or answered: no netlink (a sandbox), out of memory,
/// `EPROTO` for an answer we cannot parse.
pub(crate) fn bound_abstract_seqpacket(name: &str) -> Result<Option<BoundSocket>, Errno> {
    let socket = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )?;
    rustix::net::sockopt::set_socket_timeout(
        &socket,
        rustix::net::sockopt::Timeout::Recv,
        Some(ANSWER_TIMEOUT),
    )?;
    let seq: u32 = 1;
    let mut request = Vec::with_capacity(NLMSG_HDRLEN + 24);
    // struct nlmsghdr
    request.extend_from_slice(&((NLMSG_HDRLEN + 24) as u32).to_ne_bytes());
    request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&seq.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    // struct unix_diag_req
    request.push(libc::AF_UNIX as u8);
    request.push(0);
    request.extend_from_slice(&0u16.to_ne_bytes());
    request.extend_from_slice(&((1u32 << TCP_CLOSE) | (1u32 << TCP_LISTEN)).to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_UID).to_ne_bytes());
    request.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    request.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    rustix::net::sendto(
        &socket,
        &request,
        SendFlags::empty(),
        &netlink::SocketAddrNetlink::new(0, 0),
    )?;

    let mut wanted = Vec::with_capacity(name.len() + 1);
    wanted.push(0);
    wanted.extend_from_slice(name.as_bytes());
    let mut found = None;
    // The kernel sizes each part of a dump to the reader's buffer, up to 32 KiB.
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // With `MSG_TRUNC` the kernel says how long the datagram was, even if it did not fit.
        let len = match rustix::net::recv(&socket, &mut buf[..], RecvFlags::TRUNC) {
            Ok((len, whole)) if whole > len => return Err(Errno::MSGSIZE),
            Ok((len, _)) => len,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        };
        match parse_part(&buf[..len], seq, &wanted)? {
            Part::More(hit) => found = found.or(hit),
            Part::Done(hit) => return Ok(found.or(hit)),
        }
    }
}

/// One datagram of the dump: whether more follow, and the socket it names, if any.
enum Part {
    More(Option<BoundSocket>),
    Done(Option<BoundSocket>),
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Parses the netlink messages in one datagram (every length checked: the kernel writes them,
/// but a parser that trusts lengths is one bug away from a panic).
fn parse_part(mut bytes: &[u8], seq: u32, wanted: &[u8]) -> Result<Part, Errno> {
    let mut found = None;
    while bytes.len() >= NLMSG_HDRLEN {
        let bad = Errno::PROTO;
        let len = u32_at(bytes, 0).ok_or(bad)? as usize;
        let kind = u16_at(bytes, 4).ok_or(bad)?;
        if len < NLMSG_HDRLEN || len > bytes.len() {
            return Err(bad);
        }
        let message = &bytes[..len];
        bytes = bytes.get(align4(len)..).unwrap_or_default();
        if u32_at(message, 8) != Some(seq) {
            continue;
        }
        let payload = &message[NLMSG_HDRLEN..];
        match kind {
            NLMSG_DONE => return Ok(Part::Done(found)),
            NLMSG_ERROR => {
                let code = u32_at(payload, 0).ok_or(bad)? as i32;
                return Err(if code < 0 {
                    Errno::from_raw_os_error(-code)
                } else {
                    bad
                });
            }
            SOCK_DIAG_BY_FAMILY => {
                if let Some(hit) = parse_socket(payload, wanted) {
                    found = Some(hit);
                }
            }
            _ => {}
        }
    }
    Ok(Part::More(found))
}

/// A `unix_diag_msg` and its attributes: the socket, if it is a `SOCK_SEQPACKET` socket bound
/// under `wanted` (the address bytes: a NUL, then the abstract name).
fn parse_socket(payload: &[u8], wanted: &[u8]) -> Option<BoundSocket> {
    if *payload.get(1)? != SEQPACKET {
        return None;
    }
    let inode = u32_at(payload, 4)?;
    let mut attributes = payload.get(UNIX_DIAG_MSG_LEN..)?;
    let mut named = false;
    let mut uid = None;
    while attributes.len() >= 4 {
        let len = usize::from(u16_at(attributes, 0)?);
        let kind = u16_at(attributes, 2)?;
        if len < 4 || len > attributes.len() {
            return None;
        }
        let data = &attributes[4..len];
        match kind {
            UNIX_DIAG_NAME => named = data == wanted,
            UNIX_DIAG_UID => uid = u32_at(data, 0),
            _ => {}
        }
        attributes = attributes.get(align4(len)..).unwrap_or_default();
    }
    named.then_some(BoundSocket { inode, uid })
}

/// A process that has the socket `inode` open (the first found in `/proc/*/fd`), if any can be
/// seen: another user's descriptors are visible only to root (or with `CAP_SYS_PTRACE`).
pub(crate) fn process_holding_socket(inode: u32) -> Option<u32> {
    let target = format!("socket:[{inode}]");
    let ours = std::process::id();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // Our own descriptors first: the likeliest holder when the question is about our own lock.
    pids.sort_by_key(|&pid| pid != ours);
    pids.into_iter().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.filter_map(Result::ok).any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == &*target)
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{SocketAddrUnix, bind, listen, socket_with};

    fn seqpacket() -> rustix::fd::OwnedFd {
        socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    /// Whether the running kernel is version `major.minor` or later.
    fn kernel_at_least(major: u32, minor: u32) -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut parts = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
    }

    /// Whether no seqpacket socket is bound to `name`, within a few seconds: a socket lives
    /// until every copy of its descriptor is closed, and a child that another test of this
    /// process forks holds copies of all of them until it execs (`CLOEXEC` acts only then).
    fn unbound_soon(name: &str) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match bound_abstract_seqpacket(name) {
                Ok(None) => return true,
                _ if std::time::Instant::now() >= deadline => return false,
                _ => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
    }

    #[test]
    fn finds_a_bound_or_listening_name_its_owner_and_its_process() {
        let name = format!("memlink.unit.diag.{}", std::process::id());
        assert_eq!(bound_abstract_seqpacket(&name), Ok(None));
        let address = SocketAddrUnix::new_abstract_name(name.as_bytes()).unwrap();
        // Bound, not listening: nobody can connect to it, but the kernel still tells.
        let idle = seqpacket();
        bind(&idle, &address).unwrap();
        let found = bound_abstract_seqpacket(&name).unwrap().unwrap();
        let uid = rustix::process::geteuid().as_raw();
        if kernel_at_least(5, 3) {
            assert_eq!(found.uid, Some(uid), "{found:?}");
        } else {
            assert!(found.uid.is_none_or(|u| u == uid), "{found:?}");
        }
        assert_eq!(
            process_holding_socket(found.inode),
            Some(std::process::id())
        );
        // A longer name sharing the prefix, and a stream socket under the very name, are others.
        let longer = seqpacket();
        let longer_name = format!("{name}x");
        bind(
            &longer,
            &SocketAddrUnix::new_abstract_name(longer_name.as_bytes()).unwrap(),
        )
        .unwrap();
        drop(idle);
        let stream = socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        bind(&stream, &address).unwrap();
        assert!(unbound_soon(&name), "{:?}", bound_abstract_seqpacket(&name));
        // Listening, with a connection accepted: the listener is the one found.
        let listener = seqpacket();
        bind(&listener, &address).unwrap();
        listen(&listener, 4).unwrap();
        let caller = seqpacket();
        rustix::net::connect(&caller, &address).unwrap();
        let accepted = rustix::net::accept(&listener).unwrap();
        let listening = bound_abstract_seqpacket(&name).unwrap().unwrap();
        assert_eq!(
            listening.inode as u64,
            rustix::fs::fstat(&listener).unwrap().st_ino
        );
        drop((accepted, caller, listener));
        assert!(unbound_soon(&name), "{:?}", bound_abstract_seqpacket(&name));
    }
}
