//! Where a data plane pins its maps: `<bpffs>/dispatcher/<IF>/`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use nix::{
    mount::{mount, MsFlags},
    sys::statfs::{statfs, BPF_FS_MAGIC},
};

/// The default bpffs mount point.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// The pin directory of the data plane attached to `iface`.
pub fn pin_dir(bpffs: &Path, iface: &str) -> PathBuf {
    bpffs.join("dispatcher").join(iface)
}

/// Makes sure `dir` is a bpffs mount, mounting one there if it is not.
pub fn ensure_mounted(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the bpffs directory {}", dir.display()))?;
    if is_bpffs(dir)? {
        return Ok(());
    }
    mount(
        Some("bpffs"),
        dir,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "cannot mount a bpffs at {} (mount -t bpf bpffs {0} by hand, or pass --bpffs DIR)",
            dir.display()
        )
    })?;
    Ok(())
}

/// Is `dir` the root of a bpffs mount?
pub fn is_bpffs(dir: &Path) -> Result<bool> {
    let fs = statfs(dir).with_context(|| format!("cannot statfs {}", dir.display()))?;
    Ok(fs.filesystem_type() == BPF_FS_MAGIC)
}

/// The pin directory of the one data plane running under `bpffs`, or of
/// `iface` when given. Errors say what is running and what to pass.
pub fn find_pin_dir(bpffs: &Path, iface: Option<&str>) -> Result<PathBuf> {
    let root = bpffs.join("dispatcher");
    if let Some(iface) = iface {
        let dir = pin_dir(bpffs, iface);
        if !dir.is_dir() {
            return Err(super::Error::NotPinned {
                root,
                iface: Some(iface.to_string()),
            }
            .into());
        }
        return Ok(dir);
    }
    let mut dirs: Vec<PathBuf> = match std::fs::read_dir(&root) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect(),
        Err(_) => Vec::new(),
    };
    match dirs.len() {
        0 => Err(super::Error::NotPinned { root, iface: None }.into()),
        1 => Ok(dirs.remove(0)),
        _ => {
            let names: Vec<String> = dirs
                .iter()
                .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            Err(super::Error::SeveralPinned(names).into())
        }
    }
}
