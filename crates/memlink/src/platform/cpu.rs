//! Which CPU we run on.

/// The CPU the calling thread is running on right now, or `u32::MAX` if unknown.
///
/// glibc answers from the rseq area the kernel keeps up to date, so this costs about a nanosecond
/// and no syscall — cheap enough to call at the start of every wait.
pub(crate) fn current_cpu() -> u32 {
    // SAFETY: `sched_getcpu` takes no arguments, touches no memory of ours, and is thread-safe.
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).unwrap_or(u32::MAX)
}

/// How many CPUs the calling thread may run on.
pub(crate) fn allowed_cpus() -> usize {
    rustix::thread::sched_getaffinity(None).map_or(1, |set| set.count() as usize)
}
