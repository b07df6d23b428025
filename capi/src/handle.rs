//! The client handle and the boundary every exported function runs behind: the opaque
//! `ipc_client` (a [`BlockingClient`] and its last error), the guard that keeps two
//! threads out of one handle, the catching of panics, where a failure's message is
//! recorded (on the handle, or for calls without a usable one, in the calling thread),
//! and the functions that make, close and question a handle.

use std::any::Any;
use std::cell::{RefCell, UnsafeCell};
use std::ffi::{CStr, CString, OsStr, c_char, c_int};
use std::ops::{Deref, DerefMut};
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use client::BlockingClient;

use crate::status::{Failure, IPC_ERR_BUSY, IPC_ERR_INTERNAL, IPC_OK};

/// The name the daemon logs for connections made through this library.
const CLIENT_NAME: &str = "libipc_client";

/// A connection to ipcd. Opaque: made by `ipc_connect`, given back with `ipc_close`.
/// Not for two threads at once: a call made while another thread is in a call on the
/// same client fails with `IPC_ERR_BUSY` and touches nothing.
#[derive(Debug)]
pub struct ipc_client {
    /// Set while a call is inside: C gives no guarantee that a handle is used by one
    /// thread at a time, so the library checks instead of trusting it.
    busy: AtomicBool,
    /// Reached only through [`Inside`], which `busy` makes exclusive.
    session: UnsafeCell<Session>,
}

/// What a handle holds.
#[derive(Debug)]
struct Session {
    client: BlockingClient,
    /// The last failure's message on this client, for `ipc_last_error(client)`.
    last_error: CString,
    /// A call panicked midway: the client's state may be half-changed, so every later
    /// call is refused rather than run on it.
    poisoned: bool,
}

/// Exclusive use of a handle's session while a call is inside it; leaving (including by
/// unwinding) lets the next call in.
struct Inside<'a> {
    handle: &'a ipc_client,
}

impl ipc_client {
    fn new(client: BlockingClient) -> Self {
        Self {
            busy: AtomicBool::new(false),
            session: UnsafeCell::new(Session {
                client,
                last_error: CString::default(),
                poisoned: false,
            }),
        }
    }

    /// Enters the handle, or `None` while another call is inside it.
    fn enter(&self) -> Option<Inside<'_>> {
        let taken = self.busy.swap(true, Ordering::Acquire);
        (!taken).then_some(Inside { handle: self })
    }
}

impl Deref for Inside<'_> {
    type Target = Session;

    fn deref(&self) -> &Session {
        // SAFETY: `busy` was false and is now ours until `drop`, so no other reference to
        // the session exists.
        unsafe { &*self.handle.session.get() }
    }
}

impl DerefMut for Inside<'_> {
    fn deref_mut(&mut self) -> &mut Session {
        // SAFETY: as in `deref`; `&mut self` makes this the only live reference.
        unsafe { &mut *self.handle.session.get() }
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.handle.busy.store(false, Ordering::Release);
    }
}

impl Session {
    /// Runs `body` on the client, recording a failure's message on the handle.
    fn run(&mut self, body: impl FnOnce(&mut BlockingClient) -> Outcome) -> c_int {
        if self.poisoned {
            return self.fail(Failure::new(
                IPC_ERR_INTERNAL,
                "an earlier call on this client failed inside libipc_client; close it",
            ));
        }
        match catch_unwind(AssertUnwindSafe(|| body(&mut self.client))) {
            Ok(Ok(status)) => status,
            Ok(Err(failure)) => self.fail(failure),
            Err(panic) => {
                self.poisoned = true;
                self.fail(panicked(panic))
            }
        }
    }

    fn fail(&mut self, failure: Failure) -> c_int {
        self.last_error = c_string(&failure.message);
        failure.code
    }
}

/// What the body of an exported function gives: a status (`IPC_OK`, or another
/// non-negative one), or why it failed.
pub(crate) type Outcome = Result<c_int, Failure>;

thread_local! {
    /// The last failure of a call that had no usable client, for `ipc_last_error(NULL)`.
    static THREAD_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Runs the body of an exported function that has no client: a failure's message goes
/// to the calling thread's last error, and a panic becomes `IPC_ERR_INTERNAL` instead of
/// unwinding into C (which would abort the program).
pub(crate) fn boundary(body: impl FnOnce() -> Outcome) -> c_int {
    let failure = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(status)) => return status,
        Ok(Err(failure)) => failure,
        Err(panic) => panicked(panic),
    };
    set_thread_error(&failure.message);
    failure.code
}

