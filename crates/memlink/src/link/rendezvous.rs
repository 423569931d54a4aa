//! Finding each other on a name: binding it (atomic: of two binders exactly one succeeds), a
//! per-name lock built the same way ([`NameLock`]), the accepting side's callers (credentials
//! checked before anything is read from them, then a hello within a bounded time), and a
//! responder thread that answers every later caller with a fixed welcome (a duplex pair's
//! `Busy`). Sockets and descriptors stay in here and in `platform`.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::io::Errno;

use super::protocol::{Goodbye, Hello, Welcome};
use crate::error::{Error, Result};
use crate::memory::segment::Permissions;
use crate::platform::notify::{self, Poller};
use crate::platform::sock_diag;
use crate::platform::socket::{self, PeerCredentials};

/// Binds the abstract socket `socket_name`; `Ok(None)` if a live process holds it.
pub(crate) fn bind(socket_name: &str) -> Result<Option<OwnedFd>> {
    match socket::listen(socket_name) {
        Ok((listener, refuses_descriptors)) => {
            if !refuses_descriptors {
                tracing::warn!(
                    name = socket_name,
                    "this kernel cannot refuse descriptors passed by callers (SO_PASSRIGHTS, Linux 6.16+): a hostile caller can delay the thread that closes its connection by passing one whose close blocks"
                );
            }
            Ok(Some(listener))
        }
        Err(Errno::ADDRINUSE) => Ok(None),
        Err(e) => Err(Error::os("binding a memlink socket", e)),
    }
}

/// A per-name lock held by at most one thread of one process at a time, and released the moment
/// its holder drops it or dies, however it dies: a `SOCK_SEQPACKET` socket bound under the
/// lock's name (the kernel lets exactly one of two binders have a name, and frees it with the
/// last descriptor). Nothing is ever left on disk, so there is no stale lock to clean up.
///
/// The socket never listens: nobody can connect to it (`ECONNREFUSED`), so nobody can send the
/// holder anything through it (on a kernel without `SO_PASSRIGHTS`, a connection could carry a
/// descriptor whose close blocks whoever closes it), and closing it never blocks. Who holds a
/// lock is asked of the kernel instead ([`try_lock`], sock_diag). Its descriptor is
/// close-on-exec; [`NameLock::share`] makes a copy to hand on deliberately.
#[derive(Debug)]
pub(crate) struct NameLock {
    socket: OwnedFd,
}

impl NameLock {
    /// A copy of the lock's descriptor (close-on-exec, numbered 3 or more) and the socket's
    /// inode, to hand to a program the holder starts: the lock is held until every copy is
    /// closed.
    pub(crate) fn share(&self) -> Result<(OwnedFd, u64), Errno> {
        let copy = rustix::io::fcntl_dupfd_cloexec(&self.socket, 3)?;
        Ok((copy, socket::inode(&self.socket)?))
    }

    /// The lock `socket_name` a launcher handed to this process as descriptor `fd` (see
    /// [`NameLock::share`]), if `fd` is that very socket (inode `inode`, bound to that name).
    /// At most once per process for a number (see `socket::take_inherited`).
    pub(crate) fn inherited(fd: i32, inode: u64, socket_name: &str) -> Option<NameLock> {
        socket::take_inherited(fd, inode, socket_name).map(|socket| NameLock { socket })
    }
}

/// Who holds a lock, as the kernel says (without our connecting to it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Holder {
    /// The user that created the lock's socket, if the kernel says (Linux 5.3+).
    pub(crate) uid: Option<u32>,
    inode: u32,
}

impl Holder {
    /// A process that holds it, if one can be seen (another user's descriptors are visible to
    /// root only). Reads every process's descriptor table: for error messages, not loops.
    pub(crate) fn pid(&self) -> Option<u32> {
        sock_diag::process_holding_socket(self.inode)
    }
}

/// What [`try_lock`] found.
#[derive(Debug)]
pub(crate) enum LockAttempt {
    /// The lock is ours until dropped.
    Taken(NameLock),
    /// Another thread or process holds it; who, if asked and the kernel said.
    Held(Option<Holder>),
}

