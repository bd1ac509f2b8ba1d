//! `strata ml …`: forwards to the `strata-ml` worker, found next to this
//! executable (else on PATH), with `--broker` passed along. The ML commands
//! themselves live in `strata-ml`; nothing of them is parsed here.

use std::path::PathBuf;

use anyhow::{Context, bail};

/// Runs `strata-ml` with `args`.
pub fn run(broker: &str, args: &[String]) -> anyhow::Result<()> {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("strata-ml")));
    let program = sibling
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("strata-ml"));
    let status = std::process::Command::new(&program)
        .arg("--broker")
        .arg(broker)
        .args(args)
        .status()
        .with_context(|| {
            format!(
                "running {} (build it with `cargo build --release -p strata-ml`)",
                program.display()
            )
        })?;
    if !status.success() {
        bail!("strata-ml exited with {status}");
    }
    Ok(())
}
