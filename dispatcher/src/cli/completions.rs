//! `dispatcher completions SHELL`: the completion script for a shell, from
//! the command line's own definition (so it never lags behind a flag). The
//! Debian package installs them; by hand:
//! `dispatcher completions bash > /etc/bash_completion.d/dispatcher`.

use std::process::ExitCode;

use anyhow::Result;
use clap::CommandFactory;
use clap_complete::Shell;

#[derive(clap::Args)]
pub struct Args {
    /// bash, zsh, fish, elvish or powershell.
    shell: Shell,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let mut cmd = super::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "dispatcher", &mut script);
    // Written in one go: a reader that stops early (`| head`) is not an error.
    match std::io::Write::write_all(&mut std::io::stdout(), &script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}