/// Tries once to take the lock `socket_name`. If it is held and `ask_holder`, asks the kernel
/// who holds it ([`holder`]).
pub(crate) fn try_lock(socket_name: &str, ask_holder: bool) -> Result<LockAttempt> {
    match socket::bind_unconnectable(socket_name) {
        Ok(socket) => return Ok(LockAttempt::Taken(NameLock { socket })),
        Err(Errno::ADDRINUSE) => {}
        Err(e) => return Err(Error::os("taking a memlink start lock", e)),
    }
    Ok(LockAttempt::Held(if ask_holder {
        holder(socket_name)
    } else {
        None
    }))
}

/// Who holds the lock `socket_name` (whoever has a `SOCK_SEQPACKET` socket bound or listening
/// under the name), as the kernel's socket table says (sock_diag): nothing is sent to the
/// holder, which cannot tell it was asked. `None` if it is free, or if the kernel would not say
/// (no netlink in a sandbox); the holder's uid is `None` on kernels before 5.3.
pub(crate) fn holder(socket_name: &str) -> Option<Holder> {
    match sock_diag::bound_abstract_seqpacket(socket_name) {
        Ok(found) => found.map(|bound| Holder {
            uid: bound.uid,
            inode: bound.inode,
        }),
        Err(e) => {
            tracing::debug!(error = %e, "could not ask the kernel who holds a memlink start lock");
            None
        }
    }
}

/// Who may call, and what the others are told (an encoded refusal welcome).
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    pub(crate) permissions: Permissions,
    pub(crate) trusted_uid: Option<u32>,
    pub(crate) refusal: [u8; Welcome::LEN],
}

impl Gate {
    fn admits(&self, connection: &OwnedFd, peer: PeerCredentials) -> bool {
        super::admits(self.permissions, self.trusted_uid, connection, peer)
    }
}

/// A caller that passed the gate and said hello.
pub(crate) struct Caller {
    pub(crate) socket: OwnedFd,
    pub(crate) peer: PeerCredentials,
    pub(crate) hello: Hello,
}

/// A caller that passed the gate and has not said hello yet.
struct Pending {
    socket: OwnedFd,
    peer: PeerCredentials,
    /// When it loses its connection if it still said nothing.
    until: Instant,
}

/// Most callers waiting for their hello at once; the oldest is dropped to make room.
const MAX_PENDING: usize = 128;
/// Most connections accepted in a row before pending hellos are looked at again.
const ACCEPT_BATCH: usize = 32;

