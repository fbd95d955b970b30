//! `dctunnel generate-assets`: man pages and shell completions for the Debian
//! package, generated from the command-line definition so they cannot drift.
//!
//! The `clap::Command` comes from the binary (`Cli::command()`), since the
//! command-line types live there.

use std::fs;
use std::path::Path;
use std::process::ExitCode;

use clap_complete::Shell;
use clap_mangen::Man;

/// The manual section: dctunnel is a daemon and its administration tools.
const SECTION: &str = "8";

/// Writes into `out`: `dctunnel.8` and one `dctunnel-<subcommand>.8` per
/// visible (sub)subcommand, which the top page lists as `dctunnel-run(8)`
/// and so on; `completions/dctunnel.bash` and `completions/_dctunnel` (zsh).
pub fn main(cmd: clap::Command, out: &Path) -> ExitCode {
    match generate(cmd, out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dctunnel: {e}");
            ExitCode::FAILURE
        }
    }
}

fn generate(cmd: clap::Command, out: &Path) -> Result<(), String> {
    let completions = out.join("completions");
    fs::create_dir_all(&completions)
        .map_err(|e| format!("cannot create {}: {e}", completions.display()))?;
    for (shell, name) in [(Shell::Bash, "dctunnel.bash"), (Shell::Zsh, "_dctunnel")] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut without_hidden(&cmd), "dctunnel", &mut text);
        write(&completions.join(name), &text)?;
    }

    // `build` fills in the display names (`dctunnel-certs-issue`) that name
    // the subcommand pages; no `help` subcommand, it would have no page.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    write_man_pages(&cmd, out)
}

/// `cmd` without its hidden subcommands (`generate-assets`): clap_complete
/// offers every subcommand, hidden or not (clap-rs/clap#1335), and clap has
/// no way to remove one, so the root is put together again from the
/// original's arguments and visible subcommands. `cmd` must not be built
/// yet, or it would bring clap's own `--help` and `--version` twice.
fn without_hidden(cmd: &clap::Command) -> clap::Command {
    clap::Command::new("dctunnel")
        .version(env!("CARGO_PKG_VERSION"))
        .args(cmd.get_arguments().cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

/// One page for `cmd`, then one for each subcommand that is not hidden.
fn write_man_pages(cmd: &clap::Command, out: &Path) -> Result<(), String> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_pages(sub, out)?;
    }
    let man = Man::new(cmd.clone()).section(SECTION);
    let mut text = Vec::new();
    man.render(&mut text)
        .map_err(|e| format!("cannot render the man page of {}: {e}", cmd.get_name()))?;
    write(&out.join(man.get_filename()), &text)
}

fn write(path: &Path, text: &[u8]) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
