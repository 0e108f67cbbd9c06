//! Addresses: `scheme://location`.

use std::fmt;
use std::str::FromStr;

/// The transport an address names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    /// Plain TCP.
    Tcp,
    /// TCP with TLS.
    Tls,
    /// In-process, through memory.
    Inproc,
    /// UCX (shared memory, InfiniBand, NVLink, TCP, as UCX chooses).
    Ucx,
}

impl Scheme {
    /// The scheme as written in addresses.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Tcp => "tcp",
            Scheme::Tls => "tls",
            Scheme::Inproc => "inproc",
            Scheme::Ucx => "ucx",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed address. Network schemes carry a host and a port; `inproc` carries a name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Address {
    /// `tcp://`, `tls://` or `ucx://` with host and port (`[v6]:port` for IPv6).
    Net {
        /// Which network scheme.
        scheme: Scheme,
        /// Host name or IP, without brackets.
        host: String,
        /// Port; 0 asks the listener to pick one.
        port: u16,
    },
    /// `inproc://name`.
    Inproc(String),
}

/// An address could not be parsed; the message names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address '{input}': {reason}")]
pub struct AddressError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Address {
    /// A TCP address.
    pub fn tcp(host: impl Into<String>, port: u16) -> Address {
        Address::Net {
            scheme: Scheme::Tcp,
            host: host.into(),
            port,
        }
    }

    /// An in-process address.
    pub fn inproc(name: impl Into<String>) -> Address {
        Address::Inproc(name.into())
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        match self {
            Address::Net { scheme, .. } => *scheme,
            Address::Inproc(_) => Scheme::Inproc,
        }
    }

    /// Host of a network address.
    pub fn host(&self) -> Option<&str> {
        match self {
            Address::Net { host, .. } => Some(host),
            Address::Inproc(_) => None,
        }
    }

    /// Port of a network address.
    pub fn port(&self) -> Option<u16> {
        match self {
            Address::Net { port, .. } => Some(*port),
            Address::Inproc(_) => None,
        }
    }

    /// The same address with another port (network addresses only).
    pub fn with_port(&self, new_port: u16) -> Address {
        match self {
            Address::Net { scheme, host, .. } => Address::Net {
                scheme: *scheme,
                host: host.clone(),
                port: new_port,
            },
            other => other.clone(),
        }
    }

    /// `host:port` as the OS resolver wants it (IPv6 in brackets).
    pub fn socket_str(&self) -> Option<String> {
        match self {
            Address::Net { host, port, .. } if host.contains(':') => {
                Some(format!("[{host}]:{port}"))
            }
            Address::Net { host, port, .. } => Some(format!("{host}:{port}")),
            Address::Inproc(_) => None,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Net { scheme, .. } => {
                write!(f, "{scheme}://{}", self.socket_str().expect("net address"))
            }
            Address::Inproc(name) => write!(f, "inproc://{name}"),
        }
    }
}

impl FromStr for Address {
    type Err = AddressError;

    /// Parses `scheme://host:port` or `inproc://name`; a bare `host:port` means TCP, as in Dask.
    fn from_str(input: &str) -> Result<Address, AddressError> {
        let err = |reason: String| AddressError {
            input: input.to_string(),
            reason,
        };
        let trimmed = input.trim();
        let (scheme, rest) = match trimmed.split_once("://") {
            Some((s, rest)) => {
                let scheme = match s.to_ascii_lowercase().as_str() {
                    "tcp" => Scheme::Tcp,
                    "tls" => Scheme::Tls,
                    "inproc" => Scheme::Inproc,
                    "ucx" => Scheme::Ucx,
                    other => {
                        return Err(err(format!(
                            "unknown scheme '{other}' (expected tcp, tls, inproc or ucx)"
                        )));
                    }
                };
                (scheme, rest)
            }
            None => (Scheme::Tcp, trimmed),
        };
        if scheme == Scheme::Inproc {
            if rest.is_empty() {
                return Err(err(
                    "inproc address needs a name, like inproc://scheduler".into()
                ));
            }
            return Ok(Address::Inproc(rest.to_string()));
        }
        let rest = rest.trim_end_matches('/');
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| err("missing ']' after IPv6 host".into()))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| err("missing port after IPv6 host, like [::1]:8786".into()))?;
            (host, port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, _)) if h.contains(':') => {
                    return Err(err("IPv6 hosts must be in brackets, like [::1]:8786".into()));
                }
                Some((h, p)) => (h, p),
                None => {
                    return Err(err(format!("missing port, like {scheme}://{rest}:8786")));
                }
            }
        };
        if host.is_empty() {
            return Err(err("empty host".into()));
        }
        if port.is_empty() {
            return Err(err("empty port".into()));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| err(format!("port '{port}' is not a number from 0 to 65535")))?;
        Ok(Address::Net {
            scheme,
            host: host.to_string(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_scheme() {
        for s in [
            "tcp://127.0.0.1:8786",
            "tls://sched.example:443",
            "ucx://10.0.0.1:13337",
            "inproc://scheduler-1",
            "tcp://[::1]:8786",
        ] {
            let a: Address = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        let bare: Address = "localhost:8786".parse().unwrap();
        assert_eq!(bare, Address::tcp("localhost", 8786));
        assert_eq!(
            "TCP://h:1".parse::<Address>().unwrap().scheme(),
            Scheme::Tcp
        );
        assert_eq!("tcp://h:0".parse::<Address>().unwrap().port(), Some(0));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let cases = [
            ("http://h:1", "unknown scheme 'http'"),
            ("tcp://host", "missing port"),
            ("tcp://:8786", "empty host"),
            ("tcp://h:", "empty port"),
            ("tcp://h:99999", "not a number from 0 to 65535"),
            ("tcp://h:abc", "'abc'"),
            ("tcp://::1:80", "brackets"),
            ("tcp://[::1]", "missing port"),
            ("inproc://", "needs a name"),
        ];
        for (input, needle) in cases {
            let e = input.parse::<Address>().unwrap_err();
            assert!(e.to_string().contains(needle), "{input}: {e}");
            assert!(e.to_string().contains(input), "{input}: {e}");
        }
    }
}
