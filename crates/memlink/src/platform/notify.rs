//! Wake-ups that are file descriptors: eventfd doorbells private to one process, wake-up pipes
//! between two processes, `poll` for one waiter, `epoll` for many.
//!
//! Waking through an fd (rather than a bare futex) lets a sleeper wait for "data arrived" and
//! "peer died" (its socket hung up) in one call, and lets an async runtime watch the same fd later.
//!
//! An eventfd is never handed to another process: its `O_NONBLOCK` flag and its counter belong to
//! the one open file description both would share, so a peer holding it could make our `write`
//! block or read away our wake-ups. Between processes each direction of a connection has its own
//! pipe ([`wake_pipe`]): the two ends of a pipe are two open file descriptions, so the peer's
//! flags on its end never reach ours, only the peer can read what we write to it, a pipe cannot
//! carry descriptors, and closing one never blocks. Where an end cannot be reopened privately
//! ([`private_wake_end`]: a peer of another user), its reads and writes pass `RWF_NOWAIT`, so
//! that none blocks even though the peer shares its description. A wake-up costs a `write` and a
//! `read` of one byte (about 0.5 µs together here, against 1.5 µs for a message on a Unix
//! socket).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags, epoll};
use rustix::io::{Errno, ReadWriteFlags};

fn timespec(timeout: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(timeout.subsec_nanos()),
    }
}

/// A non-blocking eventfd used as a doorbell between threads of this process.
pub(crate) fn doorbell() -> Result<OwnedFd, Errno> {
    rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
}

/// A pipe for wake-ups in one direction of a connection: `(read end, write end)`, both
/// non-blocking and close-on-exec, its buffer shrunk to one page (it only ever holds a few bytes).
pub(crate) fn wake_pipe() -> Result<(OwnedFd, OwnedFd), Errno> {
    let (read, write) = rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
    )?;
    let _ = rustix::pipe::fcntl_setpipe_size(&write, 4096);
    set_shared(read.as_fd(), false);
    set_shared(write.as_fd(), false);
    Ok((read, write))
}

/// A private open file description of the wake pipe end `received` (which a peer passed us and
/// may also hold): checks that it is a pipe end opened for writing (`writable`) or reading, then
/// reopens it through `/proc/self/fd` non-blocking, so that the peer's `fcntl`s on its copy never
/// reach ours. Where that cannot be done (no `/proc`, or the pipe belongs to another user, whose
/// pipes we may not open by path), the received end is used as it is, made non-blocking; the
/// peer may make it blocking again, but no read or write of ours waits on that (they pass
/// `RWF_NOWAIT`: see [`SHARED_ENDS`]), on kernels whose pipes take the flag, where an end that is
/// not an anonymous pipe's (a named FIFO, which does not take it) is refused (`EOPNOTSUPP`).
pub(crate) fn private_wake_end(received: &OwnedFd, writable: bool) -> Result<OwnedFd, Errno> {
    let stat = rustix::fs::fstat(received)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Fifo {
        return Err(Errno::BADFD);
    }
    let access = rustix::fs::fcntl_getfl(received)? & rustix::fs::OFlags::RWMODE;
    let wanted = if writable {
        rustix::fs::OFlags::WRONLY
    } else {
        rustix::fs::OFlags::RDONLY
    };
    if access != wanted {
        return Err(Errno::BADF);
    }
    let path = format!("/proc/self/fd/{}", received.as_fd().as_raw_fd());
    let reopened = if reopen_received_ends() {
        rustix::fs::open(
            path.as_str(),
            wanted | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
    } else {
        Err(Errno::ACCESS)
    };
    match reopened {
        Ok(own) => {
            set_shared(own.as_fd(), false);
            Ok(own)
        }
        Err(Errno::NOENT | Errno::ACCESS | Errno::PERM) => {
            // Shared with the peer: only `RWF_NOWAIT` keeps our reads and writes from blocking,
            // and a named FIFO (which a peer could pass) does not take it. Where the kernel's
            // pipes do not either, nothing better can be done than what it always was.
            let facts = pipe_facts();
            if facts.nowait && facts.pipefs != Some(stat.st_dev) {
                return Err(Errno::OPNOTSUPP);
            }
            // An anonymous pipe's end that the peer opened by path (`/proc/PID/fd/N`) is on the
            // pipe file system too, yet refuses `RWF_NOWAIT` like a named FIFO: ask the end
            // itself. (The probe may take a wake-up byte or add one: both are only hints.)
            if facts.nowait && !takes_nowait(received, writable) {
                return Err(Errno::OPNOTSUPP);
            }
            rustix::fs::fcntl_setfl(received, access | rustix::fs::OFlags::NONBLOCK)?;
            let own = received
                .try_clone()
                .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
            set_shared(own.as_fd(), true);
            Ok(own)
        }
        Err(e) => Err(e),
    }
}

/// Fault injection: whether [`private_wake_end`] tries to reopen received ends (see
/// `crate::__use_received_wake_ends`).
#[cfg(feature = "fault-injection")]
pub(crate) static USE_RECEIVED_ENDS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

fn reopen_received_ends() -> bool {
    #[cfg(feature = "fault-injection")]
    if USE_RECEIVED_ENDS.load(Ordering::Relaxed) {
        return false;
    }
    true
}

/// What a [`wake`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The byte is in the pipe.
    Sent,
    /// The pipe is full: the peer has not read its earlier wake-ups, so it is woken already.
    Full,
    /// Nobody reads the pipe any more (the peer closed its end or died), or the write failed
    /// for good.
    Gone,
    /// The kernel stayed short of memory (`ENOMEM`, `ENOBUFS`) through [`WAKE_TRIES`] tries:
    /// the wake-up is lost, and a parked peer sleeps until it looks again on its own.
    Lost(Errno),
}

