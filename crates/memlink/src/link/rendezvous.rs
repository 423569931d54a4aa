//! Finding each other on a name: binding it (atomic: of two binders exactly one succeeds), the
//! accepting side's callers (credentials checked before anything is read from them, then a hello
//! within a bounded time), and a responder thread that answers every later caller with a fixed
//! welcome (a duplex pair's `Busy`). Sockets and descriptors stay in here and in `platform`.

use std::os::fd::OwnedFd;
use std::sync::Arc;
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
        Ok((listener, _)) => Ok(Some(listener)),
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
/// admits, its refusal to the others) from its own thread, until dropped; dropping it stops and
/// joins the thread, which closes the listener and frees the name.
#[derive(Debug)]
pub(crate) struct Responder {
    stop: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
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
        let thread = std::thread::Builder::new()
            .name("memlink-responder".into())
            .spawn(move || {
                let mut ready = Vec::new();
                loop {
                    if poller.wait(None, &mut ready).is_err()
                        || ready.iter().any(|r| r.token == STOP)
                    {
                        return;
                    }
                    loop {
                        let connection = match socket::accept(&listener) {
                            Ok(connection) => connection,
                            Err(Errno::INTR | Errno::CONNABORTED | Errno::PROTO) => continue,
                            Err(_) => break,
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
            thread: Some(thread),
        })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = notify::ring(&*self.stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
