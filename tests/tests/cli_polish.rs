//! `ipcctl`'s human output end to end: to a pipe, `ls`, `stat` and `status` are plain
//! text, byte for byte what scripts have always read; on a terminal (a pseudo-terminal
//! from util-linux `script`, when it is installed) the same text with bold table
//! headers, and without them under `NO_COLOR`.

use std::process::{Command, Output, Stdio};

use ipcd_tests::{TestDaemon, binary, ipcctl, uid};

/// What `ls` prints for the mailbox [`filled`] makes, header first.
fn listing() -> (String, String) {
    let owner = uid().to_string();
    let w = owner.len().max("OWNER".len());
    (
        format!("NAME  MESSAGES  BYTES  MODE  {:<w$}  DURABLE", "OWNER"),
        format!("jobs  1         5      0660  {owner:<w$}  no"),
    )
}

fn filled() -> TestDaemon {
    let daemon = TestDaemon::start();
    for args in [
        &["create", "jobs", "--mode", "660"][..],
        &["send", "jobs", "hello"],
    ] {
        let status = ipcctl(daemon.socket()).args(args).status().unwrap();
        assert!(status.success(), "ipcctl {args:?}: {status}");
    }
    daemon
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn to_a_pipe_the_output_is_plain_whatever_the_environment() {
    let daemon = filled();
    let (header, row) = listing();
    // A terminal type and an empty NO_COLOR allow emphasis — on a terminal only.
    let run = |args: &[&str]| {
        ok(ipcctl(daemon.socket())
            .args(args)
            .env("TERM", "xterm-256color")
            .env("NO_COLOR", "")
            .output()
            .unwrap())
    };
    assert_eq!(run(&["ls"]), format!("{header}\n{row}\n"));
    let stat = run(&["stat", "jobs"]);
    assert!(stat.starts_with("name:              jobs\n"), "{stat}");
    let status = run(&["status"]);
    assert!(status.starts_with("version:"), "{status}");
    assert!(status.contains("\nUID  "), "{status}");
    for text in [stat, status] {
        assert!(!text.contains('\x1b'), "{text:?}");
    }
}

/// `ipcctl ARGS` with a pseudo-terminal as its output, through `script`; `None` when
/// `script` cannot be run here.
fn on_a_terminal(daemon: &TestDaemon, args: &str, no_color: Option<&str>) -> Option<String> {
    let ipcctl = binary("ipcctl");
    let line = format!("'{}' {args}", ipcctl.display());
    let mut command = Command::new("script");
    command
        .args(["-qec", &line, "/dev/null"])
        .env("IPCD_SOCKET", daemon.socket())
        .env("TERM", "xterm-256color")
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null());
    match no_color {
        Some(value) => command.env("NO_COLOR", value),
        None => command.env_remove("NO_COLOR"),
    };
    let out = command.output().ok()?;
    // The terminal turns each newline into CR LF.
    Some(ok(out).replace("\r\n", "\n"))
}

#[test]
fn a_terminal_gets_bold_headers_unless_no_color_is_set() {
    let daemon = filled();
    let (header, row) = listing();
    let Some(bold) = on_a_terminal(&daemon, "ls", None) else {
        eprintln!("skipped: util-linux `script` is not available");
        return;
    };
    assert_eq!(bold, format!("\x1b[1m{header}\x1b[0m\n{row}\n"));
    let plain = on_a_terminal(&daemon, "ls", Some("1")).unwrap();
    assert_eq!(plain, format!("{header}\n{row}\n"));
    // An empty NO_COLOR does not count.
    let empty = on_a_terminal(&daemon, "ls", Some("")).unwrap();
    assert_eq!(empty, bold);

    let status = on_a_terminal(&daemon, "status", None).unwrap();
    assert!(status.contains("\n\x1b[1mUID  "), "{status:?}");
    let status = on_a_terminal(&daemon, "status", Some("1")).unwrap();
    assert!(!status.contains('\x1b'), "{status:?}");
    // `--json` is for programs, terminal or not.
    let json = on_a_terminal(&daemon, "ls --json", None).unwrap();
    assert!(json.starts_with("{\"name\":\"jobs\""), "{json:?}");
}
