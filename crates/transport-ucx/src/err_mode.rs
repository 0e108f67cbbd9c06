//! Which UCX error-handling mode an endpoint gets: peer error handling between hosts, none
//! between two processes of one host.
//!
//! UCX 1.13 turns its shared-memory transports (`sysv`, `posix`, `cma`) off for endpoints with
//! peer error handling (`UCP_ERR_HANDLING_MODE_PEER`) and adds keep-alive and flush
//! bookkeeping to every lane; on one host that costs a factor of 3 on small round trips and of 4
//! on UCX's own 1 MiB path (BENCHMARKS.md). Between processes of one host the engine does not
//! need UCX to notice a dead peer: it holds a pidfd on the peer process from the hello on, and a
//! pidfd turns readable when the process exits (see `engine.rs`). So with `auto`, endpoints to
//! this host get `UCP_ERR_HANDLING_MODE_NONE`, all others `PEER`.
//!
//! Both ends of a connection must use the same mode, and the mode must be chosen before the
//! endpoint exists, so both sides apply the same rule to the one address they both know: the
//! connecting side to its destination, the accepting side to the connection request's client
//! address. An address is "this host" if it is a loopback or unspecified address, or one of the
//! addresses of this host's network interfaces. `TASKWIRE_UCX_ERR_MODE=auto` turns the rule on;
//! `peer` (the default) or `none` fixes one mode for every endpoint.
//!
//! Why `peer` is the default, although `auto` is 2–3× faster on one host (BENCHMARKS.md): with
//! UCX 1.13 (Debian's), a peer that dies while a `tcp` lane of an endpoint without peer error
//! handling is still being set up can abort the surviving process inside UCX
//! (`uct_tcp_ep_pending_purge`: `stubs.c:102 Assertion '0' failed`, seen in CI with a killed
//! child). A process that must stay up when its peers die cannot take that risk by default.
//!
//! Two ends that disagree do not connect: UCX refuses the endpoint during set-up (the client's error then names the variable), and the hello carries
//! the mode as a second check.

use std::net::IpAddr;

/// Set to `peer` (the default) or `none` to force that mode on every endpoint; `auto` picks
/// `none` for this host and `peer` otherwise. The module docs say why `peer` is the
/// default.
pub(crate) const ENV_ERR_MODE: &str = "TASKWIRE_UCX_ERR_MODE";

/// The UCX error-handling mode of an endpoint: [`ErrMode::Peer`] unless
/// `TASKWIRE_UCX_ERR_MODE` or [`UcxConfig::err_mode`](crate::UcxConfig::err_mode) says
/// otherwise (`auto`: [`ErrMode::None`] to a process of this host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrMode {
    /// `UCP_ERR_HANDLING_MODE_PEER`: UCX reports a peer that fails or disconnects.
    Peer,
    /// `UCP_ERR_HANDLING_MODE_NONE`: shared memory allowed; the engine watches the peer's pid.
    None,
}

impl ErrMode {
    /// `"peer"` or `"none"`, as `TASKWIRE_UCX_ERR_MODE` spells it.
    pub fn name(self) -> &'static str {
        match self {
            ErrMode::Peer => "peer",
            ErrMode::None => "none",
        }
    }
}

/// How modes are chosen, from [`ENV_ERR_MODE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrModeSetting {
    Auto,
    Fixed(ErrMode),
}

impl ErrModeSetting {
    /// Parse the variable's value; `None` (unset) is `peer`: the module docs say why.
    pub(crate) fn parse(v: Option<&str>) -> Result<ErrModeSetting, String> {
        match v.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            Some("auto") => Ok(ErrModeSetting::Auto),
            None | Some("") | Some("peer") => Ok(ErrModeSetting::Fixed(ErrMode::Peer)),
            Some("none") => Ok(ErrModeSetting::Fixed(ErrMode::None)),
            Some(_) => Err(format!(
                "{ENV_ERR_MODE}={:?}: expected peer, none or auto",
                v.unwrap_or_default()
            )),
        }
    }

    /// The setting from the environment.
    pub(crate) fn from_env() -> Result<ErrModeSetting, String> {
        Self::parse(std::env::var(ENV_ERR_MODE).ok().as_deref())
    }

    /// The mode for an endpoint whose other end is at `ip` (the destination when connecting,
    /// the client's address when accepting).
    pub(crate) fn mode_for(self, ip: IpAddr) -> ErrMode {
        match self {
            ErrModeSetting::Fixed(m) => m,
            ErrModeSetting::Auto => {
                if is_this_host(ip, &interface_addresses()) {
                    ErrMode::None
                } else {
                    ErrMode::Peer
                }
            }
        }
    }
}

