//! Reading C arguments into Rust values, each refusal a [`Failure`] naming the argument:
//! strings (NUL-terminated, UTF-8), byte ranges, timeouts, flags, and the output
//! pointers a function writes. Every function checks all its pointers before it asks the
//! daemon anything, so a bad argument never leaves an operation done and its result
//! lost.

use std::ffi::{CStr, c_char, c_int, c_void};

use client::Wait;

use crate::status::Failure;

/// The UTF-8 string at `ptr`, the argument called `what`.
///
/// # Safety
/// `ptr` is NULL or a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: not NULL, and NUL-terminated by the caller's promise.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    std::str::from_utf8(bytes).map_err(|e| Failure::invalid(format!("{what} is not UTF-8: {e}")))
}

/// The `len` bytes at `data`, the argument called `what`; NULL only with `len` 0.
///
/// # Safety
/// With `len` > 0, `data` points to `len` readable bytes that outlive `'a`.
pub(crate) unsafe fn bytes<'a>(
    data: *const c_void,
    len: usize,
    what: &str,
) -> Result<&'a [u8], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if data.is_null() {
        return Err(Failure::invalid(format!(
            "{what} is NULL with a length of {len}"
        )));
    }
    if isize::try_from(len).is_err() {
        return Err(Failure::invalid(format!(
            "a length of {len} is larger than memory"
        )));
    }
    // SAFETY: not NULL, `len` fits an allocation, and readable by the caller's promise.
    Ok(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) })
}

/// A timeout in milliseconds as a [`Wait`]: -1 for ever, 0 not at all, more for that
/// long.
pub(crate) fn wait(timeout_ms: i64) -> Result<Wait, Failure> {
    match timeout_ms {
        -1 => Ok(Wait::Forever),
        0 => Ok(Wait::NoWait),
        ms if ms > 0 => Ok(Wait::TimeoutMs(ms.unsigned_abs())),
        ms => Err(Failure::invalid(format!(
            "timeout_ms {ms}: -1 waits for ever, 0 does not wait, more waits that long"
        ))),
    }
}

/// Refuses flags outside `allowed`: a flag this function does not know would otherwise
/// be silently ignored, and a program would believe it was in force.
pub(crate) fn flags(flags: c_int, allowed: c_int, function: &str) -> Result<(), Failure> {
    let unknown = flags & !allowed;
    if unknown == 0 {
        return Ok(());
    }
    Err(Failure::invalid(format!(
        "{function}: flags {unknown:#x} are not among those it takes ({allowed:#x})"
    )))
}

/// A required output pointer, the argument called `what`.
pub(crate) fn required<T>(ptr: *mut T, what: &str) -> Result<Out<T>, Failure> {
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    Ok(Out(ptr))
}

/// An output pointer that may be NULL (the caller does not want that result).
pub(crate) fn optional<T>(ptr: *mut T) -> Option<Out<T>> {
    (!ptr.is_null()).then_some(Out(ptr))
}

/// Where a function writes one of its results: checked not to be NULL.
#[derive(Debug)]
pub(crate) struct Out<T>(*mut T);

impl<T> Out<T> {
    /// Writes `value` without reading (or dropping) what was there: C's output
    /// structures are often uninitialised.
    ///
    /// # Safety
    /// The pointer the function was given points to writable, aligned storage for a `T`.
    pub unsafe fn put(&self, value: T) {
        // SAFETY: not NULL (checked on construction); writable by the caller's promise.
        unsafe { self.0.write(value) }
    }
}

/// Writes `value` through an optional output pointer, if given.
///
/// # Safety
/// As [`Out::put`].
pub(crate) unsafe fn put_optional<T>(out: Option<&Out<T>>, value: T) {
    if let Some(out) = out {
        // SAFETY: the caller's promise.
        unsafe { out.put(value) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{IPC_ERR_INVALID, IPC_ERR_NULL};

    #[test]
    fn arguments_are_checked() {
        // SAFETY: valid or NULL pointers, as each case says.
        unsafe {
            assert_eq!(text(c"jobs".as_ptr(), "name").unwrap(), "jobs");
            assert_eq!(
                text(std::ptr::null(), "name").unwrap_err().code,
                IPC_ERR_NULL
            );
            let latin1 = [b'j', 0xe9, 0];
            let e = text(latin1.as_ptr().cast(), "name").unwrap_err();
            assert_eq!(e.code, IPC_ERR_INVALID);
            assert!(bytes(std::ptr::null(), 0, "data").unwrap().is_empty());
            assert_eq!(
                bytes(std::ptr::null(), 3, "data").unwrap_err().code,
                IPC_ERR_INVALID
            );
        }
        assert_eq!(wait(-1).unwrap(), Wait::Forever);
        assert_eq!(wait(0).unwrap(), Wait::NoWait);
        assert_eq!(wait(250).unwrap(), Wait::TimeoutMs(250));
        assert_eq!(wait(-2).unwrap_err().code, IPC_ERR_INVALID);
        assert!(flags(0b101, 0b111, "f").is_ok());
        assert_eq!(flags(0b1000, 0b111, "f").unwrap_err().code, IPC_ERR_INVALID);
        assert_eq!(
            required::<u64>(std::ptr::null_mut(), "out")
                .unwrap_err()
                .code,
            IPC_ERR_NULL
        );
    }
}