/// How many times [`wake`] writes its byte while the kernel is short of memory, pausing
/// [`WAKE_RETRY_PAUSE`] between tries; an interrupted write is retried at once (and counts too,
/// so that a storm of signals cannot hold the waker).
pub(crate) const WAKE_TRIES: u32 = 8;
const WAKE_RETRY_PAUSE: Duration = Duration::from_micros(100);

/// Wake pipe ends, by descriptor number, whose open file description a peer may share (those
/// [`private_wake_end`] could not reopen, and their duplicates): a bit per descriptor, set or
/// cleared wherever memlink makes a wake pipe end ([`wake_pipe`], [`private_wake_end`],
/// [`duplicate_wake_end`]), so that a number reused for another end never keeps a stale bit.
/// Their reads and writes pass `RWF_NOWAIT`: the peer may have made the description blocking.
/// Every other end is ours alone and non-blocking, and a plain `read` or `write` of it costs one
/// system call (`RWF_NOWAIT` would cost a second: a pipe end reopened through `/proc` refuses
/// it). Descriptors beyond the table count as shared.
static SHARED_ENDS: [AtomicU64; SHARED_ENDS_TRACKED / 64] =
    [const { AtomicU64::new(0) }; SHARED_ENDS_TRACKED / 64];
const SHARED_ENDS_TRACKED: usize = 1 << 16;

fn set_shared(fd: BorrowedFd<'_>, shared: bool) {
    let Ok(n) = usize::try_from(fd.as_raw_fd()) else {
        return;
    };
    if let Some(word) = SHARED_ENDS.get(n / 64) {
        let bit = 1u64 << (n % 64);
        // Relaxed: the end is handed to whoever uses it after this, through what synchronises
        // that hand-over.
        if shared {
            word.fetch_or(bit, Ordering::Relaxed);
        } else {
            word.fetch_and(!bit, Ordering::Relaxed);
        }
    }
}

fn is_shared(fd: BorrowedFd<'_>) -> bool {
    let Ok(n) = usize::try_from(fd.as_raw_fd()) else {
        return true;
    };
    SHARED_ENDS
        .get(n / 64)
        .is_none_or(|word| word.load(Ordering::Relaxed) & (1 << (n % 64)) != 0)
}

