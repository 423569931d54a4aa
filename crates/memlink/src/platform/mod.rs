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
//! processes agree on ([`clock`]); with the `tokio` feature, registering descriptors with tokio's
//! reactor ([`reactor`]). It may use only `rustix`, `libc` and
//! `std`; nothing above it issues syscalls or dereferences raw pointers (the crate root denies
//! `unsafe` outside this module).
//!
//! Functions here return raw [`rustix::io::Errno`] values; the layers above know what was being
//! attempted and turn them into actionable [`crate::Error`]s.
#![allow(unsafe_code)]

pub(crate) mod clock;
pub(crate) mod cpu;
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