/// Waits (until `deadline`; `Ok(None)` then) for the next caller on `listener` that the gate
/// admits and that says a well-formed hello within `hello_timeout` of being accepted. A caller
/// the gate refuses gets the refusal before anything is read from it. Callers wait for their
/// hello side by side (up to [`MAX_PENDING`], the oldest dropped first), so one that stalls or
/// says garbage only loses its own connection and never holds up the others; the deadline is
/// checked after every step.
pub(crate) fn next_caller(
    listener: &OwnedFd,
    deadline: Option<Instant>,
    gate: &Gate,
    hello_timeout: Duration,
) -> Result<Option<Caller>> {
    const LISTENER: u64 = 0;
    let poll_error = |e| Error::os("waiting for a memlink peer", e);
    let mut poller = Poller::new().map_err(poll_error)?;
    poller.add(listener, LISTENER).map_err(poll_error)?;
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    let mut next_token = LISTENER + 1;
    let mut ready = Vec::new();
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|t| now >= t) {
            return Ok(None);
        }
        pending.retain(|_, caller| {
            let keep = caller.until > now;
            if !keep {
                let _ = poller.remove(&caller.socket);
            }
            keep
        });
        let first_expiry = pending.values().map(|caller| caller.until).min();
        let wake_at = match (deadline, first_expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let wait = wake_at.map(|t| t.saturating_duration_since(now));
        poller.wait(wait, &mut ready).map_err(poll_error)?;
        // Hellos first: a caller already accepted is never pushed out by newer ones.
        for token in ready.iter().map(|r| r.token).filter(|&t| t != LISTENER) {
            let Some(caller) = pending.remove(&token) else {
                continue;
            };
            let _ = poller.remove(&caller.socket);
            match try_hello(&caller.socket) {
                Some(Ok(hello)) => {
                    return Ok(Some(Caller {
                        socket: caller.socket,
                        peer: caller.peer,
                        hello,
                    }));
                }
                // Nothing yet after all: keep waiting for it.
                None => {
                    if poller.add(&caller.socket, token).is_ok() {
                        pending.insert(token, caller);
                    }
                }
                Some(Err(())) => {}
            }
        }
        if !ready.iter().any(|r| r.token == LISTENER) {
            continue;
        }
        for _ in 0..ACCEPT_BATCH {
            if deadline.is_some_and(|t| Instant::now() >= t) {
                return Ok(None);
            }
            let connection = match socket::accept(listener) {
                Ok(connection) => connection,
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR | Errno::CONNABORTED | Errno::PROTO) => continue,
                Err(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM) => {
                    tracing::warn!(
                        "out of descriptors or memory; refusing duplex callers for a moment"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                    break;
                }
                Err(e @ (Errno::BADF | Errno::INVAL | Errno::NOTSOCK | Errno::OPNOTSUPP)) => {
                    return Err(Error::os("accepting a memlink peer", e));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "a caller could not be accepted");
                    continue;
                }
            };
            let Ok(peer) = socket::peer_credentials(&connection) else {
                continue;
            };
            if !gate.admits(&connection, peer) {
                let _ = socket::send_message(&connection, &gate.refusal, &[]);
                continue;
            }
            // An honest caller sends its hello right after connecting: often it is here already.
            match try_hello(&connection) {
                Some(Ok(hello)) => {
                    return Ok(Some(Caller {
                        socket: connection,
                        peer,
                        hello,
                    }));
                }
                Some(Err(())) => continue,
                None => {}
            }
            if pending.len() >= MAX_PENDING {
                let oldest = pending
                    .iter()
                    .min_by_key(|(_, caller)| caller.until)
                    .map(|(&token, _)| token);
                if let Some(evicted) = oldest.and_then(|token| pending.remove(&token)) {
                    let _ = poller.remove(&evicted.socket);
                }
            }
            let token = next_token;
            next_token += 1;
            if poller.add(&connection, token).is_ok() {
                pending.insert(
                    token,
                    Pending {
                        socket: connection,
                        peer,
                        until: Instant::now() + hello_timeout,
                    },
                );
            }
        }
    }
}

/// Reads a hello without waiting: `None` if nothing is there yet, `Some(Err)` for anything but
/// a well-formed hello (or a hang-up).
fn try_hello(connection: &OwnedFd) -> Option<Result<Hello, ()>> {
    let mut buf = [0u8; Hello::LEN + 8];
    match socket::receive_message(connection, &mut buf, false) {
        Err(Errno::AGAIN | Errno::INTR) => None,
        Ok((len, _)) => Some(Hello::decode(&buf[..len]).map_err(|_| ())),
        Err(_) => Some(Err(())),
    }
}

/// Reads one hello (waiting up to the socket's receive timeout); `None` for anything else.
pub(crate) fn read_hello(connection: &OwnedFd) -> Option<Hello> {
    let mut buf = [0u8; Hello::LEN + 8];
    let (len, _) = socket::receive_message(connection, &mut buf, true).ok()?;
    Hello::decode(&buf[..len]).ok()
}

/// Bounds how long a blocking send or receive on `connection` may take.
pub(crate) fn set_io_timeout(connection: &OwnedFd, timeout: Duration) -> Result<(), Errno> {
    socket::set_io_timeout(connection, timeout)
}

/// Sends one message without descriptors, never blocking.
pub(crate) fn send(connection: &OwnedFd, bytes: &[u8]) -> Result<(), Errno> {
    socket::send_message(connection, bytes, &[])
}

/// Ends a connection at once, telling the peer why first if there is a reason (a best effort:
/// the peer's blocked calls wake on the hang-up either way).
pub(crate) fn hang_up(connection: &OwnedFd, goodbye: Option<&Goodbye>) {
    if let Some(goodbye) = goodbye {
        let _ = socket::send_message(connection, &goodbye.encode(), &[]);
    }
    let _ = socket::shut_down(connection);
}

