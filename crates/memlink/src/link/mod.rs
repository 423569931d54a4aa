//! One connection between two processes, whatever the pattern: finding each other on a name and
//! admitting by credentials ([`rendezvous`], [`admits`], [`trusts`], [`handshake`]; fairly per
//! user when one side serves many, [`admission`]), the
//! handshake messages and region layout ([`protocol`]), the sealed region and wake pipes (offered
//! by the accepting side with [`offer`], validated by the connecting side with [`adopt`]), the
//! wake-ups a peer can neither block nor steal and spin → yield → park ([`wake`], [`wait`],
//! [`park_until`]), hang-up detection and goodbyes ([`goodbye`]), and reassembling a message from
//! its fragments under validation ([`fragment`]).
//!
//! Request/response (`rpc`) and the duplex channel (`duplex`) both build on this; a pattern module
//! never touches a wake pipe, a socket or a raw region offset itself. May use `memory` (rings) and
//! `platform` (sockets, memfds, pipes, mappings); no `unsafe` of its own.

pub(crate) mod admission;
#[cfg(feature = "tokio")]
pub(crate) mod asynchronous;
pub(crate) mod fragment;
pub(crate) mod protocol;
pub(crate) mod rendezvous;
pub(crate) mod wake;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::memory::ring::RingError;
use crate::memory::segment::Permissions;
use crate::platform::mapping::Mapping;
use crate::platform::{barrier, memfd, notify, process, shm, socket};
use protocol::{Goodbye, Hello, RegionLayout, Welcome};
pub(crate) use wake::{Backoff, PARK_RECHECK, Patience, Side, park_begin, park_end};

/// Whether the accepting side admits the connector `peer` under `permissions` (root and our
/// own user always; `trusted_uid` too, if given).
pub(crate) fn admits(
    permissions: Permissions,
    trusted_uid: Option<u32>,
    connection: &OwnedFd,
    peer: socket::PeerCredentials,
) -> bool {
    let uid = process::effective_uid();
    if peer.uid == uid || peer.uid == 0 || Some(peer.uid) == trusted_uid {
        return true;
    }
    match permissions {
        Permissions::Everyone => true,
        Permissions::Group => {
            let group = rustix::process::getegid().as_raw();
            peer.gid == group
                || socket::peer_groups(connection).is_ok_and(|groups| groups.contains(&group))
        }
        Permissions::OwnerOnly => false,
    }
}

/// Whether the connecting side trusts the accepting side's user: our own, root, or `trusted_uid`.
/// Checked before anything is sent, so another user who took the name first learns nothing.
pub(crate) fn trusts(peer_uid: u32, trusted_uid: Option<u32>) -> bool {
    peer_uid == process::effective_uid() || peer_uid == 0 || Some(peer_uid) == trusted_uid
}

/// A connection's fresh region, made by the accepting side before it hands the memfd over.
struct NewRegion {
    fd: OwnedFd,
    map: Arc<Mapping>,
    layout: RegionLayout,
}

/// Makes a sealed memfd for a connection with rings of `capacity` bytes and writes fresh random
/// ring keys into it. Nothing is faulted in but the keys' page: ring pages are allocated as
/// messages first reach them, so an idle connection costs a page, not its whole rings.
fn create_region(capacity: usize) -> Result<NewRegion, Errno> {
    let layout = RegionLayout::fresh(capacity);
    let fd = memfd::create_sealed("memlink-connection", layout.len() as u64)?;
    let map = Arc::new(Mapping::map_shared(&fd, layout.len())?);
    layout.write_keys(&map).map_err(|_| Errno::INVAL)?;
    Ok(NewRegion { fd, map, layout })
}

/// What a connect error means to the connecting side.
pub(crate) fn connect_error(name: &str, e: Errno) -> Error {
    match e {
        Errno::CONNREFUSED | Errno::NOENT => Error::NotRunning {
            name: name.to_owned(),
        },
        Errno::ACCESS | Errno::PERM => Error::PermissionDenied {
            name: name.to_owned(),
            owner_uid: None,
        },
        Errno::AGAIN | Errno::TIMEDOUT => Error::Timeout,
        Errno::PIPE | Errno::CONNRESET => Error::Disconnected {
            name: name.to_owned(),
        },
        e => Error::os("connecting to a memlink peer", e),
    }
}

