//! CPU affinity: NVML's bitmasks, this process's own mask, and CPU lists for people.

/// Bits in one word of an NVML affinity mask (an `unsigned long`: 64 on 64-bit Linux).
const WORD_BITS: usize = libc::c_ulong::BITS as usize;

/// The CPUs set in an NVML affinity bitmask: bit `k` of word `w` is CPU `64 w + k` on 64-bit
/// Linux (`nvmlDeviceGetCpuAffinity`, dask-cuda's `unpack_bitmask`).
pub fn unpack_bitmask(words: &[libc::c_ulong]) -> Vec<usize> {
    let mut cpus = Vec::new();
    for (w, &word) in words.iter().enumerate() {
        for bit in 0..WORD_BITS {
            if word & (1 << bit) != 0 {
                cpus.push(WORD_BITS * w + bit);
            }
        }
    }
    cpus
}

/// How many words NVML needs for every CPU the machine has configured (not just those this
/// process may use: NVML's mask is over all of them).
pub(crate) fn mask_words() -> usize {
    // SAFETY: sysconf takes a constant and only returns a number.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    (n.max(1) as usize).div_ceil(WORD_BITS)
}

/// The CPUs this process may run on (`sched_getaffinity`; a cgroup cpuset narrows it), or
/// `None` where that cannot be read.
pub fn allowed_cpus() -> Option<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most size_of::<cpu_set_t>() bytes into `set`, which we own.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return None;
    }
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: CPU_ISSET reads one bit of the set we own; c < the set's size in bits.
    Some(
        (0..max)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect(),
    )
}

/// The CPUs a worker is pinned to: those near its GPU that this process may use. `None` (run
/// unpinned) when nothing is left of them, with the reason, as dask-cuda warns and goes on.
pub fn pin_set(near_gpu: &[usize], allowed: Option<&[usize]>) -> Result<Vec<usize>, String> {
    let cpus: Vec<usize> = match allowed {
        Some(allowed) => near_gpu
            .iter()
            .copied()
            .filter(|c| allowed.contains(c))
            .collect(),
        None => near_gpu.to_vec(),
    };
    if cpus.is_empty() {
        return Err(format!(
            "none of the CPUs near the GPU ({}) is allowed to this process ({})",
            cpu_list(near_gpu),
            allowed.map_or_else(|| "unknown".into(), cpu_list)
        ));
    }
    Ok(cpus)
}

/// `0-3,8,10-11`: a sorted CPU list in the kernel's `Cpus_allowed_list` format.
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmasks_unpack_across_words() {
        assert_eq!(unpack_bitmask(&[]), Vec::<usize>::new());
        assert_eq!(unpack_bitmask(&[0]), Vec::<usize>::new());
        assert_eq!(unpack_bitmask(&[0b1011]), [0, 1, 3]);
        assert_eq!(unpack_bitmask(&[1 << 63, 1]), [63, 64]);
        // A DGX-like socket: CPUs 0-15 and their hyperthreads 64-79 (second word).
        let socket = unpack_bitmask(&[0xffff, 0xffff]);
        assert_eq!(socket.len(), 32);
        assert_eq!(cpu_list(&socket), "0-15,64-79");
        assert_eq!(unpack_bitmask(&[0, 0, 1 << 5]), [133]);
    }

    #[test]
    fn cpu_lists_read_like_the_kernels() {
        assert_eq!(cpu_list(&[]), "");
        assert_eq!(cpu_list(&[3]), "3");
        assert_eq!(cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(cpu_list(&[5, 4, 4, 6]), "4-6");
    }

    #[test]
    fn pinning_keeps_only_allowed_cpus() {
        assert_eq!(pin_set(&[0, 1, 2, 3], Some(&[2, 3, 4])).unwrap(), [2, 3]);
        assert_eq!(pin_set(&[0, 1], None).unwrap(), [0, 1]);
        let e = pin_set(&[8, 9], Some(&[0, 1])).unwrap_err();
        assert!(e.contains("8-9") && e.contains("0-1"), "{e}");
    }

    #[test]
    fn own_affinity_is_readable() {
        let cpus = allowed_cpus().expect("sched_getaffinity works on Linux");
        assert!(!cpus.is_empty());
        assert!(mask_words() >= 1);
        assert!(cpus.iter().all(|&c| c < 64 * mask_words() || c < 1024));
    }
}
