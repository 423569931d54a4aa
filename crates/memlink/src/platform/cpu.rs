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

/// How many CPUs are online on the machine (other processes are not bound by our affinity).
pub(crate) fn online_cpus() -> usize {
    // SAFETY: `sysconf` takes a plain integer, touches no memory of ours, and is thread-safe.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(online).unwrap_or(1).max(1)
}
