//! The classic SysV message-queue exercise, on ipcd.
//!
//! Run the server in one shell and the client in another:
//!
//! ```text
//! cargo run --example classic -- server
//! cargo run --example classic -- client
//! ```
//!
//! The client sends messages of types 10 down to 1. The server receives them in order
//! (type 0: oldest first), prints each, and when the message of type 1 arrives removes
//! the mailbox and exits. Both use the blocking client: no async runtime.

use ipc_client::{BlockingClient, CreateOptions, RecvOptions, Result, SendOptions};

const MAILBOX: &str = "examples/classic";

fn main() {
    let role = std::env::args().nth(1).unwrap_or_default();
    let result = match role.as_str() {
        "server" => server(),
        "client" => client(),
        _ => {
            eprintln!("usage: classic server|client");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("classic {role}: {e}");
        std::process::exit(e.exit_code().into());
    }
}

fn server() -> Result<()> {
    let mut ipc = BlockingClient::connect()?;
    let options = CreateOptions {
        mode: Some(0o622),
        exist_ok: true,
        ..CreateOptions::default()
    };
    ipc.create(MAILBOX, &options)?;
    println!("server: waiting on {MAILBOX}");
    loop {
        let message = ipc.recv(MAILBOX, &RecvOptions::default())?;
        println!(
            "server: type {:2} from pid {}: {}",
            message.mtype,
            message.sender.pid,
            String::from_utf8_lossy(&message.payload)
        );
        if message.mtype == 1 {
            break;
        }
    }
    ipc.remove(MAILBOX)?;
    println!("server: removed {MAILBOX}");
    Ok(())
}

fn client() -> Result<()> {
    let mut ipc = BlockingClient::connect()?;
    for mtype in (1..=10).rev() {
        let text = format!("message of type {mtype}");
        ipc.send(MAILBOX, text, &SendOptions::mtype(mtype))?;
    }
    println!("client: sent types 10 down to 1");
    Ok(())
}
