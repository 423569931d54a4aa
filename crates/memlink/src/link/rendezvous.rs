//! Finding each other on a name: binding it (atomic: of two binders exactly one succeeds), the
//! accepting side's callers (credentials checked before anything is read from them, then a hello
//! within a bounded time), and a responder thread that answers every later caller with a fixed
//! welcome (a duplex pair's `Busy`). Sockets and descriptors stay in here and in `platform`.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::io::Errno;

use super::protocol::{Goodbye, Hello, Welcome};
use crate::error::{Error, Result};
use crate::memory::segment::Permissions;
use crate::platform::notify::{self, Poller};
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

/// Waits (until `deadline`; `Ok(None)` then) for the next caller on `listener` that the gate
/// admits and that says a well-formed hello within `hello_timeout`. A caller the gate refuses
/// gets the refusal before anything is read from it; one that stalls or says garbage only loses
/// its own connection.
pub(crate) fn next_caller(
    listener: &OwnedFd,
    deadline: Option<Instant>,
    gate: &Gate,
    hello_timeout: Duration,
) -> Result<Option<Caller>> {
    let poll_error = |e| Error::os("waiting for a memlink peer", e);
    let mut poller = Poller::new().map_err(poll_error)?;
    poller.add(listener, 0).map_err(poll_error)?;
    let mut ready = Vec::new();
    loop {
        let left = match deadline {
            None => None,
            Some(t) => match t.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Ok(None),
            },
        };
        poller.wait(left, &mut ready).map_err(poll_error)?;
        loop {
            let connection = match socket::accept(listener) {
                Ok(connection) => connection,
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR | Errno::CONNABORTED | Errno::PROTO) => continue,
                Err(e) => return Err(Error::os("accepting a memlink peer", e)),
            };
            let Ok(peer) = socket::peer_credentials(&connection) else {
                continue;
            };
            if !gate.admits(&connection, peer) {
                let _ = socket::send_message(&connection, &gate.refusal, &[]);
                continue;
            }
            if socket::set_io_timeout(&connection, hello_timeout).is_err() {
                continue;
            }
            if let Some(hello) = read_hello(&connection) {
                return Ok(Some(Caller {
                    socket: connection,
                    peer,
                    hello,
                }));
            }
        }
    }
}

/// Reads one hello (waiting up to the socket's receive timeout); `None` for anything else.
pub(crate) fn read_hello(connection: &OwnedFd) -> Option<Hello> {
    let mut buf = [0u8; Hello::LEN + 8];
    let (len, _) = socket::receive_message(connection, &mut buf, true).ok()?;
    Hello::decode(&buf[..len]).ok()
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
