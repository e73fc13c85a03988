//! Rebuild when bpf-linker changes: the object's bytes depend on it.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!(
            "cargo:warning=bpf-linker not found on PATH: run `cargo xtask bootstrap` to install it"
        ),
    }
}
