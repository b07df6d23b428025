//! `libipc_client.so` and `libipc_client.a`: the C ABI of `ipc-capi`, whose exported
//! functions (`#[no_mangle] extern "C"`) a C library built from this crate exports as
//! they are. Nothing else is here; see `../src/lib.rs` and `../include/ipc_client.h`.

pub use ipc_capi::*;
