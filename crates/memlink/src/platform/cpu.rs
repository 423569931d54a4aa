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

/// How many CPUs the processes around us can use: the CPUs of our cgroup's cpuset where one
/// restricts us (a container), else every online CPU. Not our own affinity: a server pinned to
/// one CPU still has clients running on the others.
pub(crate) fn usable_cpus() -> usize {
    // SAFETY: `sysconf` takes a plain integer, touches no memory of ours, and is thread-safe.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let online = usize::try_from(online).unwrap_or(1).max(1);
    cpuset_cpus().map_or(online, |n| n.clamp(1, online))
}

/// The number of CPUs in our cgroup's effective cpuset (cgroup v2, or the v1 cpuset hierarchy).
fn cpuset_cpus() -> Option<usize> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let unified = cgroups.lines().find_map(|l| l.strip_prefix("0::"));
    let v1 = cgroups.lines().find_map(|l| {
        let (_, rest) = l.split_once(':')?;
        let (controllers, path) = rest.split_once(':')?;
        controllers
            .split(',')
            .any(|c| c == "cpuset")
            .then_some(path)
    });
    let list = unified
        .and_then(|path| {
            std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cpuset.cpus.effective")).ok()
        })
        .or_else(|| {
            std::fs::read_to_string(format!(
                "/sys/fs/cgroup/cpuset{}/cpuset.effective_cpus",
                v1?
            ))
            .ok()
        })?;
    count_cpu_list(list.trim())
}

/// Counts the CPUs in a kernel CPU list such as `0-3,8,10-11`.
fn count_cpu_list(list: &str) -> Option<usize> {
    let mut count = 0usize;
    for part in list.split(',').filter(|p| !p.is_empty()) {
        count += match part.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (first.parse::<usize>().ok()?, last.parse::<usize>().ok()?);
                last.checked_sub(first)? + 1
            }
            None => part.parse::<usize>().map(|_| 1).ok()?,
        };
    }
    (count > 0).then_some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(count_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpu_list("5"), Some(1));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("x"), None);
        assert!(usable_cpus() >= 1);
    }
}
