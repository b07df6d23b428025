//! Managing mailboxes: create, remove, purge, stat, list and set, each a thin call of
//! the blocking client's operation of that name.

use std::ffi::{c_char, c_int};

use crate::args::{self, optional, put_optional, required};
use crate::handle::{ipc_client, with_client};
use crate::status::{IPC_EXISTED, IPC_OK};
use crate::types::{info_list, ipc_changes, ipc_create_options, ipc_mailbox_info};

/// Creates mailbox `name` (1–255 bytes of letters, digits and `. _ / -`, not starting
/// with `/` or `.`). `opts` NULL: the defaults. Returns `IPC_OK` when it was created, and
/// `IPC_EXISTED` (1, not a failure) when it existed and `opts->exist_ok` was set;
/// without `exist_ok`, an existing mailbox is `IPC_ERR_EXISTS`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipc_create(
    c: *mut ipc_client,
    name: *const c_char,
    opts: *const ipc_create_options,
) -> c_int {
    with_client(c, |client| {
        // SAFETY: NULL or a string (the header's rule); likewise `opts`.
        let name = unsafe { args::text(name, "name") }?;
        // SAFETY: as above.
        let opts = unsafe { opts.as_ref() }.copied().unwrap_or_default();
        let created = client.create(name, &opts.to_options())?;
        Ok(if created { IPC_OK } else { IPC_EXISTED })
    })
}

/// Removes mailbox `name` and every message in it; receivers waiting on it fail with
/// `IPC_ERR_REMOVED`. Needs the owner's rights.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipc_remove(c: *mut ipc_client, name: *const c_char) -> c_int {
    with_client(c, |client| {
        // SAFETY: NULL or a string.
        let name = unsafe { args::text(name, "name") }?;
        client.remove(name)?;
        Ok(IPC_OK)
    })
}

/// Drops every message queued in mailbox `name`; `*purged` (if not NULL) is how many.
/// Needs the owner's rights.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipc_purge(
    c: *mut ipc_client,
    name: *const c_char,
    purged: *mut u64,
) -> c_int {
    with_client(c, |client| {
        // SAFETY: NULL or a string.
        let name = unsafe { args::text(name, "name") }?;
        let count = client.purge(name)?;
        // SAFETY: NULL or writable (the header's rule).
        unsafe { put_optional(optional(purged).as_ref(), count) };
        Ok(IPC_OK)
    })
}

/// Fills `*out` with mailbox `name`'s settings and counters. Needs `r` permission.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipc_stat(
    c: *mut ipc_client,
    name: *const c_char,
    out: *mut ipc_mailbox_info,
) -> c_int {
    with_client(c, |client| {
        // SAFETY: NULL or a string.
        let name = unsafe { args::text(name, "name") }?;
        let out = required(out, "out")?;
        let info = client.stat(name)?;
        // SAFETY: writable (the header's rule).
        unsafe { out.put(ipc_mailbox_info::from(&info)) };
        Ok(IPC_OK)
    })
}

/// Lists the mailboxes the caller may read or owns: `*out` is an array of `*count`
/// entries (NULL and 0 when there are none), which the caller frees with
/// `ipc_list_free(*out, *count)`. On failure `*out` is NULL and `*count` 0.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipc_list(
    c: *mut ipc_client,
    out: *mut *mut ipc_mailbox_info,
    count: *mut usize,
) -> c_int {
    with_client(c, |client| {
        let out = required(out, "out")?;
        let count = required(count, "count")?;
        // SAFETY: both writable (the header's rule). Written first, so that a failure
        // leaves nothing for the caller to free.
        unsafe {
            out.put(std::ptr::null_mut());
            count.put(0);
        }
        let (list, n) = info_list(&client.list()?);
        // SAFETY: as above.
        unsafe {
            out.put(list);
            count.put(n);
        }
        Ok(IPC_OK)
    })
}

/// Changes mailbox `name`'s settings as `changes` says (see `ipc_changes`). Needs the
/// owner's rights; giving it to another uid needs root.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipc_set(
    c: *mut ipc_client,
    name: *const c_char,
    changes: *const ipc_changes,
) -> c_int {
    with_client(c, |client| {
        // SAFETY: NULL or a string.
        let name = unsafe { args::text(name, "name") }?;
        // SAFETY: NULL or a readable `ipc_changes` (the header's rule).
        let changes =
            unsafe { changes.as_ref() }.ok_or_else(|| crate::status::Failure::null("changes"))?;
        client.set(name, changes.to_changes())?;
        Ok(IPC_OK)
    })
}