/// The accepting side's answer to our hello.
pub(crate) struct Answer {
    /// The connection; it refuses descriptors again from now on.
    pub(crate) socket: OwnedFd,
    /// Who answered (as the kernel says).
    pub(crate) peer: socket::PeerCredentials,
    pub(crate) welcome: Welcome,
    /// The descriptors the welcome carried (see [`adopt`]).
    pub(crate) fds: Vec<OwnedFd>,
}

/// The connecting side's handshake up to the welcome: connects to the abstract socket
/// `socket_name` (waiting at most `patience` for a full backlog or the answer), refuses an
/// accepting side run by a user we do not trust ([`trusts`]) before sending anything, sends
/// `hello`, and returns the answer. Descriptors are accepted only with the welcome.
///
/// Errors: as [`connect_error`]; `Disconnected` also when the other side closed without an
/// answer (it dropped the handshake: usually transient); `Incompatible` for an answer that is not
/// a welcome.
pub(crate) fn handshake(
    name: &str,
    socket_name: &str,
    patience: Duration,
    trusted_uid: Option<u32>,
    hello: &Hello,
) -> Result<Answer> {
    let fail = |e| connect_error(name, e);
    // The socket refuses descriptors until we know who is on the other end.
    let connection = socket::connect(socket_name, patience).map_err(fail)?;
    let peer = socket::peer_credentials(&connection).map_err(fail)?;
    if !trusts(peer.uid, trusted_uid) {
        // Someone else's process holds the name: do not hand it anything, and say whose.
        return Err(Error::PermissionDenied {
            name: name.to_owned(),
            owner_uid: Some(peer.uid),
        });
    }
    // A trusted peer: accept the descriptors its welcome carries, then no more.
    socket::set_accept_descriptors(&connection, true).map_err(fail)?;
    let sent = socket::send_message(&connection, &hello.encode(), &[]);
    let mut buf = [0u8; Welcome::LEN + 8];
    let (len, fds) = receive_answer(&connection, &mut buf, sent).map_err(fail)?;
    socket::set_accept_descriptors(&connection, false).map_err(fail)?;
    if len == 0 {
        // Closed without an answer: the handshake was dropped (shutting down, shedding half-open
        // connections, or the accepting side vanished).
        return Err(Error::Disconnected {
            name: name.to_owned(),
        });
    }
    let welcome = Welcome::decode(&buf[..len]).map_err(|r| Error::incompatible(name, r))?;
    Ok(Answer {
        socket: connection,
        peer,
        welcome,
        fds,
    })
}

/// Receives the answer to the hello we sent on `connection` (`sent`: how sending it went), waiting
/// for it (within the socket's timeout).
///
/// A side that refuses us may answer and close before reading our hello, so a failed send is only
/// fatal if no answer is waiting either. And if it closed with our hello unread, the kernel
/// reports that reset ahead of the answer it had queued before closing (clearing it as it does),
/// so the answer is read next. Without that, a refused caller saw `Disconnected`, retried, and on
/// a loaded machine kept losing the same race until its patience ran out.
pub(crate) fn receive_answer(
    connection: &OwnedFd,
    buf: &mut [u8],
    sent: Result<(), Errno>,
) -> Result<(usize, Vec<OwnedFd>), Errno> {
    let received = match socket::receive_message(connection, buf, true) {
        Err(Errno::CONNRESET) => match socket::receive_message(connection, buf, false) {
            // Not expected: the closing side shut our end down, so an empty queue reads as the
            // end (0). Kept for a kernel that says otherwise.
            Err(Errno::AGAIN) => Err(Errno::CONNRESET),
            received => received,
        },
        received => received,
    };
    received.map_err(|e| sent.err().unwrap_or(e))
}

/// Which end of a wake pipe the accepting side keeps; the other end goes to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// We sleep on this pipe; the peer wakes us through it.
    Read,
    /// We wake the peer through this pipe.
    Write,
}

