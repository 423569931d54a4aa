//! A robust cross-process mutex: when a holder dies, the next locker gets the lock *and* is told.
//!
//! # Why our own futex lock and not a robust pthread mutex
//!
//! A process-shared robust `pthread_mutex_t` gets owner death from the kernel's robust-futex list,
//! which is excellent, but: (1) its bytes are glibc's private ABI, and a peer that writes garbage
//! into them (shared memory is untrusted) can trip glibc assertions or send its robust-list walk
//! through bad pointers — a crash in *our* process, which memlink must never allow; (2) the
//! robust-list head is per-thread and owned by glibc, so we cannot register our own lock words
//! with the kernel beside it; (3) it ties the layout to one libc.
//!
//! # Owners are liveness tokens, not thread ids
//!
//! The lock word is `token | OWNER_DIED (bit 30) | WAITERS (bit 31)`; 0 is free. An uncontended
//! lock is one CAS and an uncontended unlock one CAS, no syscall.
//!
//! A thread id is no good as the owner: a process in another pid namespace (a container sharing
//! `/dev/shm`), or behind `hidepid`, has ids that mean nothing in our `/proc` — a live holder looks
//! dead (two holders at once), or its id names some unrelated task here (a dead holder looks alive).
//! So liveness comes from something the kernel keeps for every process alike: an
//! open-file-description (OFD) lock on the object's own file.
//!
//! - Per object file, each process opens one fresh description of the file (re-opening its own
//!   descriptor through `/proc/self/fd`, found via the mapping's inode in `/proc/self/maps`) and
//!   takes an OFD write lock on one byte at `TOKEN_BASE + token` (`TOKEN_BASE` = 2^40, far above
//!   any real size and away from byte 0, the creator lock). The token, 1..2^30, starts at a random
//!   value and probes onward while another description holds that byte, so no two live processes
//!   ever hold the same token. The process keeps the description (and so the lock) for as long as
//!   any of its `Mutex` handles on that file lives; all its threads share the token.
//! - A blocked locker sleeps in bounded slices (1 ms doubling to 50 ms) and between slices asks
//!   the kernel, with `F_OFD_GETLK` on the holder's byte, whether any description still holds it.
//!   The kernel drops OFD locks when the last descriptor of the description closes — exit,
//!   `SIGKILL`, whatever the namespace — so "unlocked" means the holder process is gone: the
//!   locker takes the lock over and is told (`OwnerDied`). A holder killed with `SIGKILL` is
//!   noticed within ~50 ms, across pid namespaces and `hidepid` alike.
//! - Two live holders are impossible: a token is taken over only when no description holds its
//!   byte, i.e. its process has closed it, which it does only once it has no handles, hence no
//!   guards. A token re-allocated by a new process right after its owner died (chance ~2^-30 per
//!   allocation) can only prolong a wait, never grant the lock twice.
//! - Which *thread* of the process holds the lock is process-local state (a per-thread list of
//!   held locks): it gives [`Error::WouldDeadlock`] on relocking from the holding thread; another
//!   thread of the same process holding it is simply a live owner to wait for.
//! - After `fork` (seen through a `pthread_atfork` counter, one relaxed load per lock) the child
//!   allocates its own token: descriptors, and so OFD locks, are shared with the parent. A guard
//!   that `fork` copied into the child releases nothing there.
//!
//! Costs, accepted: creating or opening a `Mutex` reads `/proc/self/maps` and scans
//! `/proc/self/fd` (once per handle; the description is shared by all handles of the process on
//! that file), so it needs our own `/proc` mounted; each process holds one extra descriptor per
//! object file with live mutex handles; a thread blocked behind a *live* holder for long wakes up to
//! 20 times a second. Ownership is per process: a guard leaked with `mem::forget` by a thread that
//! then exits keeps the lock held until its process drops its handles or exits (with thread ids,
//! the thread's exit freed it). A forked child that keeps its copy of the parent's description
//! open keeps the parent's token alive after the parent dies (a longer wait, never two holders).
//! Any word value is interpretable, so garbage from a peer yields either a normal wait or an
//! owner-died takeover — never a panic; a peer that can write the word can also simply hold the
//! lock, so it can always make us wait (hence [`Mutex::lock_timeout`]).
//!
//! Unlocking is thread-affine (the guard is `!Send`), as the per-thread record of held locks is.

use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{Deadline, Placement, create_named, create_or_open_named, open_named};
use crate::error::{Error, Result};
use crate::memory::header::ObjectKind;
use crate::memory::segment::{Segment, SegmentOptions};
use crate::platform::file_lock::{self, FileId};
use crate::platform::{futex, process};