/// What this kernel does with pipes, found once on a pipe of our own.
struct PipeFacts {
    /// Its pipes take `RWF_NOWAIT` on reads and writes (Linux has for years; not a pipe end
    /// opened by path, which is why a reopened end is read plainly).
    nowait: bool,
    /// The device of the kernel's pipe file system: an anonymous pipe's end, not a named FIFO.
    pipefs: Option<u64>,
}

fn pipe_facts() -> &'static PipeFacts {
    static FACTS: OnceLock<PipeFacts> = OnceLock::new();
    FACTS.get_or_init(|| {
        let flags = rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK;
        let Ok((read, write)) = rustix::pipe::pipe_with(flags) else {
            return PipeFacts {
                nowait: false,
                pipefs: None,
            };
        };
        let mut byte = [0u8; 1];
        let reads = rustix::io::preadv2(
            &read,
            &mut [IoSliceMut::new(&mut byte)],
            u64::MAX,
            ReadWriteFlags::NOWAIT,
        ) == Err(Errno::AGAIN);
        let writes = rustix::io::pwritev2(
            &write,
            &[IoSlice::new(&[1])],
            u64::MAX,
            ReadWriteFlags::NOWAIT,
        ) == Ok(1);
        PipeFacts {
            nowait: reads && writes,
            pipefs: rustix::fs::fstat(&read).ok().map(|stat| stat.st_dev),
        }
    })
}

/// Whether the pipe end `end` takes `RWF_NOWAIT` (tried with a one-byte read or write).
fn takes_nowait(end: &OwnedFd, writable: bool) -> bool {
    let result = if writable {
        rustix::io::pwritev2(end, &[IoSlice::new(&[1])], u64::MAX, ReadWriteFlags::NOWAIT)
    } else {
        let mut byte = [0u8; 1];
        rustix::io::preadv2(
            end,
            &mut [IoSliceMut::new(&mut byte)],
            u64::MAX,
            ReadWriteFlags::NOWAIT,
        )
    };
    !matches!(result, Err(e) if nowait_refused(e))
}

/// Whether `e` says that the kernel does not take `RWF_NOWAIT` on this file.
fn nowait_refused(e: Errno) -> bool {
    matches!(e, Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS)
}

/// Reads from a wake pipe without ever blocking: a plain `read` of an end that is ours alone
/// (non-blocking), `RWF_NOWAIT` on one whose description a peer shares and may have made
/// blocking (see [`SHARED_ENDS`]).
fn read_wake_pipe(read_end: impl AsFd, buf: &mut [u8]) -> Result<usize, Errno> {
    if is_shared(read_end.as_fd()) && pipe_facts().nowait {
        let mut bufs = [IoSliceMut::new(buf)];
        // `u64::MAX`: no offset (a pipe has none).
        match rustix::io::preadv2(&read_end, &mut bufs, u64::MAX, ReadWriteFlags::NOWAIT) {
            // Not shared after all (a number beyond the table, reopened): ours, non-blocking.
            Err(e) if nowait_refused(e) => {}
            result => return result,
        }
    }
    rustix::io::read(read_end, buf)
}

/// The wake-up byte's `write`, never blocking (as [`read_wake_pipe`]); the one place a test can
/// make it fail.
fn write_wake(write_end: impl AsFd) -> Result<usize, Errno> {
    #[cfg(test)]
    if let Some(e) = inject::take() {
        return Err(e);
    }
    if is_shared(write_end.as_fd()) && pipe_facts().nowait {
        let bufs = [IoSlice::new(&[1])];
        match rustix::io::pwritev2(&write_end, &bufs, u64::MAX, ReadWriteFlags::NOWAIT) {
            Err(e) if nowait_refused(e) => {}
            result => return result,
        }
    }
    rustix::io::write(write_end, &[1])
}