/// What the accepting side keeps of a connection it offered: the mapped region and, in the order
/// asked for, its ends of the wake pipes.
pub(crate) struct Offered<const N: usize> {
    pub(crate) map: Arc<Mapping>,
    pub(crate) layout: RegionLayout,
    pub(crate) ends: [OwnedFd; N],
}

/// The accepting side's half of a handshake: makes the connection's sealed region (rings of
/// `capacity` bytes) and one wake pipe per entry of `pipes`, and sends `welcome` carrying the
/// memfd and the peer's end of each pipe, in order. Nothing of it is kept if the send fails.
pub(crate) fn offer<const N: usize>(
    connection: &OwnedFd,
    welcome: &[u8],
    capacity: usize,
    pipes: [Keep; N],
) -> Result<Offered<N>, Errno> {
    use std::os::fd::AsFd;
    let region = create_region(capacity)?;
    let ends = offer_regions(connection, welcome, &[region.fd.as_fd()], pipes)?;
    Ok(Offered {
        map: region.map,
        layout: region.layout,
        ends,
    })
}

/// Like [`offer`], for a pattern with regions of its own: sends `welcome` carrying `regions` (in
/// order) and then the peer's end of one new wake pipe per entry of `pipes`; returns our ends.
pub(crate) fn offer_regions<const N: usize>(
    connection: &OwnedFd,
    welcome: &[u8],
    regions: &[std::os::fd::BorrowedFd<'_>],
    pipes: [Keep; N],
) -> Result<[OwnedFd; N], Errno> {
    // Before anything a peer may park on is published (see `platform::barrier`).
    barrier::prepare();
    let (ours, theirs) = wake_pipes(pipes)?;
    send_welcome(connection, welcome, regions, &theirs)?;
    Ok(ours)
}

/// One new wake pipe per entry of `pipes`: our ends (as `pipes` says) and the peer's, each in
/// order. For an accepting side that must record the connection before its welcome leaves
/// ([`send_welcome`]).
pub(crate) fn wake_pipes<const N: usize>(
    pipes: [Keep; N],
) -> Result<([OwnedFd; N], [OwnedFd; N]), Errno> {
    let mut ours = Vec::with_capacity(N);
    let mut theirs = Vec::with_capacity(N);
    for keep in pipes {
        let (read, write) = notify::wake_pipe()?;
        let (kept, given) = match keep {
            Keep::Read => (read, write),
            Keep::Write => (write, read),
        };
        ours.push(kept);
        theirs.push(given);
    }
    Ok((
        ours.try_into().map_err(|_| Errno::INVAL)?,
        theirs.try_into().map_err(|_| Errno::INVAL)?,
    ))
}

/// Sends `welcome` carrying `regions` and then the peer's wake pipe ends `theirs` (from
/// [`wake_pipes`]), never blocking.
pub(crate) fn send_welcome(
    connection: &OwnedFd,
    welcome: &[u8],
    regions: &[std::os::fd::BorrowedFd<'_>],
    theirs: &[OwnedFd],
) -> Result<(), Errno> {
    use std::os::fd::AsFd;
    let mut fds = regions.to_vec();
    fds.extend(theirs.iter().map(AsFd::as_fd));
    socket::send_message(connection, welcome, &fds)
}

/// The connecting side's half: checks that `fds` (from an accepted welcome) are a region and the
/// ends of `pipes` (as the accepting side keeps them: we hold the other ends), reopens each pipe
/// end privately, and validates and maps the region ([`adopt_region`]).
pub(crate) fn adopt<const N: usize>(
    name: &str,
    capacity: usize,
    fds: Vec<OwnedFd>,
    pipes: [Keep; N],
) -> Result<(Arc<Mapping>, RegionLayout, [OwnedFd; N])> {
    let ([region_fd], ends) = adopt_regions::<1, N>(name, fds, pipes)?;
    let (map, layout) = adopt_region(name, capacity, &region_fd)?;
    Ok((map, layout, ends))
}

/// Like [`adopt`], for a pattern with `R` regions of its own (which the caller validates): splits
/// `fds` into the regions and our private ends of `pipes`.
pub(crate) fn adopt_regions<const R: usize, const N: usize>(
    name: &str,
    fds: Vec<OwnedFd>,
    pipes: [Keep; N],
) -> Result<([OwnedFd; R], [OwnedFd; N])> {
    // Before anything a peer may park on is published (see `platform::barrier`).
    barrier::prepare();
    if fds.len() != R + N {
        return Err(Error::corrupted(
            name,
            format!(
                "the peer's welcome carried {} descriptors, expected {}",
                fds.len(),
                R + N
            ),
        ));
    }
    let mut fds = fds.into_iter();
    let regions: Vec<OwnedFd> = fds.by_ref().take(R).collect();
    // The wake pipes must be pipes, ends the right way round; we reopen each to get an open
    // file description of our own, so that not even the peer can make our end blocking.
    let mut ends = Vec::with_capacity(N);
    for (received, keep) in fds.zip(pipes) {
        ends.push(private_wake_end(name, &received, keep == Keep::Read)?);
    }
    let too_few = || Error::corrupted(name, "the peer's welcome carried too few descriptors");
    Ok((
        regions.try_into().map_err(|_| too_few())?,
        ends.try_into().map_err(|_| too_few())?,
    ))
}

/// Validates and maps the region the accepting side handed us: it must be sealed against
/// shrinking (so it cannot `SIGBUS` us) and exactly as large as the layout we derive ourselves
/// from `capacity`; the ring keys are read once. Nothing about it is taken on trust.
fn adopt_region(
    name: &str,
    capacity: usize,
    region_fd: &OwnedFd,
) -> Result<(Arc<Mapping>, RegionLayout)> {
    let expected_len = RegionLayout {
        capacity,
        request_key: 0,
        response_key: 0,
    }
    .len();
    if !memfd::is_sealed_against_shrinking(region_fd) {
        return Err(Error::corrupted(
            name,
            "the peer's shared region is not sealed against shrinking",
        ));
    }
    let size = shm::fstat(region_fd)
        .map_err(|e| Error::os("inspecting the shared region", e))?
        .size;
    if size != expected_len as u64 {
        return Err(Error::corrupted(
            name,
            format!("shared region of {size} bytes, expected {expected_len}"),
        ));
    }
    let map = Arc::new(
        Mapping::map_shared(region_fd, expected_len)
            .map_err(|e| Error::os("mapping the shared region", e))?,
    );
    let layout = RegionLayout::read(capacity, &map).map_err(|e| Error::corrupted(name, e.0))?;
    Ok((map, layout))
}

/// Checks that `received` is a pipe end of the right direction and reopens it as an open file
/// description of our own, so that not even the peer that sent it can make our end blocking.
fn private_wake_end(name: &str, received: &OwnedFd, writable: bool) -> Result<OwnedFd> {
    notify::private_wake_end(received, writable).map_err(|e| {
        Error::corrupted(
            name,
            format!("the peer's wake descriptors are not the ends of pipes ({e})"),
        )
    })
}

/// How a [`park_until`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parked {
    /// What we waited for holds.
    Ready,
    /// The deadline passed first.
    TimedOut,
    /// The peer hung up (or said goodbye) and what we waited for does not hold: see [`goodbye`].
    HungUp,
}

/// Sleeps until `ready` holds, parked as `me` (see [`wake`]): sets the parked flag, looks once
/// more, sleeps on `wake_in` and the connection's `socket` for at most [`PARK_RECHECK`] at a time,
/// and looks again after every wake-up. A hang-up is reported only after a last look, so whatever
/// the peer published before it died is still taken first.
pub(crate) fn park_until(
    name: &str,
    map: &Mapping,
    me: Side,
    wake_in: &OwnedFd,
    socket: &OwnedFd,
    deadline: Option<Instant>,
    ready: impl FnMut() -> Result<bool, RingError>,
) -> Result<Parked> {
    park_until_or_bell(name, map, me, wake_in, socket, None, deadline, ready)
}

/// As [`park_until`], also waking when our own doorbell `bell` rings (it is left ringing);
/// `ready` then says whether to stop waiting (a thread being stopped makes it say yes).
#[allow(clippy::too_many_arguments)]
pub(crate) fn park_until_or_bell(
    name: &str,
    map: &Mapping,
    me: Side,
    wake_in: &OwnedFd,
    socket: &OwnedFd,
    bell: Option<&OwnedFd>,
    deadline: Option<Instant>,
    mut ready: impl FnMut() -> Result<bool, RingError>,
) -> Result<Parked> {
    let corrupted = |e: RingError| Error::corrupted(name, e.0);
    loop {
        park_begin(map, me).map_err(corrupted)?;
        if ready().map_err(corrupted)? {
            park_end(map, me).map_err(corrupted)?;
            return Ok(Parked::Ready);
        }
        let left = match deadline {
            None => None,
            Some(t) => match t.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => {
                    park_end(map, me).map_err(corrupted)?;
                    return Ok(Parked::TimedOut);
                }
            },
        };
        // Bounded (see `PARK_RECHECK`): a lost wake-up costs a moment, not the wait.
        let nap = left.map_or(PARK_RECHECK, |left| left.min(PARK_RECHECK));
        let woken = notify::wait_wake_hangup_or_bell(wake_in, socket, bell, Some(nap))
            .map_err(|e| Error::os("waiting for the peer", e))?;
        if !(woken.wake || woken.socket || woken.hung_up || woken.bell) {
            // A nap nobody ended: our flag stays up, and the next look needs no new barrier
            // (see `park_begin`).
            continue;
        }
        park_end(map, me).map_err(corrupted)?;
        let writer_gone = woken.wake && notify::drain_wakes(wake_in);
        // Readable but not hung up: after the handshake only a goodbye may travel here.
        let mut hung_up = woken.hung_up || writer_gone;
        if woken.socket && !hung_up {
            match socket_message(name, socket) {
                SocketMessage::Nothing => continue,
                SocketMessage::NotNow => {
                    // The kernel is short of memory: the socket stays readable, so poll would
                    // return at once. Look again in a moment rather than spin.
                    std::thread::sleep(TRANSIENT_PAUSE);
                    continue;
                }
                SocketMessage::Closed => hung_up = true,
                // Whatever the peer published before is moot: it broke the connection off (or
                // broke the protocol, and we do now).
                SocketMessage::Corrupted(error) => return Err(error),
            }
        }
        if hung_up {
            // The peer may have published just before it went away.
            if ready().map_err(corrupted)? {
                return Ok(Parked::Ready);
            }
            return Ok(Parked::HungUp);
        }
    }
}

