//! `dispatcher offload check`: the NFP's offload rules against an object.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::Subcommand;
use dispatcher::{data_plane, offload_check};

#[derive(Subcommand)]
pub enum Action {
    /// Check a compiled XDP object against the NFP's offload rules (helpers,
    /// maps, stores into map values, atomics, instruction set, return
    /// codes, stack, context, size); names each violation with its
    /// instruction. Exit status 1 when there are violations.
    Check {
        /// The object file (default: the one built into this binary).
        object: Option<PathBuf>,
        /// The program to check.
        #[arg(long, default_value = data_plane::HW_PROGRAM)]
        program: String,
        /// The firmware's instruction limit, if known.
        #[arg(long, default_value_t = 2_800)]
        max_instructions: usize,
        /// The firmware's stack limit in bytes, if known.
        #[arg(long, default_value_t = 512)]
        max_stack: i64,
    },
}

pub fn run(action: Action) -> Result<ExitCode> {
    let Action::Check {
        object,
        program,
        max_instructions,
        max_stack,
    } = action;
    let bytes = match &object {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => data_plane::object().to_vec(),
    };
    let limits = offload_check::Limits {
        max_instructions,
        max_stack,
        ..Default::default()
    };
    let report = offload_check::check_object(&bytes, &program, limits)?;
    print!("{}", report.text());
    Ok(if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
