//! A thin safe layer over UCP: context, worker, listener and endpoint handles with RAII where
//! the lifetime is synchronous, and typed errors.
//!
//! None of these types is `Send`: a UCP worker created in single-thread mode (and everything
//! made from it) must only be touched by the thread that owns it. The engine thread
//! (`engine.rs`) is that thread.

use crate::err_mode::ErrMode;
use crate::status::{Status, StatusPtr, UcxError};
use crate::sys;
use std::ffi::{CString, c_void};
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// UCX settings applied on top of the `UCX_*` environment when a context is created.
///
/// Names are UCX configuration names without the `UCX_` prefix (`TLS`, `NET_DEVICES`,
/// `SOCKADDR_TLS_PRIORITY`, ...), exactly as `ucx_info -c` lists them. A setting given here wins
/// over the same variable in the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UcxConfig {
    settings: Vec<(String, String)>,
    err_mode: Option<ErrMode>,
}

impl UcxConfig {
    /// No settings: UCX reads the environment and picks transports itself.
    pub fn new() -> UcxConfig {
        UcxConfig::default()
    }

    /// Set one UCX configuration value (`name` without the `UCX_` prefix).
    pub fn set(mut self, name: impl Into<String>, value: impl Into<String>) -> UcxConfig {
        let name = name.into();
        self.settings.retain(|(n, _)| *n != name);
        self.settings.push((name, value.into()));
        self
    }

    /// Restrict UCX to these transports (`UCX_TLS`), e.g. `"tcp"` or `"sm,tcp"`.
    pub fn tls(self, tls: impl Into<String>) -> UcxConfig {
        self.set("TLS", tls)
    }

    /// The settings, in the order they were given.
    pub fn settings(&self) -> &[(String, String)] {
        &self.settings
    }

    /// Give every endpoint this error-handling mode instead of choosing by address (see
    /// [`ErrMode`]); wins over `TASKWIRE_UCX_ERR_MODE`. Every process of a cluster must agree.
    pub fn err_mode(mut self, mode: ErrMode) -> UcxConfig {
        self.err_mode = Some(mode);
        self
    }

    /// The error-handling mode set with [`UcxConfig::err_mode`], if any.
    pub fn fixed_err_mode(&self) -> Option<ErrMode> {
        self.err_mode
    }
}

/// A UCP context (`ucp_context_h`) with active messages and wake-up support.
pub(crate) struct Context {
    raw: sys::ucp_context_h,
}

impl Context {
    pub(crate) fn new(config: &UcxConfig) -> Result<Context, UcxError> {
        let mut cfg: *mut sys::ucp_config_t = std::ptr::null_mut();
        // SAFETY: NULL prefix and file mean "UCX_ environment, default file"; cfg is an out
        // pointer that UCX fills on success.
        Status(unsafe { sys::ucp_config_read(std::ptr::null(), std::ptr::null(), &mut cfg) })
            .check("ucp_config_read")?;
        let result = Self::init_with(cfg, config);
        // SAFETY: cfg came from ucp_config_read and is released exactly once; ucp_init copies
        // what it needs.
        unsafe { sys::ucp_config_release(cfg) };
        result
    }