/// How long a waiter pauses after a transient error reading the connection's socket.
pub(crate) const TRANSIENT_PAUSE: Duration = Duration::from_millis(1);

/// What a readable connection socket held.
pub(crate) enum SocketMessage {
    /// Nothing after all (a spurious wake-up).
    Nothing,
    /// It could not be read for the moment (`ENOMEM`, `ENOBUFS`): says nothing about the peer.
    NotNow,
    /// The peer closed its end, or said a goodbye that means it is gone (`Disconnected`).
    Closed,
    /// A goodbye saying we corrupted the connection, or anything that is not a goodbye (the peer
    /// broke the protocol): a `Corrupted` error saying which.
    Corrupted(Error),
}

/// Reads what the peer wrote on the connection's socket, without waiting.
pub(crate) fn socket_message(name: &str, socket: &OwnedFd) -> SocketMessage {
    let broke = || {
        SocketMessage::Corrupted(Error::corrupted(
            name,
            "the peer broke the protocol: it sent an unexpected message on the connection's socket",
        ))
    };
    let mut buf = [0u8; Goodbye::MAX_LEN];
    match socket::receive_message(socket, &mut buf, false) {
        Err(Errno::AGAIN | Errno::INTR) => SocketMessage::Nothing,
        // A transient error is not a hang-up: taking the peer for gone would give up a call the
        // live server may still run.
        Err(e) if crate::platform::is_transient(e) => SocketMessage::NotNow,
        Err(Errno::MSGSIZE) => broke(),
        Err(_) | Ok((0, _)) => SocketMessage::Closed,
        Ok((len, _)) => match Goodbye::decode(&buf[..len]) {
            Ok(Goodbye::Corrupted(why)) => SocketMessage::Corrupted(Error::corrupted(
                name,
                format!("the peer dropped this connection: {why}"),
            )),
            Ok(_) => SocketMessage::Closed,
            Err(_) => broke(),
        },
    }
}