/// The rule: loopback, unspecified, or one of `own` (this host's interface addresses).
/// IPv4-mapped IPv6 addresses count as their IPv4 address.
pub(crate) fn is_this_host(ip: IpAddr, own: &[IpAddr]) -> bool {
    let ip = ip.to_canonical();
    ip.is_loopback() || ip.is_unspecified() || own.iter().any(|o| o.to_canonical() == ip)
}

/// The addresses of this host's network interfaces (`getifaddrs`); empty if it fails.
/// Read for every endpoint: a few microseconds, next to the milliseconds of a connection
/// set-up, and always current when interfaces come and go.
pub(crate) fn interface_addresses() -> Vec<IpAddr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut p = head;
    while !p.is_null() {
        // SAFETY: p is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*p };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says what it is.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            match family {
                libc::AF_INET => {
                    // SAFETY: an AF_INET sockaddr is a sockaddr_in.
                    let sin = unsafe {
                        std::ptr::read_unaligned(ifa.ifa_addr.cast::<libc::sockaddr_in>())
                    };
                    out.push(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()));
                }
                libc::AF_INET6 => {
                    // SAFETY: an AF_INET6 sockaddr is a sockaddr_in6.
                    let sin6 = unsafe {
                        std::ptr::read_unaligned(ifa.ifa_addr.cast::<libc::sockaddr_in6>())
                    };
                    out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
        p = ifa.ifa_next;
    }
    // SAFETY: head came from getifaddrs and is freed once; no reference into it survives.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn this_host_is_loopback_unspecified_or_an_own_address() {
        let own = [ip("10.1.2.3"), ip("fe80::1")];
        for local in [
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "0.0.0.0",
            "::",
            "10.1.2.3",
            "::ffff:10.1.2.3",
            "::ffff:127.0.0.1",
            "fe80::1",
        ] {
            assert!(is_this_host(ip(local), &own), "{local}");
        }
        for remote in ["10.1.2.4", "192.168.0.1", "fe80::2", "::ffff:10.1.2.4"] {
            assert!(!is_this_host(ip(remote), &own), "{remote}");
        }
    }

    #[test]
    fn own_interface_addresses_are_this_host() {
        let own = interface_addresses();
        assert!(own.iter().any(|a| a.is_loopback()), "{own:?}");
        for a in &own {
            assert_eq!(ErrModeSetting::Auto.mode_for(*a), ErrMode::None, "{a}");
        }
        // TEST-NET-3 (RFC 5737) is nobody's interface address.
        assert_eq!(
            ErrModeSetting::Auto.mode_for(ip("203.0.113.7")),
            ErrMode::Peer
        );
    }

    #[test]
    fn the_setting_parses_and_overrides() {
        assert_eq!(
            ErrModeSetting::parse(None),
            Ok(ErrModeSetting::Fixed(ErrMode::Peer))
        );
        assert_eq!(
            ErrModeSetting::parse(Some("AUTO ")),
            Ok(ErrModeSetting::Auto)
        );
        let peer = ErrModeSetting::parse(Some("peer")).unwrap();
        let none = ErrModeSetting::parse(Some("none")).unwrap();
        assert_eq!(peer.mode_for(ip("127.0.0.1")), ErrMode::Peer);
        assert_eq!(none.mode_for(ip("203.0.113.7")), ErrMode::None);
        let bad = ErrModeSetting::parse(Some("sometimes")).unwrap_err();
        assert!(
            bad.contains(ENV_ERR_MODE) && bad.contains("sometimes"),
            "{bad}"
        );
    }
}