/// A duplicate of the wake pipe end `end` (sharing its description), known for shared as `end`
/// is (see [`SHARED_ENDS`]). Used by the async waits' reactor registrations.
#[cfg(any(feature = "tokio", test))]
pub(crate) fn duplicate_wake_end(end: &OwnedFd) -> std::io::Result<OwnedFd> {
    let copy = end.try_clone()?;
    set_shared(copy.as_fd(), is_shared(end.as_fd()));
    Ok(copy)
}

/// `poll`: the one place a test can make it fail.
fn poll_fds(
    fds: &mut [PollFd<'_>],
    timeout: Option<&rustix::time::Timespec>,
) -> Result<usize, Errno> {
    #[cfg(test)]
    if let Some(e) = inject::take() {
        return Err(e);
    }
    rustix::event::poll(fds, timeout)
}

/// Test-only failures of the next system calls of [`wake`] and [`wait_wake_hangup_or_bell`] on
/// this thread.
#[cfg(test)]
pub(crate) mod inject {
    use std::cell::Cell;

    use rustix::io::Errno;

    thread_local! {
        static FAILURES: Cell<(Errno, u32)> = const { Cell::new((Errno::IO, 0)) };
    }

    /// Makes the next `count` calls fail with `error`.
    pub(crate) fn fail_next(error: Errno, count: u32) {
        FAILURES.with(|f| f.set((error, count)));
    }

    pub(super) fn take() -> Option<Errno> {
        FAILURES.with(|f| {
            let (error, count) = f.get();
            (count > 0).then(|| {
                f.set((error, count - 1));
                error
            })
        })
    }
}

/// Sends one wake-up byte down a wake pipe, never blocking (our end is non-blocking, or the write
/// passes `RWF_NOWAIT`: see [`SHARED_ENDS`]) and never raising `SIGPIPE`.
///
/// An interrupted write is tried again at once, one that found the kernel short of memory after
/// a moment, [`WAKE_TRIES`] times in all: a wake-up given up for that is [`Wake::Lost`], not
/// [`Wake::Gone`] (the peer lives, and its own next look finds our progress).
///
/// A `write` to a pipe without readers raises `SIGPIPE`, which kills a process that has not
/// ignored it (the default outside Rust's `main`: C or Python hosts, or tools that restore it).
/// So the signal is blocked for this thread around the write, and a `SIGPIPE` the write raised is
/// consumed before the mask is restored. That costs a few system calls, on the wake-up path only,
/// where the sleeper's own wake-up costs microseconds anyway.
pub(crate) fn wake(write_end: impl AsFd) -> Wake {
    let mut pipe_only = MaybeUninit::<libc::sigset_t>::uninit();
    let mut previous = MaybeUninit::<libc::sigset_t>::uninit();
    let mut pending = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: `sigemptyset` writes only into `pipe_only`, a live, writable `sigset_t`.
    unsafe { libc::sigemptyset(pipe_only.as_mut_ptr()) };
    // SAFETY: as above; the set was initialised by `sigemptyset`.
    unsafe { libc::sigaddset(pipe_only.as_mut_ptr(), libc::SIGPIPE) };
    // SAFETY: `sigemptyset` initialised every byte of the set.
    let pipe_only = unsafe { pipe_only.assume_init() };
    // The thread's previous mask is written to `previous`, which is then initialised.
    let block = libc::SIG_BLOCK;
    // SAFETY: `pipe_only` is an initialised set; `previous` is live and writable.
    let rc = unsafe { libc::pthread_sigmask(block, &pipe_only, previous.as_mut_ptr()) };
    let blocked = rc == 0;
    // A `SIGPIPE` already pending was raised by someone else: it must stay pending.
    // SAFETY: `sigpending` writes the pending set into `pending`, live and writable.
    let got_pending = unsafe { libc::sigpending(pending.as_mut_ptr()) } == 0;
    let already_pending = got_pending
        // SAFETY: `pending` was initialised by the successful `sigpending` (checked first).
        && unsafe { libc::sigismember(pending.as_ptr(), libc::SIGPIPE) } == 1;
    let mut tries = 1;
    let result = loop {
        match write_wake(&write_end) {
            Err(e @ (Errno::INTR | Errno::NOMEM | Errno::NOBUFS)) if tries < WAKE_TRIES => {
                tries += 1;
                if e != Errno::INTR {
                    std::thread::sleep(WAKE_RETRY_PAUSE);
                }
            }
            result => break result,
        }
    };
    if blocked {
        if result == Err(Errno::PIPE) && !already_pending {
            let now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // Consumes the `SIGPIPE` our write raised (zero timeout: it is pending now, if at
            // all). SAFETY: `pipe_only` and `now` are initialised; the info pointer may be null.
            unsafe { libc::sigtimedwait(&pipe_only, std::ptr::null_mut(), &now) };
        }
        // `previous` was initialised by the successful `pthread_sigmask` above.
        // SAFETY: restores the mask saved in `previous`; the old-mask pointer may be null.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, previous.as_ptr(), std::ptr::null_mut())
        };
    }
    match result {
        Ok(_) => Wake::Sent,
        Err(Errno::AGAIN) => Wake::Full,
        Err(e @ (Errno::INTR | Errno::NOMEM | Errno::NOBUFS)) => Wake::Lost(e),
        Err(_) => Wake::Gone,
    }
}