/// Longest a waiter spins (when the peer runs on another CPU), and then yields, before it parks.
const WAIT_SPIN: Duration = Duration::from_micros(50);
const WAIT_YIELD: Duration = Duration::from_micros(100);

/// Waits until `ready` holds: a few looks, then spins (unless `peer` last ran on our CPU), yields,
/// and parks as `me` (see [`park_until`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn wait(
    name: &str,
    map: &Mapping,
    me: Side,
    peer: Side,
    wake_in: &OwnedFd,
    socket: &OwnedFd,
    deadline: Option<Instant>,
    mut ready: impl FnMut() -> Result<bool, RingError>,
) -> Result<Parked> {
    let corrupted = |e: RingError| Error::corrupted(name, e.0);
    for _ in 0..32 {
        if ready().map_err(corrupted)? {
            return Ok(Parked::Ready);
        }
        std::hint::spin_loop();
    }
    let spin = if wake::shares_cpu_with_peer(map, me, peer) {
        Duration::ZERO
    } else {
        WAIT_SPIN
    };
    let mut backoff = Backoff::new(Patience {
        spin,
        yield_for: WAIT_YIELD,
    });
    loop {
        if ready().map_err(corrupted)? {
            return Ok(Parked::Ready);
        }
        if !backoff.pause() {
            break;
        }
        if deadline.is_some_and(|t| backoff.last_clock_read() >= t) {
            return Ok(Parked::TimedOut);
        }
    }
    park_until(name, map, me, wake_in, socket, deadline, ready)
}