/// Answers every caller of a listener with a fixed welcome (`answer` to callers the gate
/// admits, its refusal to the others) from its own thread, until dropped.
///
/// Dropping it shuts the listener down and closes it from the dropping thread (the name is free
/// at once), then waits a bounded time ([`Responder::JOIN_WAIT`]) for the thread to end: on a
/// kernel that cannot refuse descriptors a caller may have passed one whose close blocks, and the
/// thread may be stuck closing it; it is then left to finish on its own.
#[derive(Debug)]
pub(crate) struct Responder {
    stop: Arc<OwnedFd>,
    /// The listener, shared with the thread only while it accepts (never while it closes).
    listener: Arc<Mutex<Option<OwnedFd>>>,
    /// Disconnected when the thread ends (in a mutex only to make the responder `Sync`).
    done: Mutex<mpsc::Receiver<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// Longest a drop waits for the responder thread to end before leaving it.
    const JOIN_WAIT: Duration = Duration::from_millis(100);

    pub(crate) fn start(
        listener: OwnedFd,
        gate: Gate,
        answer: [u8; Welcome::LEN],
    ) -> Result<Self, Errno> {
        const LISTENER: u64 = 0;
        const STOP: u64 = 1;
        let stop = Arc::new(notify::doorbell()?);
        let mut poller = Poller::new()?;
        poller.add(&listener, LISTENER)?;
        poller.add(&*stop, STOP)?;
        let listener = Arc::new(Mutex::new(Some(listener)));
        let shared = Arc::clone(&listener);
        let (finished, done) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("memlink-responder".into())
            .spawn(move || {
                let _finished = finished;
                let mut ready = Vec::new();
                loop {
                    match poller.wait(None, &mut ready) {
                        Ok(()) => {}
                        Err(e) => {
                            // Transient (out of memory, say): the name must stay held while
                            // the pair lives, so wait a moment and look again.
                            tracing::debug!(error = %e, "the duplex busy responder could not wait");
                            std::thread::sleep(Duration::from_millis(10));
                            // Unless we are being dropped (the listener is gone).
                            let dropped = shared
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .is_none();
                            if dropped {
                                return;
                            }
                            continue;
                        }
                    }
                    if ready.iter().any(|r| r.token == STOP) {
                        return;
                    }
                    loop {
                        let accepted = {
                            let guard = shared.lock().unwrap_or_else(PoisonError::into_inner);
                            match guard.as_ref() {
                                Some(listener) => socket::accept(listener),
                                None => return,
                            }
                        };
                        // The lock is released: closing `connection` below may block (a
                        // descriptor the caller passed), but never holds up a drop.
                        let connection = match accepted {
                            Ok(connection) => connection,
                            Err(Errno::INTR | Errno::CONNABORTED | Errno::PROTO) => continue,
                            Err(Errno::AGAIN) => break,
                            Err(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM) => {
                                // The caller stays queued; do not spin on it.
                                tracing::warn!(
                                    "out of descriptors or memory; the duplex busy responder pauses"
                                );
                                std::thread::sleep(Duration::from_millis(10));
                                break;
                            }
                            Err(Errno::BADF | Errno::INVAL | Errno::NOTSOCK | Errno::OPNOTSUPP) => {
                                // The listener was shut down: we are being dropped.
                                return;
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "a caller could not be accepted");
                                continue;
                            }
                        };
                        let admitted = socket::peer_credentials(&connection)
                            .is_ok_and(|peer| gate.admits(&connection, peer));
                        let reply = if admitted { &answer } else { &gate.refusal };
                        // Never blocks: a caller that does not read loses only its answer.
                        let _ = socket::send_message(&connection, reply, &[]);
                    }
                }
            })
            .map_err(|_| Errno::AGAIN)?;
        Ok(Responder {
            stop,
            listener,
            done: Mutex::new(done),
            thread: Some(thread),
        })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = notify::ring(&*self.stop);
        // Free the name from this thread, whatever the responder thread is doing: it holds the
        // lock only around a non-blocking accept.
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(listener) = listener {
            let _ = socket::shut_down(&listener);
            drop(listener);
        }
        if let Some(thread) = self.thread.take() {
            let done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
            match done.recv_timeout(Self::JOIN_WAIT) {
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Stuck closing a caller's connection: leave it (it owns nothing we need).
                    tracing::debug!(
                        "the duplex busy responder is still closing a connection; leaving it"
                    );
                }
                _ => {
                    let _ = thread.join();
                }
            }
        }
    }
}