const TAG: u32 = u32::from_le_bytes(*b"MUTX");
pub(super) const TOKEN_MASK: u32 = 0x3fff_ffff;
const OWNER_DIED: u32 = 0x4000_0000;
pub(super) const WAITERS: u32 = 0x8000_0000;

/// Byte offset of token 0's liveness lock in the object file: far beyond any real object size
/// (OFD locks may lie past the end of a file) and away from byte 0, the creator lock.
const TOKEN_BASE: u64 = 1 << 40;
/// Bytes probed for a free token before giving up (only reachable with ~2^30 live holders, or a
/// peer squatting on the range, which it can only do for processes that open the object).
const TOKEN_PROBES: u32 = 1 << 16;

/// Spin iterations before sleeping: enough to ride out a short critical section on another core,
/// far too few to matter when holder and waiter share one.
const SPIN_LIMIT: u32 = 100;
pub(super) const FIRST_SLICE: Duration = Duration::from_millis(1);
pub(super) const MAX_SLICE: Duration = Duration::from_millis(50);

// --- this process's liveness token per object file ---------------------------------------------

/// This process's token for one object file: an OFD lock on byte `TOKEN_BASE + token`, held by
/// `file` (our own open file description) until this is dropped.
#[derive(Debug)]
struct ProcessToken {
    file: OwnedFd,
    id: FileId,
    token: u32,
    generation: u32,
}

impl ProcessToken {
    fn allocate(id: FileId, generation: u32) -> Result<ProcessToken> {
        let file =
            file_lock::reopen(id).map_err(|e| Error::os("opening a mutex's object file", e))?;
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(generation);
        hasher.write_u32(process::current_pid());
        let start = hasher.finish() as u32 % TOKEN_MASK; // 0..2^30-1
        for probe in 0..TOKEN_PROBES {
            let token = (start + probe) % TOKEN_MASK + 1; // 1..=2^30-1
            let taken = file_lock::try_lock_byte(&file, TOKEN_BASE + u64::from(token))
                .map_err(|e| Error::os("locking a mutex owner token", e))?;
            if taken {
                return Ok(ProcessToken {
                    file,
                    id,
                    token,
                    generation,
                });
            }
        }
        Err(Error::os(
            "finding a free mutex owner token",
            rustix::io::Errno::AGAIN,
        ))
    }

    /// Whether the process owning `token` (not ours) is alive: some other open file description
    /// holds that token's byte.
    fn is_alive(&self, token: u32) -> Result<bool> {
        file_lock::byte_locked_elsewhere(&self.file, TOKEN_BASE + u64::from(token))
            .map_err(|e| Error::os("checking whether a mutex holder is alive", e))
    }
}

/// The tokens of this process, one per object file (and fork generation), while any handle uses it.
static TOKENS: std::sync::Mutex<Vec<Weak<ProcessToken>>> = std::sync::Mutex::new(Vec::new());

/// This process's token for `id`, allocated on first use.
fn process_token(id: FileId, generation: u32) -> Result<Arc<ProcessToken>> {
    // The list holds no invariant a panicking thread could have broken half-way.
    let mut tokens = TOKENS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    tokens.retain(|t| t.strong_count() > 0);
    if let Some(token) = tokens
        .iter()
        .filter_map(Weak::upgrade)
        .find(|t| t.id == id && t.generation == generation)
    {
        return Ok(token);
    }
    let token = Arc::new(ProcessToken::allocate(id, generation)?);
    tokens.push(Arc::downgrade(&token));
    Ok(token)
}

/// A handle's view of its process token, rebuilt after a fork.
#[derive(Debug)]
struct TokenCache {
    /// `generation << 32 | token` of `current`, for the lock-free fast path.
    packed: AtomicU64,
    current: std::sync::Mutex<Arc<ProcessToken>>,
}

fn pack(token: &ProcessToken) -> u64 {
    (u64::from(token.generation) << 32) | u64::from(token.token)
}

impl TokenCache {
    fn new(id: FileId) -> Result<TokenCache> {
        let token = process_token(id, file_lock::fork_generation())?;
        Ok(TokenCache {
            packed: AtomicU64::new(pack(&token)),
            current: std::sync::Mutex::new(token),
        })
    }

    /// Our token, and the fork generation it belongs to.
    fn token(&self, id: FileId) -> Result<(u32, u32)> {
        let generation = file_lock::fork_generation();
        let packed = self.packed.load(Ordering::Relaxed);
        if packed >> 32 == u64::from(generation) {
            return Ok((packed as u32, generation));
        }
        Ok((self.refresh(id, generation)?.token, generation))
    }