    fn init_with(cfg: *mut sys::ucp_config_t, config: &UcxConfig) -> Result<Context, UcxError> {
        for (name, value) in config.settings() {
            let (Ok(n), Ok(v)) = (CString::new(name.as_str()), CString::new(value.as_str())) else {
                return Err(UcxError {
                    op: "ucp_config_modify",
                    status: Status(sys::UCS_ERR_INVALID_PARAM),
                });
            };
            // SAFETY: cfg is a live config; both strings are NUL-terminated and outlive the call.
            Status(unsafe { sys::ucp_config_modify(cfg, n.as_ptr(), v.as_ptr()) })
                .check("ucp_config_modify")
                .map_err(|e| UcxError {
                    op: "ucp_config_modify",
                    ..e
                })?;
        }
        let params = sys::ucp_params_t {
            field_mask: sys::UCP_PARAM_FIELD_FEATURES as u64,
            features: (sys::UCP_FEATURE_AM | sys::UCP_FEATURE_WAKEUP) as u64,
            ..Default::default()
        };
        let mut raw: sys::ucp_context_h = std::ptr::null_mut();
        // SAFETY: `ucp_init` is a static inline wrapper around this call with the API version
        // we were compiled against; params and cfg are valid for the call.
        Status(unsafe {
            sys::ucp_init_version(
                sys::UCP_API_MAJOR,
                sys::UCP_API_MINOR,
                &params,
                cfg,
                &mut raw,
            )
        })
        .check("ucp_init")?;
        Ok(Context { raw })
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the context is live and every worker made from it is destroyed first (the
        // engine drops its Worker before its Context).
        unsafe { sys::ucp_cleanup(self.raw) }
    }
}

/// The UCX library version string, e.g. "1.13.1".
pub fn ucx_version() -> String {
    // SAFETY: returns a pointer to a static NUL-terminated string.
    let p = unsafe { sys::ucp_get_version_string() };
    if p.is_null() {
        return String::from("unknown");
    }
    // SAFETY: non-null static C string.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}

/// Whether `ucp_worker_arm` armed the event fd or found events still pending.
pub(crate) enum Armed {
    /// Armed: sleep on the event fd.
    Sleep,
    /// Events are pending: progress again first.
    Busy,
}

/// A UCP worker in single-thread mode.
pub(crate) struct Worker {
    raw: sys::ucp_worker_h,
}

impl Worker {
    pub(crate) fn new(ctx: &Context) -> Result<Worker, UcxError> {
        let params = sys::ucp_worker_params_t {
            field_mask: sys::UCP_WORKER_PARAM_FIELD_THREAD_MODE as u64,
            thread_mode: sys::UCS_THREAD_MODE_SINGLE,
            ..Default::default()
        };
        let mut raw: sys::ucp_worker_h = std::ptr::null_mut();
        // SAFETY: ctx is live; params is valid for the call; raw is an out pointer.
        Status(unsafe { sys::ucp_worker_create(ctx.raw, &params, &mut raw) })
            .check("ucp_worker_create")?;
        Ok(Worker { raw })
    }

    pub(crate) fn raw(&self) -> sys::ucp_worker_h {
        self.raw
    }

    /// The largest active-message header this worker can send.
    pub(crate) fn max_am_header(&self) -> Result<usize, UcxError> {
        let mut attr = sys::ucp_worker_attr_t {
            field_mask: sys::UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER as u64,
            ..Default::default()
        };
        // SAFETY: worker is live; attr is a valid out struct with its field mask set.
        Status(unsafe { sys::ucp_worker_query(self.raw, &mut attr) }).check("ucp_worker_query")?;
        Ok(attr.max_am_header)
    }

    /// The worker's event fd. UCX owns it: never close it.
    pub(crate) fn event_fd(&self) -> Result<RawFd, UcxError> {
        let mut fd: i32 = -1;
        // SAFETY: worker is live and was created from a context with UCP_FEATURE_WAKEUP.
        Status(unsafe { sys::ucp_worker_get_efd(self.raw, &mut fd) })
            .check("ucp_worker_get_efd")?;
        Ok(fd)
    }

    /// Run callbacks for whatever has arrived; returns how many events were processed.
    pub(crate) fn progress(&self) -> u32 {
        // SAFETY: worker is live and used only from its owning thread; this is never called
        // from inside a UCX callback (callbacks only record work for the engine loop).
        unsafe { sys::ucp_worker_progress(self.raw) }
    }

    /// Arm the event fd for the next event.
    pub(crate) fn arm(&self) -> Result<Armed, UcxError> {
        // SAFETY: worker is live and has wake-up support.
        let s = Status(unsafe { sys::ucp_worker_arm(self.raw) });
        if s.0 == sys::UCS_ERR_BUSY {
            return Ok(Armed::Busy);
        }
        s.check("ucp_worker_arm").map(|()| Armed::Sleep)
    }

    /// Register `cb` for active messages with `id`; `arg` is handed back to it.
    ///
    /// # Safety
    /// `arg` must stay valid for as long as the worker can run callbacks.
    pub(crate) unsafe fn set_am_handler(
        &self,
        id: u32,
        cb: sys::ucp_am_recv_callback_t,
        arg: *mut c_void,
    ) -> Result<(), UcxError> {
        let params = sys::ucp_am_handler_param_t {
            field_mask: (sys::UCP_AM_HANDLER_PARAM_FIELD_ID
                | sys::UCP_AM_HANDLER_PARAM_FIELD_CB
                | sys::UCP_AM_HANDLER_PARAM_FIELD_ARG
                | sys::UCP_AM_HANDLER_PARAM_FIELD_FLAGS) as u64,
            id,
            flags: sys::UCP_AM_FLAG_WHOLE_MSG,
            cb,
            arg,
        };
        // SAFETY: worker is live; the caller guarantees arg's lifetime.
        Status(unsafe { sys::ucp_worker_set_am_recv_handler(self.raw, &params) })
            .check("ucp_worker_set_am_recv_handler")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // SAFETY: the worker is live; listeners are destroyed and endpoints closed before the
        // engine drops it, and the AsyncFd over its event fd is dropped first.
        unsafe { sys::ucp_worker_destroy(self.raw) }
    }
}

/// A listener on a socket address; connection requests go to `cb` with `arg`.
pub(crate) struct UcpListener {
    raw: sys::ucp_listener_h,
}

impl UcpListener {
    /// # Safety
    /// `arg` must stay valid until the listener is dropped.
    pub(crate) unsafe fn new(
        worker: &Worker,
        addr: SocketAddr,
        cb: sys::ucp_listener_conn_callback_t,
        arg: *mut c_void,
    ) -> Result<UcpListener, UcxError> {
        let (storage, len) = sockaddr_from(addr);
        let params = sys::ucp_listener_params_t {
            field_mask: (sys::UCP_LISTENER_PARAM_FIELD_SOCK_ADDR
                | sys::UCP_LISTENER_PARAM_FIELD_CONN_HANDLER) as u64,
            sockaddr: sys::ucs_sock_addr_t {
                addr: (&storage as *const sys::sockaddr_storage).cast(),
                addrlen: len,
            },
            conn_handler: sys::ucp_listener_conn_handler_t { cb, arg },
            ..Default::default()
        };
        let mut raw: sys::ucp_listener_h = std::ptr::null_mut();
        // SAFETY: worker is live; params (and the sockaddr it points to) live for the call; the
        // caller guarantees arg.
        Status(unsafe { sys::ucp_listener_create(worker.raw, &params, &mut raw) })
            .check("ucp_listener_create")?;
        Ok(UcpListener { raw })
    }

    /// The address actually bound (the real port when asked for port 0).
    pub(crate) fn local_addr(&self) -> Result<SocketAddr, UcxError> {
        let mut attr = sys::ucp_listener_attr_t {
            field_mask: sys::UCP_LISTENER_ATTR_FIELD_SOCKADDR as u64,
            ..Default::default()
        };
        // SAFETY: listener is live; attr is a valid out struct.
        Status(unsafe { sys::ucp_listener_query(self.raw, &mut attr) })
            .check("ucp_listener_query")?;
        sockaddr_to(&attr.sockaddr).ok_or(UcxError {
            op: "ucp_listener_query",
            status: Status(sys::UCS_ERR_INVALID_ADDR),
        })
    }
}

impl Drop for UcpListener {
    fn drop(&mut self) {
        // SAFETY: listener is live and destroyed once.
        unsafe { sys::ucp_listener_destroy(self.raw) }
    }
}

/// The client address of a connection request.
pub(crate) fn conn_request_client(req: sys::ucp_conn_request_h) -> Option<SocketAddr> {
    let mut attr = sys::ucp_conn_request_attr_t {
        field_mask: sys::UCP_CONN_REQUEST_ATTR_FIELD_CLIENT_ADDR as u64,
        ..Default::default()
    };
    // SAFETY: req is a pending connection request handed to our listener callback and not yet
    // consumed by ucp_ep_create or ucp_listener_reject.
    let s = Status(unsafe { sys::ucp_conn_request_query(req, &mut attr) });
    if !s.is_ok() {
        return None;
    }
    sockaddr_to(&attr.client_address)
}

/// Where an endpoint goes: a listener's socket address, or a connection request it accepts.
pub(crate) enum EpTarget {
    Connect(SocketAddr),
    Accept(sys::ucp_conn_request_h),
}

/// Create an endpoint with error-handling mode `mode` (both sides must use the same mode, see
/// `err_mode`); `err_cb` gets `arg` and the endpoint when UCX reports the endpoint failed.
///
/// # Safety
/// `arg` must stay valid until the endpoint is closed; an `Accept` request must be pending.
pub(crate) unsafe fn ep_create(
    worker: &Worker,
    target: EpTarget,
    mode: ErrMode,
    err_cb: sys::ucp_err_handler_cb_t,
    arg: *mut c_void,
) -> Result<sys::ucp_ep_h, UcxError> {
    let mut params = sys::ucp_ep_params_t {
        field_mask: (sys::UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE
            | sys::UCP_EP_PARAM_FIELD_ERR_HANDLER) as u64,
        err_mode: match mode {
            ErrMode::Peer => sys::UCP_ERR_HANDLING_MODE_PEER,
            ErrMode::None => sys::UCP_ERR_HANDLING_MODE_NONE,
        },
        err_handler: sys::ucp_err_handler_t { cb: err_cb, arg },
        ..Default::default()
    };
    let storage;
    match target {
        EpTarget::Connect(addr) => {
            let (st, len) = sockaddr_from(addr);
            storage = st;
            params.field_mask |=
                (sys::UCP_EP_PARAM_FIELD_SOCK_ADDR | sys::UCP_EP_PARAM_FIELD_FLAGS) as u64;
            params.flags = sys::UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
            params.sockaddr = sys::ucs_sock_addr_t {
                addr: (&storage as *const sys::sockaddr_storage).cast(),
                addrlen: len,
            };
        }
        EpTarget::Accept(req) => {
            params.field_mask |= sys::UCP_EP_PARAM_FIELD_CONN_REQUEST as u64;
            params.conn_request = req;
        }
    }
    let mut ep: sys::ucp_ep_h = std::ptr::null_mut();
    // SAFETY: worker is live; params and the sockaddr it may point to live for the call; the
    // caller guarantees arg and the request.
    Status(unsafe { sys::ucp_ep_create(worker.raw(), &params, &mut ep) }).check("ucp_ep_create")?;
    Ok(ep)
}

unsafe extern "C" {
    // Not in the generated bindings (it takes a C `FILE *`).
    fn ucp_ep_print_info(ep: sys::ucp_ep_h, stream: *mut libc::FILE);
}

/// What `ucp_ep_print_info` says about an endpoint: its configuration and lanes, e.g.
/// `lane[1]: 6:cma/memory.0 md[6] ... am_bw#0`.
pub(crate) fn ep_info(ep: sys::ucp_ep_h) -> String {
    let mut buf: *mut libc::c_char = std::ptr::null_mut();
    let mut len: libc::size_t = 0;
    // SAFETY: open_memstream takes two out pointers and returns a stream or NULL.
    let f = unsafe { libc::open_memstream(&mut buf, &mut len) };
    if f.is_null() {
        return String::new();
    }
    // SAFETY: ep is a live endpoint; f is a writable stream until fclose.
    unsafe { ucp_ep_print_info(ep, f) };
    // SAFETY: f came from open_memstream and is closed once; afterwards buf holds len bytes
    // (NUL-terminated) that we own and free once.
    unsafe {
        libc::fclose(f);
        let out = if buf.is_null() {
            String::new()
        } else {
            String::from_utf8_lossy(std::slice::from_raw_parts(buf.cast::<u8>(), len)).into_owned()
        };
        libc::free(buf.cast());
        out
    }
}

/// Whether the endpoint has a single-copy shared-memory transport (`cma`, `knem`, `xpmem`)
/// among its lanes, i.e. UCX has shared memory for it: only between processes of one host,
/// and in UCX 1.13 only without peer error handling. (UCX may still move an active message's
/// rendezvous through `sysv` with `am_bcopy`, as a profile at 1 MiB showed.)
pub(crate) fn ep_has_single_copy(ep: sys::ucp_ep_h) -> bool {
    let info = ep_info(ep);
    ["cma/", "knem/", "xpmem/"].iter().any(|t| info.contains(t))
}

/// The local socket address of a client-server endpoint, once known.
pub(crate) fn ep_local_addr(ep: sys::ucp_ep_h) -> Option<SocketAddr> {
    let mut attr = sys::ucp_ep_attr_t {
        field_mask: sys::UCP_EP_ATTR_FIELD_LOCAL_SOCKADDR as u64,
        ..Default::default()
    };
    // SAFETY: ep is a live endpoint; attr is a valid out struct.
    let s = Status(unsafe { sys::ucp_ep_query(ep, &mut attr) });
    if !s.is_ok() {
        return None;
    }
    sockaddr_to(&attr.local_sockaddr)
}

/// Start closing an endpoint: `force` drops it at once (its peer sees an error), otherwise
/// outstanding operations are flushed first. Returns the request to wait for, if any.
///
/// # Safety
/// `ep` must be live and is invalid afterwards.
pub(crate) unsafe fn ep_close(ep: sys::ucp_ep_h, force: bool) -> StatusPtr {
    let mut param = sys::ucp_request_param_t::default();
    if force {
        param.op_attr_mask = sys::UCP_OP_ATTR_FIELD_FLAGS;
        param.flags = sys::UCP_EP_CLOSE_FLAG_FORCE;
    }
    // SAFETY: the caller guarantees ep; param is valid for the call.
    StatusPtr::from_raw(unsafe { sys::ucp_ep_close_nbx(ep, &param) })
}

/// Release a request handle once its operation has completed (or its callback has run).
///
/// # Safety
/// `req` must be a request returned by a `*_nbx` call and not yet freed.
pub(crate) unsafe fn request_free(req: *mut c_void) {
    // SAFETY: guaranteed by the caller.
    unsafe { sys::ucp_request_free(req) }
}

/// Whether a request is still in progress.
///
/// # Safety
/// `req` must be a live request handle.
pub(crate) unsafe fn request_in_progress(req: *mut c_void) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe { sys::ucp_request_check_status(req) == sys::UCS_INPROGRESS }
}

fn sockaddr_from(addr: SocketAddr) -> (sys::sockaddr_storage, sys::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut storage: sys::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe {
                std::ptr::write(
                    (&mut storage as *mut sys::sockaddr_storage).cast::<libc::sockaddr_in>(),
                    sin,
                )
            };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe {
                std::ptr::write(
                    (&mut storage as *mut sys::sockaddr_storage).cast::<libc::sockaddr_in6>(),
                    sin6,
                )
            };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as sys::socklen_t)
}

