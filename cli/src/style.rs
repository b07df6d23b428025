//! Whether human output may carry emphasis: only on a terminal, and only when the user
//! has not asked for plain text with `NO_COLOR` (<https://no-color.org>) or has a
//! terminal that cannot show it (`TERM=dumb`). Emphasis never changes the text itself —
//! the same characters, widths and lines go to a pipe and to a terminal, so what a
//! person sees is what a script gets, escape codes aside.

use std::ffi::OsStr;
use std::io::{self, IsTerminal};

/// How human output is decorated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Table headers in bold.
    emphasis: bool,
}

/// Select Graphic Rendition: bold on, and everything off.
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

impl Style {
    /// Plain text, as for a pipe or a file.
    pub const PLAIN: Style = Style { emphasis: false };

    /// The style for standard output as this process finds it.
    pub fn for_stdout() -> Self {
        Self::new(
            io::stdout().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
            std::env::var_os("TERM").as_deref(),
        )
    }

    /// The style for an output that is a terminal or not, given `NO_COLOR` and `TERM`.
    /// `NO_COLOR` set to anything but the empty string turns emphasis off, as the
    /// convention says.
    pub fn new(is_terminal: bool, no_color: Option<&OsStr>, term: Option<&OsStr>) -> Self {
        let no_color = no_color.is_some_and(|v| !v.is_empty());
        let dumb = term.is_some_and(|t| t == "dumb");
        if is_terminal && !no_color && !dumb {
            Style { emphasis: true }
        } else {
            Style::PLAIN
        }
    }

    /// `text` in bold when emphasis is on, as it is otherwise.
    pub fn bold(self, text: &str) -> String {
        if self.emphasis {
            format!("{BOLD}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn style(is_terminal: bool, no_color: Option<&str>, term: Option<&str>) -> Style {
        Style::new(is_terminal, no_color.map(OsStr::new), term.map(OsStr::new))
    }

    #[test]
    fn emphasis_only_on_a_terminal_without_no_color() {
        let xterm = Some("xterm-256color");
        assert_eq!(style(true, None, xterm).bold("NAME"), "\x1b[1mNAME\x1b[0m");
        // An empty NO_COLOR is the same as none.
        assert_eq!(
            style(true, Some(""), xterm).bold("NAME"),
            "\x1b[1mNAME\x1b[0m"
        );
        assert_eq!(style(true, Some("1"), xterm), Style::PLAIN);
        assert_eq!(style(true, Some("0"), xterm), Style::PLAIN);
        assert_eq!(style(true, None, Some("dumb")), Style::PLAIN);
        assert_eq!(style(false, None, xterm), Style::PLAIN);
        assert_eq!(Style::PLAIN.bold("NAME"), "NAME");
    }
}