    /// The current token, rebuilding it if this process is a fork child of the one it was made in.
    fn refresh(&self, id: FileId, generation: u32) -> Result<Arc<ProcessToken>> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.generation != generation {
            *current = process_token(id, generation)?;
            self.packed.store(pack(&current), Ordering::Relaxed);
        }
        Ok(current.clone())
    }
}

// --- which locks this thread holds ---------------------------------------------------------------

/// A lock's identity within this machine: its object file and offset in the payload.
type LockKey = (FileId, usize);

thread_local! {
    static HELD: RefCell<Vec<LockKey>> = const { RefCell::new(Vec::new()) };
}

fn held_by_this_thread(key: LockKey) -> bool {
    HELD.try_with(|held| held.borrow().contains(&key))
        .unwrap_or(false)
}

fn note_held(key: LockKey) {
    let _ = HELD.try_with(|held| held.borrow_mut().push(key));
}

fn note_released(key: LockKey) {
    let _ = HELD.try_with(|held| {
        let mut held = held.borrow_mut();
        if let Some(at) = held.iter().position(|k| *k == key) {
            held.swap_remove(at);
        }
    });
}

// --- the mutex -------------------------------------------------------------------------------------

/// A robust mutex shared between processes. It guards no data itself: it serialises access to
/// whatever the processes agree it protects (typically bytes in a [`Segment`]).
///
/// # Examples
/// ```
/// # fn main() -> memlink::Result<()> {
/// use memlink::{Lock, Mutex};
/// # let name = format!("doc-mutex-{}", std::process::id());
/// let mutex = Mutex::create(&name)?;
/// let guard = match mutex.lock()? {
///     Lock::Acquired(guard) => guard,
///     Lock::OwnerDied(recovering) => {
///         // The previous holder died mid-update: repair the protected state, then
///         recovering.make_consistent()?
///     }
/// };
/// drop(guard);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Mutex {
    pub(super) place: Placement,
    file: FileId,
    tokens: Arc<TokenCache>,
}

impl Clone for Mutex {
    fn clone(&self) -> Self {
        Mutex {
            place: self.place.clone(),
            file: self.file,
            tokens: self.tokens.clone(),
        }
    }
}

/// The outcome of acquiring a [`Mutex`]: either a normal acquisition, or one that must be
/// acknowledged because the previous holder died while holding the lock.
#[must_use = "the lock is released when this is dropped; an owner-died result must be handled"]
#[derive(Debug)]
pub enum Lock<'a> {
    /// The lock was free or released normally.
    Acquired(MutexGuard<'a>),
    /// The previous holder died holding the lock; the protected state may be half-updated.
    OwnerDied(OwnerDiedGuard<'a>),
}

impl Lock<'_> {
    /// Whether the previous owner died holding the lock.
    pub fn owner_died(&self) -> bool {
        matches!(self, Lock::OwnerDied(_))
    }
}

/// Holds a [`Mutex`]; releases it when dropped.
#[derive(Debug)]
pub struct MutexGuard<'a> {
    mutex: &'a Mutex,
    token: u32,
    generation: u32,
    leave_owner_died: bool,
    // The record of held locks is this thread's, so the guard must not move to another.
    _not_send: PhantomData<*const ()>,
}

/// Holds a [`Mutex`] whose previous owner died. Call [`OwnerDiedGuard::make_consistent`] once the
/// protected state is repaired; dropping it without doing so releases the lock but leaves the
/// owner-died mark, so the next locker is told too.
#[derive(Debug)]
pub struct OwnerDiedGuard<'a> {
    guard: MutexGuard<'a>,
    previous_owner: Option<u32>,
}

impl<'a> OwnerDiedGuard<'a> {
    /// Owner token (see [`MutexGuard::owner_token`]) of the holder that died, if this acquisition
    /// observed it (`None` if an earlier locker saw the death and released without making the lock
    /// consistent).
    pub fn previous_owner(&self) -> Option<u32> {
        self.previous_owner
    }

    /// Clears the owner-died mark and returns an ordinary guard.
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the shared state was invalid.
    #[doc(alias = "pthread_mutex_consistent")]
    pub fn make_consistent(mut self) -> Result<MutexGuard<'a>> {
        self.guard
            .mutex
            .place
            .word()?
            .fetch_and(!OWNER_DIED, Ordering::Relaxed);
        self.guard.leave_owner_died = false;
        Ok(self.guard)
    }
}