/// Runs the body of an exported function on the client `c`. A NULL client and a busy
/// one are failures of the calling thread (the handle belongs to no one, or to another
/// thread); everything else is recorded on the handle.
pub(crate) fn with_client(
    c: *mut ipc_client,
    body: impl FnOnce(&mut BlockingClient) -> Outcome,
) -> c_int {
    boundary(|| {
        // SAFETY: a non-NULL handle came from `ipc_connect` and is not closed yet: the
        // caller's promise (the header's first rule). Only a shared reference is made;
        // the session is reached through the busy guard.
        let handle = unsafe { c.as_ref() }.ok_or_else(|| Failure::null("the client"))?;
        let mut inside = handle.enter().ok_or_else(|| {
            Failure::new(
                IPC_ERR_BUSY,
                "the client is in a call made by another thread; a client is for one \
                 thread at a time",
            )
        })?;
        Ok(inside.run(body))
    })
}

fn set_thread_error(message: &str) {
    // `try_with`: a call made while the thread is being torn down has nowhere to keep it.
    let _ = THREAD_ERROR.try_with(|e| *e.borrow_mut() = c_string(message));
}

/// The failure of a call that panicked, with the panic's message where it has one.
fn panicked(panic: Box<dyn Any + Send>) -> Failure {
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic");
    Failure::new(
        IPC_ERR_INTERNAL,
        format!("internal error in libipc_client: {what}"),
    )
}

/// `text` as a C string; a NUL in it (C cannot carry one) is written as `\0`.
pub(crate) fn c_string(text: &str) -> CString {
    CString::new(text.replace('\0', "\\0")).expect("no NUL is left")
}

/// Connects to ipcd. `socket_path` NULL: the default socket — `$IPCD_SOCKET`; else the
/// caller's per-user daemon (`$XDG_RUNTIME_DIR/ipcd/ipcd.sock`) when one listens there
/// and the caller is not root; else the system daemon's `/run/ipcd/ipcd.sock`.
///
/// On success `*out` is the new client, to be closed with `ipc_close`; on failure it is
/// NULL and `ipc_last_error(NULL)` says why (naming the path for
/// `IPC_ERR_NOT_REACHABLE`). The client does not reconnect by itself: once its
/// connection breaks, every call fails with `IPC_ERR_DISCONNECTED`, and its leases have
/// ended.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipc_connect(
    socket_path: *const c_char,
    out: *mut *mut ipc_client,
) -> c_int {
    boundary(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: `out` is not NULL and points to writable storage for a pointer (the
        // caller's promise).
        unsafe { out.write(std::ptr::null_mut()) };
        let path = if socket_path.is_null() {
            client::default_socket_path()
        } else {
            // SAFETY: a non-NULL `socket_path` is a NUL-terminated string (the caller's
            // promise). A path is bytes, not text: any bytes go.
            let bytes = unsafe { CStr::from_ptr(socket_path) }.to_bytes();
            PathBuf::from(OsStr::from_bytes(bytes))
        };
        let client = BlockingClient::connect_named(&path, CLIENT_NAME)?;
        let handle = Box::into_raw(Box::new(ipc_client::new(client)));
        // SAFETY: checked above.
        unsafe { out.write(handle) };
        Ok(IPC_OK)
    })
}

/// Closes a client made by `ipc_connect` and frees it. Messages it held on a lease and
/// had not acknowledged go back to their mailboxes. NULL is allowed and does nothing; so
/// does closing a client another thread is still in a call on (that is a bug in the
/// program: the client is left as it is rather than freed under the other thread).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipc_close(c: *mut ipc_client) {
    let _ = boundary(|| {
        // SAFETY: a non-NULL handle came from `ipc_connect` and is not closed yet.
        let Some(handle) = (unsafe { c.as_ref() }) else {
            return Ok(IPC_OK);
        };
        let Some(inside) = handle.enter() else {
            return Err(Failure::new(
                IPC_ERR_BUSY,
                "ipc_close: the client is in a call made by another thread; not closed",
            ));
        };
        drop(inside);
        // SAFETY: it came from `Box::into_raw` in `ipc_connect`, and no call is inside it.
        drop(unsafe { Box::from_raw(c) });
        Ok(IPC_OK)
    });
}