/// Whether the peer has hung up (a non-blocking look at the socket).
pub(crate) fn hung_up(socket: &OwnedFd, wake_in: &OwnedFd) -> bool {
    notify::wait_wake_or_hangup(wake_in, socket, Some(std::time::Duration::ZERO))
        .is_ok_and(|w| w.hung_up)
}

/// Why the peer closed the connection: it says so in a goodbye message if it dropped us
/// deliberately; silence means it died or closed its end. `Disconnected` names `name`.
pub(crate) fn goodbye(name: &str, socket: &OwnedFd) -> Error {
    let mut buf = [0u8; Goodbye::MAX_LEN];
    let said = match socket::receive_message(socket, &mut buf, false) {
        Ok((len, _)) if len > 0 => Some(&buf[..len]),
        _ => None,
    };
    match said.map(Goodbye::decode) {
        Some(Ok(Goodbye::Corrupted(why))) => {
            Error::corrupted(name, format!("the peer dropped this connection: {why}"))
        }
        _ => Error::Disconnected {
            name: name.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair as the handshake has it: ours, and the accepting side's.
    fn connected_pair() -> (OwnedFd, OwnedFd) {
        let name = format!(
            "memlink.unit.answer.{}.{}",
            std::process::id(),
            next_suffix()
        );
        let (listener, _) = socket::listen(&name).unwrap();
        let ours = socket::connect(&name, Duration::from_secs(5)).unwrap();
        let theirs = socket::accept(&listener).unwrap();
        (ours, theirs)
    }

    fn next_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    #[test]
    fn an_answer_queued_before_a_close_that_left_our_hello_unread_is_read() {
        let (ours, theirs) = connected_pair();
        let sent = socket::send_message(&ours, b"hello", &[]);
        socket::send_message(&theirs, b"refused", &[]).unwrap();
        // Closed with our hello unread: the kernel reports a reset ahead of the answer.
        drop(theirs);
        let mut buf = [0u8; 16];
        let (len, fds) = receive_answer(&ours, &mut buf, sent).unwrap();
        assert_eq!((&buf[..len], fds.len()), (&b"refused"[..], 0));
    }

    #[test]
    fn a_close_without_an_answer_reads_as_the_end() {
        let (ours, theirs) = connected_pair();
        let sent = socket::send_message(&ours, b"hello", &[]);
        drop(theirs);
        let mut buf = [0u8; 16];
        assert_eq!(
            receive_answer(&ours, &mut buf, sent).map(|(len, _)| len),
            Ok(0)
        );
    }
}
