//! The same-host path for large messages: the receiver copies the payload straight out of the
//! sender's memory with `process_vm_readv` (one copy, as UCX's `cma` transport does).
//!
//! Why it exists: it was built when every endpoint had UCX's peer error handling, under which
//! UCX 1.13 turns its shared-memory transports off and moves data between two processes of one
//! host over loopback TCP with bounce-buffer copies. Same-host endpoints now have no UCX error
//! handling (`err_mode`) and UCX may use shared memory itself; the path stays where it is
//! measured faster (BENCHMARKS.md). Only the bytes of large messages take it, announced and
//! acknowledged by small active messages on the endpoint.
//!
//! The pidfd opened here also tells the engine when the peer process exits (`engine.rs`
//! waits on a clone of it), which is how a dead peer is noticed without UCX error handling.
//!
//! Which peers qualify: both sides put an [`Identity`] (boot id, pid namespace, pid) in their
//! hello; equal boot ids and pid namespaces mean the pid names the peer process here. The
//! receiver holds a pidfd on the peer from the hello on: after each read it checks that the
//! process is still alive, which proves the pid was not reused by another process while it
//! read (a live pidfd's pid cannot be reused), so a dead sender can never yield garbage. A
//! read the kernel refuses (`EPERM`: a different user, Yama's `ptrace_scope`, a seccomp
//! policy) makes the receiver ask for the message the ordinary way, and the sender stops
//! using the path on that connection.

use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Messages with at least this many bytes (header and frames) take the same-host path.
/// Smaller ones go eagerly through UCX, where one more copy costs less than the extra
/// acknowledgement.
pub(crate) const MIN_LEN: usize = 64 << 10;

/// Set to `0` to turn the same-host path off (to compare, or to rule it out).
pub(crate) const ENV_SWITCH: &str = "TASKWIRE_UCX_SAME_HOST";

/// Whether this process takes part in the same-host path ([`ENV_SWITCH`] is not `0`). The
/// identity is exchanged either way: the peer's pidfd also tells when it dies.
pub(crate) fn path_enabled() -> bool {
    !std::env::var(ENV_SWITCH).is_ok_and(|v| v.trim() == "0")
}

/// Whether [`ENV_SWITCH`] is `always`: pull even where UCX has a single-copy transport of its
/// own for the endpoint (`cma`), which is otherwise preferred (measured faster, BENCHMARKS.md).
pub(crate) fn path_forced() -> bool {
    std::env::var(ENV_SWITCH).is_ok_and(|v| v.trim() == "always")
}

/// Bytes of an [`Identity`] on the wire.
pub(crate) const IDENTITY_LEN: usize = 4 + 8 + 8 + 16;

/// Which process this is, in terms that another process can check: equal `boot` and
/// `pid_ns` mean "same kernel, same pid numbering", so `pid` names this very process there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) pid: u32,
    /// Device and inode of `/proc/self/ns/pid`, folded into one number each.
    pub(crate) pid_ns: (u64, u64),
    pub(crate) boot: [u8; 16],
}

