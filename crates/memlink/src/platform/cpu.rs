//! Which CPU we run on, and pinning (for benchmarks).

/// The CPU the calling thread is running on right now, or `u32::MAX` if unknown.
///
/// glibc answers from the rseq area the kernel keeps up to date, so this costs about a nanosecond
/// and no syscall — cheap enough to call at the start of every wait.
pub(crate) fn current_cpu() -> u32 {
    // SAFETY: `sched_getcpu` takes no arguments, touches no memory of ours, and is thread-safe.
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).unwrap_or(u32::MAX)
}

/// Restricts the calling thread (and threads it creates later) to `cpu`.
pub(crate) fn pin_current_thread(cpu: usize) -> Result<(), rustix::io::Errno> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set)
}

/// How many CPUs the calling thread may run on.
pub(crate) fn allowed_cpus() -> usize {
    rustix::thread::sched_getaffinity(None).map_or(1, |set| set.count() as usize)
}