/// The message of the last failure: with a client, of the last call on it that failed;
/// with NULL, of the calling thread's last call that failed without a usable client
/// (`ipc_connect`, a NULL client, `IPC_ERR_BUSY`). One line, NUL-terminated, owned by
/// the library: valid until the next call on that client (with NULL, the thread's next
/// such failure). Never NULL: "" when nothing failed yet. Success does not clear it,
/// as with `errno`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipc_last_error(c: *const ipc_client) -> *const c_char {
    let text = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: a non-NULL handle came from `ipc_connect` and is not closed yet.
        match unsafe { c.as_ref() } {
            None => THREAD_ERROR
                .try_with(|e| e.borrow().as_ptr())
                .unwrap_or(c"".as_ptr()),
            Some(handle) => match handle.enter() {
                // The pointer outlives `inside`: the string stays until the session's
                // next failure, which only a later call on this client can bring.
                Some(inside) => inside.last_error.as_ptr(),
                None => c"the client is in a call made by another thread".as_ptr(),
            },
        }
    }));
    text.unwrap_or(c"internal error in libipc_client".as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{IPC_ERR_NOT_REACHABLE, IPC_ERR_NULL};

    fn thread_error() -> String {
        // SAFETY: ipc_last_error returns a NUL-terminated string.
        let text = unsafe { CStr::from_ptr(ipc_last_error(std::ptr::null())) };
        text.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_is_a_status_not_an_abort() {
        let status = boundary(|| panic!("kaboom"));
        assert_eq!(status, IPC_ERR_INTERNAL);
        assert_eq!(thread_error(), "internal error in libipc_client: kaboom");
    }

    #[test]
    fn connect_failures_name_the_path() {
        let mut out = std::ptr::dangling_mut();
        let path = c"/nonexistent/ipcd.sock";
        // SAFETY: valid arguments.
        let status = unsafe { ipc_connect(path.as_ptr(), &mut out) };
        assert_eq!(status, IPC_ERR_NOT_REACHABLE);
        assert!(out.is_null());
        assert!(
            thread_error().contains("/nonexistent/ipcd.sock"),
            "{}",
            thread_error()
        );
        // SAFETY: NULL `out` is refused before anything is written.
        let status = unsafe { ipc_connect(path.as_ptr(), std::ptr::null_mut()) };
        assert_eq!(status, IPC_ERR_NULL);
        assert_eq!(thread_error(), "out is NULL");
    }

    /// A client whose call panicked refuses every later call; a client another thread
    /// is inside refuses the call without touching it.
    #[test]
    fn a_panicked_client_is_poisoned_and_a_busy_one_refused() {
        let daemon = ipcd_tests::TestDaemon::start();
        let path = CString::new(daemon.socket().as_os_str().as_bytes()).unwrap();
        let mut c = std::ptr::null_mut();
        // SAFETY: valid arguments.
        assert_eq!(unsafe { ipc_connect(path.as_ptr(), &mut c) }, IPC_OK);
        // SAFETY: `c` is open until the `ipc_close` below.
        let handle = unsafe { &*c };
        let last_error = || {
            // SAFETY: `c` is open; the string is NUL-terminated.
            let text = unsafe { CStr::from_ptr(ipc_last_error(c)) };
            text.to_string_lossy().into_owned()
        };

        let inside = handle.enter().expect("nobody is in it");
        assert_eq!(with_client(c, |_| Ok(IPC_OK)), IPC_ERR_BUSY);
        assert!(
            thread_error().contains("another thread"),
            "{}",
            thread_error()
        );
        drop(inside);
        assert_eq!(
            with_client(c, |client| Ok(client.list()?.len() as c_int)),
            0
        );

        assert_eq!(with_client(c, |_| panic!("midway")), IPC_ERR_INTERNAL);
        assert_eq!(last_error(), "internal error in libipc_client: midway");
        assert_eq!(with_client(c, |_| Ok(IPC_OK)), IPC_ERR_INTERNAL);
        assert!(last_error().contains("close it"), "{}", last_error());
        // SAFETY: made by ipc_connect, closed once.
        unsafe { ipc_close(c) };
    }

    #[test]
    fn a_nul_in_a_message_is_spelled_out() {
        assert_eq!(c_string("a\0b").as_bytes(), b"a\\0b");
    }
}
