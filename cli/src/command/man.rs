//! `ipcctl man [DIR]`: the manual pages, generated from the clap definitions in `cli.rs`
//! (clap_mangen) with the sections clap cannot know added: exit status, environment and
//! files on ipcctl(1), a pointer back to it on each `ipcctl-<subcommand>(1)`.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};
use ipc_proto::paths;

use super::stdout;
use crate::cli::{Cli, EXAMPLES, EXIT_CODES};

/// The manual the pages belong to, for the page header.
const MANUAL: &str = "ipcd manual";

pub fn run(dir: Option<&Path>) -> anyhow::Result<()> {
    let Some(dir) = dir else {
        let mut out = stdout();
        out.write_all(&main_page(&command())?)?;
        out.flush()?;
        return Ok(());
    };
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (file, page) in pages()? {
        let path = dir.join(file);
        fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The command as the pages describe it: built, so that subcommands know their full
/// names (`ipcctl send`), and without clap's `help` subcommand, which `--help` covers.
fn command() -> clap::Command {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    command
}

/// Every page as (file name, roff): `ipcctl.1`, then `ipcctl-<subcommand>.1` for each.
pub fn pages() -> io::Result<Vec<(String, Vec<u8>)>> {
    let command = command();
    let mut pages = vec![(file_name(&command), main_page(&command)?)];
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let page = render(&command, sub, &examples(sub), &see_also(&command))?;
        pages.push((file_name(sub), page));
    }
    Ok(pages)
}

fn file_name(command: &clap::Command) -> String {
    Man::new(command.clone()).get_filename()
}

/// ipcctl(1), with EXIT STATUS, ENVIRONMENT and FILES in place of the `--help`
/// epilogue (which clap_mangen would print under a heading of EXTRA).
fn main_page(command: &clap::Command) -> io::Result<Vec<u8>> {
    render(command, command, &main_sections(), &Roff::default())
}

/// One page: clap_mangen's sections, with `before_version` and `after_version` around
/// the VERSION section (the usual order puts SEE ALSO last). The `--help` epilogue
/// (`after_help`) is left to the caller.
///
/// The title is written here rather than by clap_mangen, which leaves an empty date
/// unquoted — so that `man` takes the source for the date and the manual for the
/// source. Each clap_mangen section comes with roff's preamble; it is kept once.
fn render(
    main: &clap::Command,
    command: &clap::Command,
    before_version: &Roff,
    after_version: &Roff,
) -> io::Result<Vec<u8>> {
    let man = Man::new(command.clone());
    let preamble = rendered(|w| Roff::default().to_writer(w))?;
    let mut page = preamble.clone();
    let title = command
        .get_display_name()
        .unwrap_or_else(|| command.get_name())
        .to_uppercase();
    let source = format!(
        "{} {}",
        main.get_name(),
        main.get_version().unwrap_or_default()
    );
    writeln!(page, ".TH \"{title}\" \"1\" \"\" \"{source}\" \"{MANUAL}\"")?;
    let mut section = |write: &dyn Fn(&mut dyn Write) -> io::Result<()>| -> io::Result<()> {
        let text = rendered(write)?;
        page.extend_from_slice(text.strip_prefix(preamble.as_slice()).unwrap_or(&text));
        Ok(())
    };
    section(&|w| man.render_name_section(w))?;
    section(&|w| man.render_synopsis_section(w))?;
    section(&|w| man.render_description_section(w))?;
    section(&|w| man.render_options_section(w))?;
    if command.has_subcommands() {
        section(&|w| man.render_subcommands_section(w))?;
    }
    section(&|w| before_version.to_writer(w))?;
    section(&|w| man.render_version_section(w))?;
    section(&|w| after_version.to_writer(w))?;
    Ok(page)
}

fn rendered(write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<Vec<u8>> {
    let mut text = Vec::new();
    write(&mut text)?;
    Ok(text)
}

fn main_sections() -> Roff {
    let mut roff = Roff::default();
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in EXIT_CODES {
        roff.control("TP", []);
        roff.text([bold(code.to_string())]);
        roff.text([roman(meaning)]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    let variables = [
        (
            paths::SOCKET_ENV,
            "The daemon's socket, when --socket is not given.".to_owned(),
        ),
        (
            "XDG_RUNTIME_DIR",
            format!(
                "For a user other than root, without {}: the per-user daemon's socket, \
                 $XDG_RUNTIME_DIR/ipcd/ipcd.sock, when it exists.",
                paths::SOCKET_ENV
            ),
        ),
        (
            "NO_COLOR",
            "When set and not empty, table headers are not bold, even on a terminal \
             (https://no-color.org). Output to a pipe or a file never has emphasis."
                .to_owned(),
        ),
    ];
    for (name, meaning) in variables {
        roff.control("TP", []);
        roff.text([bold(name)]);
        roff.text([roman(meaning)]);
    }
    roff.control("SH", ["FILES"]);
    roff.control("TP", []);
    roff.text([italic(paths::SYSTEM_SOCKET)]);
    roff.text([roman(
        "The system daemon's socket, used when neither --socket, the environment nor a \
         per-user daemon names another.",
    )]);
    roff
}

/// EXAMPLES from a subcommand's `after_help`, one command a line, unfilled.
fn examples(command: &clap::Command) -> Roff {
    let mut roff = Roff::default();
    let Some(help) = command.get_after_help().map(ToString::to_string) else {
        return roff;
    };
    roff.control("SH", ["EXAMPLES"]);
    roff.control("nf", []);
    for line in help.lines().filter(|l| *l != EXAMPLES) {
        roff.text([roman(line.trim())]);
    }
    roff.control("fi", []);
    roff
}

/// SEE ALSO, pointing a subcommand's page back at ipcctl(1).
fn see_also(main: &clap::Command) -> Roff {
    let mut roff = Roff::default();
    roff.control("SH", ["SEE ALSO"]);
    roff.text([bold(main.get_name()), roman("(1)")]);
    roff
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(page: &[u8]) -> &str {
        std::str::from_utf8(page).unwrap()
    }

    #[test]
    fn the_main_page_names_every_subcommand() {
        let page = main_page(&command()).unwrap();
        let page = text(&page);
        let version = env!("CARGO_PKG_VERSION");
        let title = format!(".TH \"IPCCTL\" \"1\" \"\" \"ipcctl {version}\" \"ipcd manual\"\n");
        assert!(page.contains(&title), "{page}");
        assert_eq!(page.matches(".TH ").count(), 1, "{page}");
        assert_eq!(page.matches(".ds Aq \\(aq").count(), 1, "{page}");
        for section in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "SUBCOMMANDS",
            "\"EXIT STATUS\"",
            "ENVIRONMENT",
            "FILES",
            "VERSION",
        ] {
            assert!(
                page.contains(&format!("\n.SH {section}\n")),
                "{section}: {page}"
            );
        }
        for sub in command().get_subcommands() {
            let reference = format!("ipcctl\\-{}(1)", sub.get_name());
            assert!(page.contains(&reference), "{reference}: {page}");
        }
        assert!(!page.contains("ipcctl\\-help(1)"), "{page}");
        assert!(!page.contains("EXTRA"), "{page}");
        for (code, _) in EXIT_CODES {
            assert!(
                page.contains(&format!("\n.TP\n\\fB{code}\\fR\n")),
                "{code}: {page}"
            );
        }
        assert!(page.contains("NO_COLOR"), "{page}");
    }

    #[test]
    fn one_page_per_subcommand() {
        let pages = pages().unwrap();
        let names: Vec<&str> = pages.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names[0], "ipcctl.1");
        let subcommands = command().get_subcommands().count();
        assert_eq!(names.len(), 1 + subcommands, "{names:?}");
        for name in [
            "ipcctl-send.1",
            "ipcctl-recv.1",
            "ipcctl-ls.1",
            "ipcctl-man.1",
        ] {
            assert!(names.contains(&name), "{name}: {names:?}");
        }
        let (_, send) = pages.iter().find(|(n, _)| n == "ipcctl-send.1").unwrap();
        let send = text(send);
        assert!(
            send.contains("\n.TH \"IPCCTL-SEND\" \"1\" \"\" \"ipcctl "),
            "{send}"
        );
        assert!(send.contains("\\fBipcctl send\\fR"), "{send}");
        assert!(send.contains("\\-\\-socket"), "{send}");
        assert!(send.contains("\\-\\-lines"), "{send}");
        assert!(!send.contains(".SH SUBCOMMANDS"), "{send}");
        assert!(
            send.ends_with(".SH \"SEE ALSO\"\n\\fBipcctl\\fR(1)\n"),
            "{send}"
        );
        let (_, man) = pages.iter().find(|(n, _)| n == "ipcctl-man.1").unwrap();
        let man = text(man);
        assert!(
            man.contains(
                "\n.SH EXAMPLES\n.nf\nipcctl man | man \\-l \\-\nipcctl man /usr/local/share/man/man1\n.fi\n"
            ),
            "{man}"
        );
        let (_, main) = &pages[0];
        assert_eq!(main, &main_page(&command()).unwrap());
    }
}
