//! `libipcd-sysv.so`: System V message queues on ipcd, for programs that were written
//! for the kernel's. Loaded with `LD_PRELOAD`, it takes over `msgget`, `msgsnd`, `msgrcv`
//! and `msgctl` and answers them through the C ABI of `libipc_client` (the `ipc-capi`
//! crate) and the daemon (`$IPCD_SOCKET`, else the default socket), with the kernel's return values and `errno`s wherever a program can see
//! them. A queue is the mailbox `sysv/<key>` (`IPC_PRIVATE`: `sysv/private/…`), so
//! `ipcctl` shows and manages it; `IPCD_SYSV_DURABLE=1` makes the queues it creates
//! durable.
//!
//! - `abi.rs`: the C ABI's functions as the shim calls them;
//! - `queue.rs`: one process's connection and its map of queue ids to mailboxes;
//! - `calls.rs`: the four calls, each checked and translated as the kernel would;
//! - `kernel.rs`: what the kernel's side looks like — its limits, `msqid_ds`, `msginfo`,
//!   the `errno` of each failure.
//!
//! Every exported function catches a panic at the boundary (it becomes `EIO`): a bug
//! here must not unwind into a C program.

mod abi;
mod calls;
mod kernel;
mod queue;

use std::panic::{AssertUnwindSafe, catch_unwind};

use libc::{c_int, c_long, c_void, key_t, msqid_ds, size_t, ssize_t};

/// Runs `call`, setting `errno` and returning -1 when it fails (or panics). On success
/// `errno` is as the program left it, as the kernel's calls leave it: what the socket
/// said along the way (`EAGAIN` from a read that found nothing yet) is not the
/// program's business.
fn guarded<T: From<i8>>(call: impl FnOnce() -> Result<T, c_int>) -> T {
    // SAFETY: errno is the calling thread's own.
    let before = unsafe { *libc::__errno_location() };
    let errno = match catch_unwind(AssertUnwindSafe(call)) {
        Ok(Ok(value)) => {
            // SAFETY: as above.
            unsafe { *libc::__errno_location() = before };
            return value;
        }
        Ok(Err(errno)) => errno,
        Err(_) => libc::EIO,
    };
    // SAFETY: errno is the calling thread's own.
    unsafe { *libc::__errno_location() = errno };
    T::from(-1)
}

/// `msgget(2)`.
#[unsafe(no_mangle)]
pub extern "C" fn msgget(key: key_t, msgflg: c_int) -> c_int {
    guarded(|| calls::msgget(key, msgflg))
}

/// `msgsnd(2)`.
///
/// # Safety
/// `msgp` must be NULL or point to a `long` followed by `msgsz` readable bytes, as for
/// the kernel's `msgsnd`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msgsnd(
    msqid: c_int,
    msgp: *const c_void,
    msgsz: size_t,
    msgflg: c_int,
) -> c_int {
    guarded(|| {
        if msgp.is_null() {
            return Err(libc::EFAULT);
        }
        // Before a slice is made of it: a size past msgmax is refused, not read.
        if msgsz as u64 > kernel::limits().msgmax {
            return Err(libc::EINVAL);
        }
        // SAFETY: the caller promises a `long` then `msgsz` bytes at `msgp`.
        let (mtype, text) = unsafe {
            let mtype = msgp.cast::<c_long>().read_unaligned();
            let text =
                std::slice::from_raw_parts(msgp.cast::<u8>().add(size_of::<c_long>()), msgsz);
            (mtype, text)
        };
        calls::msgsnd(msqid, mtype, text, msgflg).map(|()| 0)
    })
}

/// `msgrcv(2)`.
///
/// # Safety
/// `msgp` must be NULL or point to a `long` followed by `msgsz` writable bytes, as for
/// the kernel's `msgrcv`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msgrcv(
    msqid: c_int,
    msgp: *mut c_void,
    msgsz: size_t,
    msgtyp: c_long,
    msgflg: c_int,
) -> ssize_t {
    guarded(|| {
        if isize::try_from(msgsz).is_err() {
            // A negative size as the kernel reads it.
            return Err(libc::EINVAL);
        }
        if msgp.is_null() {
            return Err(libc::EFAULT);
        }
        // SAFETY: the caller promises a `long` then `msgsz` writable bytes at `msgp`.
        let (mtype, len) = unsafe {
            let text = msgp.cast::<u8>().add(size_of::<c_long>());
            calls::msgrcv(msqid, text, msgsz, msgtyp, msgflg)?
        };
        // SAFETY: as above.
        unsafe { msgp.cast::<c_long>().write_unaligned(mtype) };
        Ok(len as ssize_t)
    })
}

/// `msgctl(2)`.
///
/// # Safety
/// `buf` must be NULL or point to a `struct msqid_ds` (a `struct msginfo` for
/// `IPC_INFO` and `MSG_INFO`), as for the kernel's `msgctl`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msgctl(msqid: c_int, cmd: c_int, buf: *mut msqid_ds) -> c_int {
    guarded(|| calls::msgctl(msqid, cmd, buf))
}