impl MutexGuard<'_> {
    /// The owner token the lock word records for this process while it holds the lock: what
    /// [`OwnerDiedGuard::previous_owner`] reports to the next locker should this process die
    /// holding it. Tokens (1..2^30) name processes, not threads, and mean nothing outside the
    /// object they were allocated for.
    pub fn owner_token(&self) -> u32 {
        self.token
    }

    /// Releases the lock, reporting whether the shared state was still consistent. (Dropping the
    /// guard does the same and ignores that report.)
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the lock word no longer names this process as owner.
    pub fn unlock(self) -> Result<()> {
        let result = self
            .mutex
            .release(self.token, self.generation, self.leave_owner_died);
        std::mem::forget(self);
        result
    }
}

impl Drop for MutexGuard<'_> {
    fn drop(&mut self) {
        let _ = self
            .mutex
            .release(self.token, self.generation, self.leave_owner_died);
    }
}

impl Mutex {
    /// Creates named mutex `name`, unlocked, owner-only.
    ///
    /// # Errors
    /// As [`Segment::create`].
    pub fn create(name: &str) -> Result<Mutex> {
        Self::create_with(name, &SegmentOptions::new())
    }

    /// Creates named mutex `name` with the given permissions / removal options.
    ///
    /// # Errors
    /// As [`Segment::create`].
    pub fn create_with(name: &str, options: &SegmentOptions) -> Result<Mutex> {
        Self::new(create_named(name, ObjectKind::Mutex, options, TAG, 0, 0)?)
    }

    /// Opens named mutex `name`, creating it unlocked if it does not exist.
    ///
    /// # Errors
    /// As [`Segment::create_or_open`].
    pub fn create_or_open(name: &str) -> Result<Mutex> {
        Self::create_or_open_with(name, &SegmentOptions::new())
    }

    /// [`Mutex::create_or_open`] with the given options (permissions, trusted owners).
    ///
    /// # Errors
    /// As [`Segment::create_or_open`].
    pub fn create_or_open_with(name: &str, options: &SegmentOptions) -> Result<Mutex> {
        let (place, _) =
            create_or_open_named(name, ObjectKind::Mutex, options, TAG, 0, 0, "mutex")?;
        Self::new(place)
    }

    /// Opens existing named mutex `name`.
    ///
    /// # Errors
    /// As [`Segment::open`].
    pub fn open(name: &str) -> Result<Mutex> {
        Self::open_with(name, &SegmentOptions::new())
    }

    /// Opens existing named mutex `name`, accepting the owners and modes `options` allow (see
    /// [`SegmentOptions::trust_owner_uid`]).
    ///
    /// # Errors
    /// As [`Segment::open`].
    pub fn open_with(name: &str, options: &SegmentOptions) -> Result<Mutex> {
        Self::new(open_named(name, ObjectKind::Mutex, options, TAG, "mutex")?.0)
    }

    /// Places a new, unlocked mutex at `offset` in `segment`.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] or [`Error::Misaligned`] for a bad offset.
    pub fn create_in(segment: &Segment, offset: usize) -> Result<Mutex> {
        Self::new(Placement::init(segment, offset, TAG, 0, 0)?)
    }

    /// Attaches to the mutex another process placed at `offset` in `segment`.
    ///
    /// # Errors
    /// [`Error::Incompatible`] if no mutex is there.
    pub fn open_in(segment: &Segment, offset: usize) -> Result<Mutex> {
        Self::new(Placement::attach(segment, offset, TAG, "mutex")?.0)
    }

    /// Finds the object file and this process's owner token for it.
    fn new(place: Placement) -> Result<Mutex> {
        let file = file_lock::mapped_file(place.word()?)
            .map_err(|e| Error::os("finding a mutex's object file in /proc/self", e))?;
        Ok(Mutex {
            tokens: Arc::new(TokenCache::new(file)?),
            file,
            place,
        })
    }

    fn key(&self) -> LockKey {
        (self.file, self.place.offset)
    }

