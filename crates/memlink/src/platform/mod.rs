//! Platform layer: every system call and every raw pointer in memlink lives here.
//!
//! Owns: tmpfs object files and their owner locks ([`shm`]), sealed anonymous memory ([`memfd`]),
//! memory mappings and the raw byte and atomic access to them ([`mapping`]), futex wait/wake
//! ([`futex`]), OFD byte locks at any offset, the file behind a mapping and fork detection
//! ([`file_lock`]), eventfd/poll/epoll wake-ups ([`notify`]), abstract Unix sockets with descriptor
//! passing and peer credentials ([`socket`]), who holds an abstract socket name, asked of the
//! kernel without connecting to it ([`sock_diag`]), CPU identity ([`cpu`]), process identity and
//! liveness ([`process`]), starting a program detached from us with its error output captured
//! ([`spawn`]), unpredictable numbers ([`random`]) and the monotonic clock as a number other
//! processes agree on ([`clock`]), asymmetric memory barriers ([`barrier`]), and a value one
//! thread at a time may hold, given back with a plain store ([`exclusive`]); with the `tokio`
//! feature, registering descriptors with tokio's reactor ([`reactor`]). It may use only `rustix`,
//! `libc` and `std`; nothing above it issues syscalls or dereferences raw pointers (the crate
//! root denies `unsafe` outside this module).
//!
//! Functions here return raw [`rustix::io::Errno`] values; the layers above know what was being
//! attempted and turn them into actionable [`crate::Error`]s.
#![allow(unsafe_code)]

pub(crate) mod barrier;
pub(crate) mod clock;
pub(crate) mod cpu;
pub(crate) mod exclusive;
pub(crate) mod file_lock;
pub(crate) mod futex;
pub(crate) mod mapping;
pub(crate) mod memfd;
pub(crate) mod notify;
pub(crate) mod process;
pub(crate) mod random;
#[cfg(feature = "tokio")]
pub(crate) mod reactor;
pub(crate) mod shm;
pub(crate) mod sock_diag;
pub(crate) mod socket;
pub(crate) mod spawn;

/// Whether a failed `read`, `recvmsg` or the like says nothing about the other end: interrupted
/// (`EINTR`), nothing there yet (`EAGAIN`), or the kernel short of memory for the moment
/// (`ENOMEM`, `ENOBUFS`). Only other errors (and end of file) mean the other end is gone: a
/// connection taken for dead on a transient error would be dropped, and its call given up on,
/// while the peer lives.
pub(crate) fn is_transient(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    matches!(e, Errno::AGAIN | Errno::INTR | Errno::NOMEM | Errno::NOBUFS)
}
