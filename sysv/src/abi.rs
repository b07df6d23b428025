//! The C ABI (`ipc-capi`, the functions of `libipc_client`) as the shim calls it: one
//! connection handle closed on drop, and each function the shim needs wrapped so that a
//! failure comes back as its `IPC_ERR_*` code with the library's one-line message.

use std::ffi::{CStr, CString, c_int};

use ipc_capi::{
    IPC_EXCEPT, IPC_EXISTED, IPC_INTERRUPTIBLE, IPC_TRUNCATE, ipc_changes, ipc_client, ipc_close,
    ipc_connect, ipc_create, ipc_create_options, ipc_last_error, ipc_list, ipc_list_free,
    ipc_mailbox_info, ipc_message, ipc_message_free, ipc_peek_at, ipc_recv_into, ipc_remove,
    ipc_send, ipc_set, ipc_stat,
};

/// A call the library refused: its code (`IPC_ERR_*`) and what it said.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: c_int,
    pub message: String,
}

/// A mailbox's name as the C ABI takes it.
pub fn c_name(name: &str) -> CString {
    CString::new(name).expect("mailbox names hold no NUL")
}

/// The name in a mailbox's info.
pub fn name_of(info: &ipc_mailbox_info) -> String {
    // SAFETY: the library NUL-terminates the name within the array.
    unsafe { CStr::from_ptr(info.name.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// One connection to the daemon, closed when dropped.
#[derive(Debug)]
pub struct Connection(*mut ipc_client);

impl Drop for Connection {
    fn drop(&mut self) {
        // SAFETY: a handle from ipc_connect, closed once.
        unsafe { ipc_close(self.0) };
    }
}

/// What a call returned: its status, or a failure with the library's message.
fn status(c: *mut ipc_client, code: c_int) -> Result<c_int, Failure> {
    if code >= 0 {
        return Ok(code);
    }
    // SAFETY: NULL or a live handle; the text is valid until the next call on it.
    let message = unsafe { CStr::from_ptr(ipc_last_error(c)) }
        .to_string_lossy()
        .into_owned();
    Err(Failure { code, message })
}

/// The wait of a send or receive: `IPC_NOWAIT`, or for as long as it takes.
fn timeout(nowait: bool) -> i64 {
    if nowait { 0 } else { -1 }
}

impl Connection {
    /// Connects to the default socket (`$IPCD_SOCKET`, …).
    pub fn open() -> Result<Self, Failure> {
        let mut c = std::ptr::null_mut();
        // SAFETY: a NULL path is the default; `c` is written.
        status(std::ptr::null_mut(), unsafe {
            ipc_connect(std::ptr::null(), &mut c)
        })?;
        Ok(Self(c))
    }

    pub fn stat(&mut self, name: &str) -> Result<ipc_mailbox_info, Failure> {
        // SAFETY: all zeroes is a valid ipc_mailbox_info (integers and a char array).
        let mut info: ipc_mailbox_info = unsafe { std::mem::zeroed() };
        // SAFETY: a live handle, a C string, a writable structure.
        status(self.0, unsafe {
            ipc_stat(self.0, c_name(name).as_ptr(), &mut info)
        })?;
        Ok(info)
    }

    /// Creates a mailbox; `Ok(false)` if it existed and `exist_ok` was set.
    pub fn create(&mut self, name: &str, options: &ipc_create_options) -> Result<bool, Failure> {
        // SAFETY: a live handle, a C string, a readable structure.
        let code = status(self.0, unsafe {
            ipc_create(self.0, c_name(name).as_ptr(), options)
        })?;
        Ok(code != IPC_EXISTED)
    }

    pub fn remove(&mut self, name: &str) -> Result<(), Failure> {
        // SAFETY: a live handle and a C string.
        status(self.0, unsafe { ipc_remove(self.0, c_name(name).as_ptr()) }).map(drop)
    }

    pub fn set(&mut self, name: &str, changes: &ipc_changes) -> Result<(), Failure> {
        // SAFETY: a live handle, a C string, a readable structure.
        status(self.0, unsafe {
            ipc_set(self.0, c_name(name).as_ptr(), changes)
        })
        .map(drop)
    }

    /// Every mailbox the caller may see.
    pub fn list(&mut self) -> Result<Vec<ipc_mailbox_info>, Failure> {
        let (mut list, mut count) = (std::ptr::null_mut(), 0);
        // SAFETY: a live handle and two writable places.
        status(self.0, unsafe { ipc_list(self.0, &mut list, &mut count) })?;
        let copied = if list.is_null() {
            Vec::new()
        } else {
            // SAFETY: the library gave `count` structures at `list`.
            unsafe { std::slice::from_raw_parts(list, count) }.to_vec()
        };
        // SAFETY: what ipc_list gave, freed once.
        unsafe { ipc_list_free(list, count) };
        Ok(copied)
    }

    /// Sends `text` as a message of type `mtype`; a signal ends a wait with
    /// `IPC_ERR_INTERRUPTED`.
    pub fn send(
        &mut self,
        name: &str,
        mtype: i64,
        text: &[u8],
        nowait: bool,
    ) -> Result<(), Failure> {
        // SAFETY: a live handle, a C string, `text.len()` readable bytes.
        let code = unsafe {
            ipc_send(
                self.0,
                c_name(name).as_ptr(),
                mtype,
                text.as_ptr().cast(),
                text.len(),
                timeout(nowait),
                IPC_INTERRUPTIBLE,
                std::ptr::null_mut(),
            )
        };
        status(self.0, code).map(drop)
    }

    /// Receives into `buf` (`cap` bytes) as `msgrcv` does: `except` is `MSG_EXCEPT`,
    /// `truncate` `MSG_NOERROR` (without it, a larger message stays and the call fails
    /// with `IPC_ERR_TRUNCATED`); a signal ends a wait with `IPC_ERR_INTERRUPTED`. The
    /// bytes copied and the message's type.
    ///
    /// # Safety
    /// `buf` must be writable for `cap` bytes (or NULL with `cap` 0).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn recv_into(
        &mut self,
        name: &str,
        msgtyp: i64,
        except: bool,
        truncate: bool,
        nowait: bool,
        buf: *mut u8,
        cap: usize,
    ) -> Result<(usize, i64), Failure> {
        let mut flags = IPC_INTERRUPTIBLE;
        if except {
            flags |= IPC_EXCEPT;
        }
        if truncate {
            flags |= IPC_TRUNCATE;
        }
        let (mut len, mut mtype) = (0, 0);
        // SAFETY: a live handle, a C string, `buf` writable for `cap` bytes (the
        // caller's promise), two writable places.
        let code = unsafe {
            ipc_recv_into(
                self.0,
                c_name(name).as_ptr(),
                msgtyp,
                flags,
                timeout(nowait),
                buf.cast(),
                cap,
                &mut len,
                &mut mtype,
            )
        };
        status(self.0, code).map(|_| (len, mtype))
    }

    /// A copy of the message at position `index` (`MSG_COPY`): its type and payload.
    pub fn peek_at(&mut self, name: &str, index: u64) -> Result<(i64, Vec<u8>), Failure> {
        // SAFETY: all zeroes is the empty ipc_message the library expects to fill.
        let mut message: ipc_message = unsafe { std::mem::zeroed() };
        // SAFETY: a live handle, a C string, a writable structure.
        let code = unsafe { ipc_peek_at(self.0, c_name(name).as_ptr(), index, &mut message) };
        let copied = status(self.0, code).map(|_| {
            let payload = if message.data.is_null() {
                Vec::new()
            } else {
                // SAFETY: the library gave `len` bytes at `data`.
                unsafe { std::slice::from_raw_parts(message.data, message.len) }.to_vec()
            };
            (message.mtype, payload)
        });
        // SAFETY: filled in by the library (or zeroed), freed once.
        unsafe { ipc_message_free(&mut message) };
        copied
    }
}
