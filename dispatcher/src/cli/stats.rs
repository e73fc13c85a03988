//! `dispatcher stats`: the data plane's counters.

use std::{path::Path, process::ExitCode, time::Duration};

use anyhow::Result;
use dispatcher::{control::stats::Snapshot, data_plane::bpffs};

#[derive(clap::Args)]
pub struct Args {
    /// The interface whose data plane to read (default: the only one).
    #[arg(long)]
    iface: Option<String>,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
    /// Print again every second, with rates, until interrupted.
    #[arg(long)]
    watch: bool,
}

pub fn run(args: Args, bpffs: &Path) -> Result<ExitCode> {
    let dir = bpffs::find_pin_dir(bpffs, args.iface.as_deref())?;
    let mut previous: Option<Snapshot> = None;
    loop {
        let now = Snapshot::read(&dir)?;
        if args.json {
            println!("{}", serde_json::to_string(&now)?);
        } else {
            print!("{}", now.table(previous.as_ref().map(|p| (p, 1.0))));
        }
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        previous = Some(now);
        std::thread::sleep(Duration::from_secs(1));
    }
}