impl Identity {
    /// This process's identity, or `None` when the facts cannot be read (no `/proc`): then
    /// every message takes the ordinary path, and peers cannot watch this process's pid.
    pub(crate) fn local() -> Option<Identity> {
        use std::os::unix::fs::MetadataExt;
        let ns = std::fs::metadata("/proc/self/ns/pid").ok()?;
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        Some(Identity {
            pid: std::process::id(),
            pid_ns: (ns.dev(), ns.ino()),
            boot: parse_boot_id(&boot)?,
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.pid.to_le_bytes());
        out.extend_from_slice(&self.pid_ns.0.to_le_bytes());
        out.extend_from_slice(&self.pid_ns.1.to_le_bytes());
        out.extend_from_slice(&self.boot);
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Identity> {
        if b.len() != IDENTITY_LEN {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        Some(Identity {
            pid: u32::from_le_bytes(b[..4].try_into().expect("4 bytes")),
            pid_ns: (u64_at(4), u64_at(12)),
            boot: b[20..36].try_into().expect("16 bytes"),
        })
    }

    /// True if `peer` is a process on this host, in this pid namespace.
    pub(crate) fn shares_host_with(&self, peer: &Identity) -> bool {
        self.boot == peer.boot && self.pid_ns == peer.pid_ns && peer.pid != 0
    }
}

/// `/proc/sys/kernel/random/boot_id` (a UUID) as 16 bytes.
fn parse_boot_id(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = s.trim().bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// Ask for transparent huge pages under a large fresh receive buffer, so that the kernel can
/// back it 2 MiB at a time while it copies into it instead of 4 KiB page by page (every
/// large message lands in fresh memory). Only the 2 MiB-aligned middle of the buffer is
/// advised; a no-op where THP is off. On the machine of BENCHMARKS.md it made no clear
/// difference at 64 MiB (within the run-to-run spread).
pub(crate) fn prefer_huge_pages(buf: &mut Vec<u8>) {
    const HUGE: usize = 2 << 20;
    if buf.capacity() < 2 * HUGE {
        return;
    }
    let start = buf.as_mut_ptr() as usize;
    let first = start.next_multiple_of(HUGE);
    let end = (start + buf.capacity()) / HUGE * HUGE;
    if end > first {
        // SAFETY: the range lies inside our own allocation; MADV_HUGEPAGE only changes how
        // the kernel backs it, never its contents.
        unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
    }
}

/// A peer process on this host that we may read from.
#[derive(Debug)]
pub(crate) struct Peer {
    pid: u32,
    pidfd: OwnedFd,
}

/// Why a read from the peer failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// The kernel does not let this process read the peer's memory: use the ordinary path.
    Denied(String),
    /// The peer process has exited (or is exiting): the connection is dead.
    Gone,
    /// The peer announced memory it does not have: a broken or hostile peer.
    Fault(String),
}

impl Peer {
    /// Hold on to process `pid` (a pidfd), or `None` if it does not exist here or pidfds are
    /// not available (Linux before 5.3): then messages from it take the ordinary path.
    pub(crate) fn open(pid: u32) -> Option<Peer> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a fresh fd that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Some(Peer { pid, pidfd })
    }

    /// The peer's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// A second descriptor of the pidfd, to wait on (it turns readable when the process exits).
    pub(crate) fn watch_fd(&self) -> Option<OwnedFd> {
        self.pidfd.try_clone().ok()
    }

    /// True once the peer process has exited (its pidfd turns readable).
    pub(crate) fn has_exited(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no waiting.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0 && pfd.revents != 0
    }

    /// Fill `dst` from the peer's `regions` (address, length), in order; their lengths must add
    /// up to `dst.len()` (the caller checks). `dst` is written completely on success.
    pub(crate) fn read(
        &self,
        regions: &[(u64, u64)],
        dst: &mut [MaybeUninit<u8>],
    ) -> Result<(), ReadError> {
        // Remote pieces, cut where a region was partly read, and at most IOV_MAX per call.
        const IOV_MAX: usize = 1024;
        let mut remote: Vec<libc::iovec> = regions
            .iter()
            .filter(|r| r.1 > 0)
            .map(|&(addr, len)| libc::iovec {
                iov_base: addr as usize as *mut libc::c_void,
                iov_len: len as usize,
            })
            .collect();
        let mut done = 0usize;
        let mut first = 0usize;
        while done < dst.len() {
            let batch = &remote[first..remote.len().min(first + IOV_MAX)];
            let want: usize = batch.iter().map(|v| v.iov_len).sum();
            let local = libc::iovec {
                iov_base: dst[done..].as_mut_ptr().cast(),
                iov_len: want.min(dst.len() - done),
            };
            // SAFETY: `local` is our own writable buffer of iov_len bytes; the remote
            // addresses are only read by the kernel, which checks them against the peer's
            // address space.
            let n = unsafe {
                libc::process_vm_readv(
                    self.pid as libc::pid_t,
                    &local,
                    1,
                    batch.as_ptr(),
                    batch.len() as libc::c_ulong,
                    0,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                return Err(match e.raw_os_error() {
                    Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::ENOSYS) => {
                        ReadError::Denied(format!("process_vm_readv on pid {}: {e}", self.pid))
                    }
                    Some(libc::ESRCH) => ReadError::Gone,
                    _ if self.has_exited() => ReadError::Gone,
                    _ => ReadError::Fault(format!("process_vm_readv on pid {}: {e}", self.pid)),
                });
            }
            if n == 0 {
                return Err(if self.has_exited() {
                    ReadError::Gone
                } else {
                    ReadError::Fault(format!("process_vm_readv on pid {}: no progress", self.pid))
                });
            }
            let mut n = n as usize;
            done += n;
            // Skip what was read; a partly read piece continues where it stopped.
            while n > 0 {
                let v = &mut remote[first];
                if n >= v.iov_len {
                    n -= v.iov_len;
                    first += 1;
                } else {
                    v.iov_base = (v.iov_base as usize + n) as *mut libc::c_void;
                    v.iov_len -= n;
                    n = 0;
                }
            }
        }
        // Alive now means alive during the whole read: its pid was not reused meanwhile.
        if self.has_exited() {
            return Err(ReadError::Gone);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_and_compares() {
        let me = Identity::local().expect("/proc is readable in tests");
        let mut b = Vec::new();
        me.encode(&mut b);
        assert_eq!(b.len(), IDENTITY_LEN);
        assert_eq!(Identity::decode(&b), Some(me));
        assert!(me.shares_host_with(&me));
        let other_boot = Identity {
            boot: [7; 16],
            ..me
        };
        assert!(!me.shares_host_with(&other_boot));
        let other_ns = Identity {
            pid_ns: (me.pid_ns.0, me.pid_ns.1 + 1),
            ..me
        };
        assert!(!me.shares_host_with(&other_ns));
        assert_eq!(Identity::decode(&b[1..]), None);
    }

    #[test]
    fn boot_ids_parse() {
        let b = parse_boot_id("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n").unwrap();
        assert_eq!(b[0], 0x0f);
        assert_eq!(b[15], 0xf0);
        assert_eq!(parse_boot_id("nope"), None);
    }

    #[test]
    fn reads_scattered_regions_of_a_live_process() {
        let a = vec![1u8; 3000];
        let b: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let regions = [
            (a.as_ptr() as u64, a.len() as u64),
            (0, 0),
            (b.as_ptr() as u64, b.len() as u64),
        ];
        let me = Peer::open(std::process::id()).expect("pidfd_open on ourselves");
        assert!(!me.has_exited());
        let mut dst = Vec::with_capacity(8000);
        me.read(&regions, &mut dst.spare_capacity_mut()[..8000])
            .unwrap();
        // SAFETY: read filled all 8000 bytes.
        unsafe { dst.set_len(8000) };
        assert_eq!(&dst[..3000], &a[..]);
        assert_eq!(&dst[3000..], &b[..]);
    }

    #[test]
    fn bad_addresses_are_a_fault_not_a_crash() {
        let me = Peer::open(std::process::id()).unwrap();
        let mut dst = [MaybeUninit::new(0u8); 16];
        let err = me.read(&[(8, 16)], &mut dst).unwrap_err();
        assert!(matches!(err, ReadError::Fault(_)), "{err:?}");
    }

    #[test]
    fn an_exited_process_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let peer = Peer::open(child.id()).unwrap();
        child.wait().unwrap();
        assert!(peer.has_exited());
        let mut dst = [MaybeUninit::new(0u8); 16];
        let x = [0u8; 16];
        assert_eq!(
            peer.read(&[(x.as_ptr() as u64, 16)], &mut dst),
            Err(ReadError::Gone)
        );
    }
}
