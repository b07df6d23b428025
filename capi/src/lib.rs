//! `libipc_client`: the C library over [`client::BlockingClient`], built as
//! `libipc_client.so` and `libipc_client.a`, with its header `include/ipc_client.h`
//! generated from this crate by cbindgen (`cbindgen.toml`; the `header_is_current` test
//! keeps the checked-in copy in step). No async runtime: the blocking client is a socket
//! and `poll`, safe after `fork` and in any C program.
//!
//! Every exported function returns a status (`status.rs`) and runs behind one boundary
//! (`handle.rs`): panics are caught there, failures recorded there for
//! `ipc_last_error`, and a client handle is kept to one thread at a time there. The
//! structures C sees, and the functions that free what the library allocates, are in
//! `types.rs`; `args.rs` reads C arguments; the operations are grouped as the client's
//! are: `mailbox.rs`, `messages.rs`, `topics.rs`.

// The C names are the API; they follow C's conventions, not Rust's.
#![allow(non_camel_case_types)]
// Each exported function's pointer rules are the same few, stated once in the header's
// opening comment (cbindgen.toml), rather than in a `# Safety` section repeated on each.
#![allow(clippy::missing_safety_doc)]

// cbindgen writes constants and functions in the order it meets them, so the modules
// are declared in the order the header should read: status codes, the handle, the
// operations, then the structures' frees.
mod status;

mod handle;

mod mailbox;
mod messages;
mod topics;

mod types;

mod args;

pub use handle::*;
pub use mailbox::*;
pub use messages::*;
pub use status::*;
pub use topics::*;
pub use types::*;