/// The buffer size of the pipe behind `fd` (the peer can change it on its end).
pub(crate) fn pipe_size(fd: impl AsFd) -> Result<usize, Errno> {
    rustix::pipe::fcntl_getpipe_size(fd)
}

/// Consumes the wake-ups waiting in a wake pipe (up to 64, in one read that never blocks);
/// `true` if the pipe's other end is gone (every writer closed it: the peer exited or hung up).
/// A transient error ([`super::is_transient`]) is not that.
pub(crate) fn drain_wakes(read_end: impl AsFd) -> bool {
    let mut buf = [0u8; 64];
    match read_wake_pipe(read_end, &mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !super::is_transient(e),
    }
}

/// What [`drain_some_wakes`] found.
#[cfg(feature = "tokio")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drained {
    /// The pipe was read empty (whatever it held is consumed).
    Empty,
    /// Every read came back full: more may be waiting. A peer waking us as the protocol says
    /// writes a byte per sleep of ours, so this is one writing far more on purpose.
    Full,
    /// Every writer is gone (the peer exited or closed its end), or the read failed for good.
    Gone,
    /// The kernel is short of memory for the moment ([`super::is_transient`]): nothing is said
    /// about the peer, and the pipe stays readable.
    NotNow,
}

/// Bytes one read of [`drain_some_wakes`] takes.
#[cfg(feature = "tokio")]
const DRAIN_READ: usize = 4096;
/// Reads one [`drain_some_wakes`] makes at most.
#[cfg(feature = "tokio")]
const DRAIN_READS: usize = 2;

/// Consumes the wake-ups waiting in a wake pipe, for a waiter on an edge-triggered poller
/// (tokio's reactor, which hears of a pipe again only after it was read empty): reads until a
/// read comes back short, but at most [`DRAIN_READS`] reads of [`DRAIN_READ`] bytes, none of
/// which blocks, so that a peer writing faster than we read cannot hold the caller here. On
/// [`Drained::Full`] the caller leaves the pipe marked readable and reads on at its next turn.
#[cfg(feature = "tokio")]
pub(crate) fn drain_some_wakes(read_end: impl AsFd) -> Drained {
    let mut buf = [0u8; DRAIN_READ];
    for _ in 0..DRAIN_READS {
        match read_wake_pipe(&read_end, &mut buf) {
            Ok(0) => return Drained::Gone,
            Ok(n) if n < buf.len() => return Drained::Empty,
            // An interrupted read counts as one: a storm of signals cannot hold us either.
            Ok(_) | Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Drained::Empty,
            Err(e) if super::is_transient(e) => return Drained::NotNow,
            Err(_) => return Drained::Gone,
        }
    }
    Drained::Full
}

