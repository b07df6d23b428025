//! The checked-in C header is what cbindgen makes of the source today: a change to an
//! exported function, structure or constant (or to its doc comment) that was not
//! carried into `include/ipc_client.h` fails here.

use std::path::Path;

#[test]
fn header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("read cbindgen.toml");
    // From the source files, not the crate: no `cargo metadata` run inside a test.
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen understands the crate");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = parenthesize_negatives(&String::from_utf8(generated).expect("UTF-8"));

    let path = dir.join("include/ipc_client.h");
    if std::env::var_os("IPC_UPDATE_HEADER").is_some_and(|v| !v.is_empty()) {
        std::fs::write(&path, &generated).expect("write the header");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    if checked_in != generated {
        let line = checked_in
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| checked_in.lines().count().min(generated.lines().count()));
        panic!(
            "{} is not what cbindgen makes of the source (first difference at line {}). \
             Regenerate it with\n    IPC_UPDATE_HEADER=1 cargo test -p ipc-capi header\n\
             and commit it.",
            path.display(),
            line + 1
        );
    }
}

/// cbindgen writes a negative constant bare (`#define IPC_ERR_NULL -18`), which a macro
/// must not be: `x-IPC_ERR_NULL` would read as `x--18`. So each one is put in
/// parentheses, here, as part of making the header.
fn parenthesize_negatives(header: &str) -> String {
    let mut out = String::with_capacity(header.len() + 64);
    for line in header.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let mut words = body.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("#define"), Some(name), Some(value)) if value.starts_with('-') => {
                out.push_str(&format!("#define {name} ({value})"));
                out.push_str(&line[body.len()..]);
            }
            _ => out.push_str(line),
        }
    }
    out
}
