//! UCX status codes as typed errors, and the status-pointer macros UCX defines in C.

use crate::sys;
use std::ffi::{CStr, c_void};
use std::fmt;

/// A UCX status code (`ucs_status_t`). Printed with UCX's own description.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub(crate) sys::ucs_status_t);

impl Status {
    /// The raw code (0 = OK, 1 = in progress, negative = error).
    pub fn code(self) -> i8 {
        self.0
    }

    /// True for `UCS_OK`.
    pub fn is_ok(self) -> bool {
        self.0 == sys::UCS_OK
    }

    /// UCX's description of the status, e.g. "Endpoint timeout".
    pub fn message(self) -> String {
        // SAFETY: ucs_status_string accepts any status value (unknown ones give a generic
        // text) and returns a pointer to a static, NUL-terminated string.
        let ptr = unsafe { sys::ucs_status_string(self.0) };
        if ptr.is_null() {
            return format!("UCX status {}", self.0);
        }
        // SAFETY: non-null, static and NUL-terminated (see above).
        unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned()
    }

    /// `Ok(())` for `UCS_OK`, else the error for `op`.
    pub(crate) fn check(self, op: &'static str) -> Result<(), UcxError> {
        if self.is_ok() {
            Ok(())
        } else {
            Err(UcxError { op, status: self })
        }
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Status({}: {})", self.0, self.message())
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

/// A UCX call failed: which one, and the status it returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("ucx {op}: {status}")]
pub struct UcxError {
    /// The UCX operation, e.g. "ucp_listener_create" or "endpoint".
    pub op: &'static str,
    /// What UCX said.
    pub status: Status,
}

/// What a `ucs_status_ptr_t` returned by a `*_nbx` call means.
pub(crate) enum StatusPtr {
    /// Completed in place; no callback will run.
    Done,
    /// A request that completes through its callback.
    Request(*mut c_void),
    /// Failed at once.
    Error(Status),
}

impl StatusPtr {
    /// Decode the C macros `UCS_PTR_IS_ERR` / `UCS_PTR_IS_PTR` / `UCS_PTR_STATUS`: errors are
    /// encoded as the (negative) status cast to a pointer, i.e. the top `-UCS_ERR_LAST` addresses.
    pub(crate) fn from_raw(p: sys::ucs_status_ptr_t) -> StatusPtr {
        let last = sys::UCS_ERR_LAST as isize as usize;
        let addr = p as usize;
        if addr == 0 {
            StatusPtr::Done
        } else if addr >= last {
            StatusPtr::Error(Status(addr as isize as sys::ucs_status_t))
        } else {
            StatusPtr::Request(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_pointers_decode_like_the_c_macros() {
        assert!(matches!(
            StatusPtr::from_raw(std::ptr::null_mut()),
            StatusPtr::Done
        ));
        let err = sys::UCS_ERR_ENDPOINT_TIMEOUT as isize as usize as *mut c_void;
        match StatusPtr::from_raw(err) {
            StatusPtr::Error(s) => assert_eq!(s.0, sys::UCS_ERR_ENDPOINT_TIMEOUT),
            _ => panic!("error pointer not recognised"),
        }
        let mut x = 0u64;
        let p = (&mut x as *mut u64).cast::<c_void>();
        assert!(matches!(StatusPtr::from_raw(p), StatusPtr::Request(q) if q == p));
    }

    #[test]
    fn errors_carry_ucx_text() {
        let e = Status(sys::UCS_ERR_UNREACHABLE)
            .check("ucp_ep_create")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "ucx ucp_ep_create: Destination is unreachable"
        );
        assert!(Status(sys::UCS_OK).check("x").is_ok());
    }
}