/// What woke a [`wait_wake_or_hangup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Woken {
    /// The wake pipe is readable (or its writer is gone).
    pub(crate) wake: bool,
    /// The connection's socket has something to read (after the handshake only a goodbye travels
    /// on it) or has hung up.
    pub(crate) socket: bool,
    /// The connection's socket has hung up: the peer closed it or died.
    pub(crate) hung_up: bool,
    /// The caller's own doorbell rang (see [`wait_wake_hangup_or_bell`]).
    pub(crate) bell: bool,
}

/// How long a waiter pauses after `poll` failed for want of kernel memory, before it looks again.
const POLL_RETRY_PAUSE: Duration = Duration::from_millis(1);

/// Sleeps until a wake-up arrives on `wake_read`, `socket` hangs up or has a message, or `timeout`
/// passes. May return with nothing woken (a spurious wake-up), which every caller handles by
/// looking again: after a signal interrupted the wait, at once; after the kernel was short of
/// memory for it (`ENOMEM`, `EAGAIN`; [`super::is_transient`]), after a moment's pause. Either
/// way the caller waits again with the time it has left, instead of taking the connection for
/// broken.
pub(crate) fn wait_wake_or_hangup(
    wake_read: impl AsFd,
    socket: impl AsFd,
    timeout: Option<Duration>,
) -> Result<Woken, Errno> {
    wait_wake_hangup_or_bell(wake_read, socket, None::<OwnedFd>, timeout)
}

/// As [`wait_wake_or_hangup`], also waking when the doorbell `bell` (if any) rings; a rung bell
/// shows as `wake` (it is left ringing: the caller's own state says why it rang).
pub(crate) fn wait_wake_hangup_or_bell(
    wake_read: impl AsFd,
    socket: impl AsFd,
    bell: Option<impl AsFd>,
    timeout: Option<Duration>,
) -> Result<Woken, Errno> {
    // Without a bell the third entry is a placeholder that is not polled.
    let mut fds = [
        PollFd::new(&wake_read, PollFlags::IN),
        PollFd::new(&socket, PollFlags::IN | PollFlags::RDHUP),
        match &bell {
            Some(bell) => PollFd::new(bell, PollFlags::IN),
            None => PollFd::new(&wake_read, PollFlags::empty()),
        },
    ];
    let polled = if bell.is_some() { 3 } else { 2 };
    let ts = timeout.map(timespec);
    match poll_fds(&mut fds[..polled], ts.as_ref()) {
        Ok(_) => {}
        Err(Errno::INTR) => return Ok(Woken::default()),
        Err(e) if super::is_transient(e) => {
            let pause = timeout.map_or(POLL_RETRY_PAUSE, |t| t.min(POLL_RETRY_PAUSE));
            std::thread::sleep(pause);
            return Ok(Woken::default());
        }
        Err(e) => return Err(e),
    }
    let hangup = PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR;
    Ok(Woken {
        wake: !fds[0].revents().is_empty(),
        socket: !fds[1].revents().is_empty(),
        hung_up: fds[1].revents().intersects(hangup),
        bell: polled == 3 && !fds[2].revents().is_empty(),
    })
}

/// Rings a doorbell. Safe to call from a signal handler (one `write`, no allocation, no lock).
pub(crate) fn ring(doorbell: impl AsFd) -> Result<(), Errno> {
    match rustix::io::write(doorbell, &1u64.to_ne_bytes()) {
        Ok(_) | Err(Errno::AGAIN) => Ok(()), // AGAIN: counter saturated, it is ringing anyway
        Err(e) => Err(e),
    }
}

/// Resets a doorbell so that it stops being readable.
pub(crate) fn silence(doorbell: impl AsFd) {
    let mut buf = [0u8; 8];
    let _ = rustix::io::read(doorbell, &mut buf);
}

/// An epoll set whose entries carry a `u64` token.
pub(crate) struct Poller {
    epoll: OwnedFd,
    events: Vec<epoll::Event>,
}