fn sockaddr_to(storage: &sys::sockaddr_storage) -> Option<SocketAddr> {
    let p = (storage as *const sys::sockaddr_storage).cast::<u8>();
    match storage.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in; read_unaligned copes
            // with any alignment.
            let sin = unsafe { std::ptr::read_unaligned(p.cast::<libc::sockaddr_in>()) };
            Some(SocketAddr::from((
                sin.sin_addr.s_addr.to_ne_bytes(),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { std::ptr::read_unaligned(p.cast::<libc::sockaddr_in6>()) };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                sin6.sin6_addr.s6_addr.into(),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_round_trip() {
        for s in ["127.0.0.1:13337", "10.1.2.3:0", "[::1]:8786", "[fe80::1]:1"] {
            let a: SocketAddr = s.parse().unwrap();
            let (st, len) = sockaddr_from(a);
            assert!(len as usize >= size_of::<libc::sockaddr_in>());
            assert_eq!(sockaddr_to(&st), Some(a), "{s}");
        }
    }

    #[test]
    fn config_settings_replace_by_name() {
        let c = UcxConfig::new()
            .tls("tcp")
            .set("NET_DEVICES", "lo")
            .tls("sm,tcp");
        assert_eq!(
            c.settings(),
            &[
                ("NET_DEVICES".to_string(), "lo".to_string()),
                ("TLS".to_string(), "sm,tcp".to_string())
            ]
        );
    }
}
