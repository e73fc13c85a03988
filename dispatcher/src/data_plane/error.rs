//! What can go wrong between the data plane and the kernel, by kind, so
//! that callers match on the variant (and tests on the kind) rather than
//! on message text. Each message names the problem and the fix; functions
//! return them inside `anyhow::Error` (`downcast_ref::<Error>()` gets the
//! kind back).

use std::path::PathBuf;

use aya::programs::ProgramError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the eBPF object has no map {0}: rebuild the dispatcher")]
    MissingMap(String),
    #[error("the eBPF object has no program {0}: rebuild the dispatcher")]
    MissingProgram(String),
    #[error("interface {0} not found (`ip link` shows the names)")]
    UnknownInterface(String),
    #[error("another `dispatcher run` manages the data plane at {} (stop it first)", .0.display())]
    Managed(PathBuf),
    /// No data plane pinned for `iface` (or at all) under `root`.
    #[error("{}", not_pinned(.root, .iface.as_deref()))]
    NotPinned {
        root: PathBuf,
        iface: Option<String>,
    },
    #[error("several data planes are running ({}): pick one with --iface", .0.join(", "))]
    SeveralPinned(Vec<String>),
    /// EPERM from BPF_PROG_LOAD: told by errno, whatever the message.
    #[error("the kernel refused to load the XDP program {program}: permission denied (run as root, or with CAP_BPF and CAP_NET_ADMIN)")]
    PermissionDenied {
        program: String,
        #[source]
        source: ProgramError,
    },
    /// Any other refused load: the verifier's log is in `source`.
    #[error("the kernel refused to load the XDP program {program} (verifier log above)")]
    Rejected {
        program: String,
        #[source]
        source: ProgramError,
    },
}

fn not_pinned(root: &std::path::Path, iface: Option<&str>) -> String {
    match iface {
        Some(iface) => format!(
            "no data plane is pinned for {iface} under {} (is `dispatcher run --iface {iface}` running, with the same --bpffs?)",
            root.display()
        ),
        None => format!(
            "no data plane is pinned under {} (start one with `dispatcher run --iface IF`, or pass the --bpffs it uses)",
            root.display()
        ),
    }
}

impl Error {
    /// The kind of a refused BPF_PROG_LOAD of `program`.
    pub fn of_load(source: ProgramError, program: &str) -> Error {
        let errno = match &source {
            ProgramError::LoadError { io_error, .. } => io_error.raw_os_error(),
            ProgramError::SyscallError(aya::sys::SyscallError { io_error, .. }) => {
                io_error.raw_os_error()
            }
            _ => None,
        };
        let program = program.to_string();
        if errno == Some(libc::EPERM) {
            Error::PermissionDenied { program, source }
        } else {
            Error::Rejected { program, source }
        }
    }
}