// SAFETY: `epoll::Event` is `!Send` only because its data union can hold a pointer. We only ever
// store `u64` tokens in it and never dereference anything it holds; the epoll fd itself may be
// used from any thread.
unsafe impl Send for Poller {}

/// One readiness report from [`Poller::wait`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ready {
    pub(crate) token: u64,
    pub(crate) hung_up: bool,
}

impl Poller {
    pub(crate) fn new() -> Result<Self, Errno> {
        Ok(Poller {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            events: Vec::with_capacity(64),
        })
    }

    /// Watches `fd` for readability and hang-up (level-triggered).
    pub(crate) fn add(&self, fd: impl AsFd, token: u64) -> Result<(), Errno> {
        let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
        epoll::add(&self.epoll, fd, epoll::EventData::new_u64(token), flags)
    }

    /// Watches `fd` for hang-up only (`EPOLLRDHUP`; `EPOLLHUP` and `EPOLLERR` always count), so
    /// that bytes a peer writes to it can never make us spin.
    pub(crate) fn add_hangup(&self, fd: impl AsFd, token: u64) -> Result<(), Errno> {
        epoll::add(
            &self.epoll,
            fd,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::RDHUP,
        )
    }

    pub(crate) fn remove(&self, fd: impl AsFd) -> Result<(), Errno> {
        epoll::delete(&self.epoll, fd)
    }