    /// Acquires the lock, waiting as long as it takes (a dead holder is detected within ~50 ms).
    ///
    /// # Errors
    /// [`Error::WouldDeadlock`] if this thread already holds it; [`Error::Corrupted`].
    #[doc(alias = "pthread_mutex_lock")]
    pub fn lock(&self) -> Result<Lock<'_>> {
        self.acquire(Deadline::never(), false)
            .and_then(|lock| lock.ok_or(Error::Timeout))
    }

    /// Acquires the lock, giving up after `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`]; otherwise as [`Mutex::lock`].
    #[doc(alias = "pthread_mutex_timedlock")]
    pub fn lock_timeout(&self, timeout: Duration) -> Result<Lock<'_>> {
        self.acquire(Deadline::after(timeout), false)
            .and_then(|lock| lock.ok_or(Error::Timeout))
    }

    /// Acquires the lock if it is free or its holder is dead; `Ok(None)` if a live holder has it.
    ///
    /// # Errors
    /// As [`Mutex::lock`].
    #[doc(alias = "pthread_mutex_trylock")]
    pub fn try_lock(&self) -> Result<Option<Lock<'_>>> {
        self.acquire(Deadline::never(), true)
    }

    fn guard(&self, me: (u32, u32), previous: Option<u32>, owner_died: bool) -> Lock<'_> {
        note_held(self.key());
        let guard = MutexGuard {
            mutex: self,
            token: me.0,
            generation: me.1,
            leave_owner_died: owner_died,
            _not_send: PhantomData,
        };
        if owner_died {
            Lock::OwnerDied(OwnerDiedGuard {
                guard,
                previous_owner: previous,
            })
        } else {
            Lock::Acquired(guard)
        }
    }

    fn acquire(&self, deadline: Deadline, try_only: bool) -> Result<Option<Lock<'_>>> {
        let me = self.tokens.token(self.file)?;
        let token = me.0;
        let word = self.place.word()?;
        // SYNC POINT (every Acquire CAS below): pairs with the Release CAS in `release`, so the
        // previous holder's writes to the protected state are visible to the new holder.
        if word
            .compare_exchange(0, token, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return Ok(Some(self.guard(me, None, false)));
        }
        let mut spins = 0;
        let mut slept = false;
        let mut slice = FIRST_SLICE;
        loop {
            let current = word.load(Ordering::Relaxed);
            let owner = current & TOKEN_MASK;
            if owner == 0 {
                // Free (maybe marked owner-died). Having slept, other sleepers may exist, so keep
                // WAITERS set conservatively: the unlock that follows then wakes one of them.
                let waiters = if slept { WAITERS } else { current & WAITERS };
                let claimed = token | (current & OWNER_DIED) | waiters;
                if word
                    .compare_exchange(current, claimed, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(Some(self.guard(me, None, current & OWNER_DIED != 0)));
                }
                continue;
            }
            if owner == token {
                // Our process holds it: this thread (refused), or another one (a live owner).
                if held_by_this_thread(self.key()) {
                    return Err(Error::WouldDeadlock {
                        tid: process::current_tid(),
                    });
                }
            } else if (try_only || slept) && !self.owner_alive(owner)? {
                // Whoever wins this CAS takes over the dead holder's lock; losers re-read.
                let claimed = token | OWNER_DIED | WAITERS;
                if word
                    .compare_exchange(current, claimed, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(Some(self.guard(me, Some(owner), true)));
                }
                continue;
            }
            if try_only {
                return Ok(None);
            }
            if spins < SPIN_LIMIT {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let left = deadline.remaining()?;
            if current & WAITERS == 0
                && word
                    .compare_exchange(
                        current,
                        current | WAITERS,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_err()
            {
                continue;
            }
            let nap = left.map_or(slice, |left| left.min(slice));
            if futex::wait(word, current | WAITERS, Some(nap))
                .map_err(|e| Error::os("futex wait", e))?
                == futex::Wake::TimedOut
            {
                slice = (slice * 2).min(MAX_SLICE);
            }
            slept = true;
        }
    }

    /// Whether the process holding foreign token `owner` still runs (asks the kernel's OFD locks).
    fn owner_alive(&self, owner: u32) -> Result<bool> {
        let generation = file_lock::fork_generation();
        self.tokens.refresh(self.file, generation)?.is_alive(owner)
    }

    fn release(&self, token: u32, generation: u32, leave_owner_died: bool) -> Result<()> {
        if generation != file_lock::fork_generation() {
            // A guard `fork` copied into this child: the lock is the parent's to release.
            return Ok(());
        }
        note_released(self.key());
        let word = self.place.word()?;
        let released = if leave_owner_died { OWNER_DIED } else { 0 };
        let mut current = word.load(Ordering::Relaxed);
        loop {
            if current & TOKEN_MASK != token {
                return Err(self.place.corrupted(format!(
                    "mutex word {current:#x} no longer names this process (token {token}) as \
                     owner; another process overwrote it"
                )));
            }
            // SYNC POINT: Release, pairs with the Acquire CASes in `acquire`.
            match word.compare_exchange_weak(
                current,
                released,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        if current & WAITERS != 0 {
            futex::wake(word, 1).map_err(|e| Error::os("futex wake", e))?;
        }
        Ok(())
    }
}
