//! `ipcctl completions SHELL`: the shell's completion script, generated from the clap
//! definitions in `cli.rs`, so that it cannot fall behind them.

use std::io::Write;

use clap::CommandFactory;
use clap_complete::Shell;

use super::stdout;
use crate::cli::Cli;

pub fn run(shell: Shell) -> anyhow::Result<()> {
    let mut out = stdout();
    out.write_all(&script(shell))?;
    out.flush()?;
    Ok(())
}

/// The script, whole. Generated into memory because the generator panics on a write
/// error, and a closed standard output (`| head`) is not a failure here.
pub fn script(shell: Shell) -> Vec<u8> {
    let mut command = Cli::command();
    let name = command.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand people type, the help one aside.
    fn subcommands() -> Vec<String> {
        let names: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        assert!(names.len() >= 13, "{names:?}");
        names
    }

    #[test]
    fn every_shell_completes_every_subcommand() {
        // How each script offers a subcommand.
        let offers = |shell: Shell, name: &str| match shell {
            Shell::Bash => format!("ipcctl,{name})"),
            Shell::Zsh => format!("\n'{name}:"),
            Shell::Fish => format!(" -a \"{name}\""),
            _ => unreachable!(),
        };
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(script(shell)).unwrap();
            for name in subcommands() {
                let needle = offers(shell, &name);
                assert!(script.contains(&needle), "{shell}: no {needle:?}");
            }
            for flag in ["socket", "json"] {
                assert!(script.contains(flag), "{shell}: no --{flag}");
            }
        }
    }

    #[test]
    fn scripts_are_for_ipcctl() {
        let bash = String::from_utf8(script(Shell::Bash)).unwrap();
        assert!(bash.contains("complete -F _ipcctl"), "{bash}");
        let zsh = String::from_utf8(script(Shell::Zsh)).unwrap();
        assert!(zsh.starts_with("#compdef ipcctl\n"), "{zsh}");
        let fish = String::from_utf8(script(Shell::Fish)).unwrap();
        assert!(fish.contains("complete -c ipcctl "), "{fish}");
        // Paths complete as paths where a shell can tell.
        assert!(
            zsh.contains("--socket=[") && zsh.contains(":_files"),
            "{zsh}"
        );
    }
}