    /// Waits up to `timeout` (`None`: forever) and returns what became ready.
    pub(crate) fn wait(
        &mut self,
        timeout: Option<Duration>,
        ready: &mut Vec<Ready>,
    ) -> Result<(), Errno> {
        ready.clear();
        self.events.clear();
        let ts = timeout.map(timespec);
        match epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut self.events),
            ts.as_ref(),
        ) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
        let hangup = epoll::EventFlags::RDHUP | epoll::EventFlags::HUP | epoll::EventFlags::ERR;
        ready.extend(self.events.iter().map(|e| {
            let (data, flags) = (e.data, e.flags); // copies: the struct is packed
            Ready {
                token: data.u64(),
                hung_up: flags.intersects(hangup),
            }
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe_holds(read: &OwnedFd) -> usize {
        let mut buf = [0u8; 64];
        rustix::io::read(read, &mut buf).unwrap_or(0)
    }

    #[test]
    fn a_wake_up_survives_interruptions_and_a_moments_memory_shortage() {
        let (read, write) = wake_pipe().unwrap();
        for error in [Errno::INTR, Errno::NOMEM, Errno::NOBUFS] {
            inject::fail_next(error, WAKE_TRIES - 1);
            assert_eq!(wake(&write), Wake::Sent, "{error:?}");
            assert_eq!(pipe_holds(&read), 1, "{error:?}");
        }
        // A shortage that lasts is reported as such, not as a peer gone.
        inject::fail_next(Errno::NOMEM, WAKE_TRIES);
        assert_eq!(wake(&write), Wake::Lost(Errno::NOMEM));
        // A reader gone is.
        drop(read);
        assert_eq!(wake(&write), Wake::Gone);
    }

    /// Runs `f` on a thread of its own, failing the test if it blocks.
    fn without_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a wake pipe read or write blocked")
    }

    /// What a peer sharing the description of `fd` can do to it (see `private_wake_end`).
    fn share_and_make_blocking(fd: &OwnedFd) {
        set_shared(fd.as_fd(), true);
        let flags = rustix::fs::fcntl_getfl(fd).unwrap();
        rustix::fs::fcntl_setfl(fd, flags - rustix::fs::OFlags::NONBLOCK).unwrap();
    }

    #[test]
    fn received_ends_are_reopened_privately_or_known_as_shared() {
        let (read, write) = wake_pipe().unwrap();
        assert!(!is_shared(read.as_fd()) && !is_shared(write.as_fd()));
        let own = private_wake_end(&read, false).unwrap();
        assert!(!is_shared(own.as_fd()));
        assert_eq!(
            private_wake_end(&read, true).err(),
            Some(Errno::BADF),
            "wrong way round"
        );
        let copy = duplicate_wake_end(&own).unwrap();
        assert!(!is_shared(copy.as_fd()));
        set_shared(own.as_fd(), true);
        assert!(is_shared(duplicate_wake_end(&own).unwrap().as_fd()));
        // A reopened end refuses `RWF_NOWAIT`; one taken for shared by mistake is still read.
        assert_eq!(rustix::io::write(&write, &[1]), Ok(1));
        assert!(!drain_wakes(&own));
        assert_eq!(read_wake_pipe(&own, &mut [0u8; 8]), Err(Errno::AGAIN));
    }

    /// A peer sharing our end's open file description (a peer of another user: see
    /// `private_wake_end`) can make it blocking; our reads and writes of it still never block.
    #[test]
    fn wake_pipe_ends_made_blocking_by_a_peer_never_block_us() {
        let (read, write) = wake_pipe().unwrap();
        share_and_make_blocking(&read);
        share_and_make_blocking(&write);
        without_blocking(move || {
            assert!(!drain_wakes(&read), "an empty pipe is not a hang-up");
            // Full: the wake-up says so instead of waiting for room.
            let size = pipe_size(&write).unwrap();
            assert_eq!(rustix::io::write(&write, &vec![0u8; size]), Ok(size));
            assert_eq!(wake(&write), Wake::Full);
            let mut left = size;
            while left > 0 {
                left -= read_wake_pipe(&read, &mut [0u8; 512]).unwrap();
            }
            // Empty again: a blocking read would wait here.
            assert!(!drain_wakes(&read));
            drop(write);
            assert!(drain_wakes(&read), "every writer gone is a hang-up");
        });
    }

    /// A peer writing faster than we read cannot hold a reader for the reactor: two reads at
    /// most per call, and `Full` says more may be there.
    #[cfg(feature = "tokio")]
    #[test]
    fn draining_for_the_reactor_reads_a_bounded_amount() {
        let (read, write) = wake_pipe().unwrap();
        rustix::pipe::fcntl_setpipe_size(&write, 64 << 10).unwrap();
        let filled = rustix::io::write(&write, &[1u8; 3 * DRAIN_READ]).unwrap();
        assert_eq!(filled, 3 * DRAIN_READ);
        assert_eq!(drain_some_wakes(&read), Drained::Full);
        assert_eq!(drain_some_wakes(&read), Drained::Empty);
        assert_eq!(drain_some_wakes(&read), Drained::Empty);
        // Exactly one read's worth, on an end a peer made blocking: the first read comes back
        // full, the second finds the pipe empty and says so instead of waiting.
        share_and_make_blocking(&read);
        assert_eq!(
            rustix::io::write(&write, &[1u8; DRAIN_READ]),
            Ok(DRAIN_READ)
        );
        let read = without_blocking(move || {
            assert_eq!(drain_some_wakes(&read), Drained::Empty);
            read
        });
        drop(write);
        assert_eq!(drain_some_wakes(&read), Drained::Gone);
    }

    #[test]
    fn a_wait_that_fails_for_want_of_memory_or_a_signal_is_a_spurious_wake_up() {
        let (read, write) = wake_pipe().unwrap();
        let (socket, _peer) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        for error in [Errno::INTR, Errno::NOMEM, Errno::NOBUFS, Errno::AGAIN] {
            inject::fail_next(error, 1);
            let woken = wait_wake_or_hangup(&read, &socket, Some(Duration::from_secs(10)));
            assert_eq!(woken, Ok(Woken::default()), "{error:?}");
        }
        // And the next wait works as ever.
        assert_eq!(wake(&write), Wake::Sent);
        let woken = wait_wake_or_hangup(&read, &socket, Some(Duration::from_secs(10))).unwrap();
        assert!(woken.wake && !woken.hung_up);
        // Other errors are errors.
        inject::fail_next(Errno::INVAL, 1);
        assert_eq!(
            wait_wake_or_hangup(&read, &socket, Some(Duration::ZERO)),
            Err(Errno::INVAL)
        );
    }
}
