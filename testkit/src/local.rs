//! What the broker and database helpers share to find, install or start a
//! server that every test process of this machine uses: the project's
//! directories under `target/`, a port probe, program look-ups, commands
//! with their error output, and a lock between processes.

use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `<workspace>/target/<name>`: where the tests keep what they install and
/// the servers they start (`.ci/run` uses the same places), whatever
/// `CARGO_TARGET_DIR` says, so every build of the checkout shares them.
pub(crate) fn target_dir(name: &str) -> PathBuf {
    let testkit = Path::new(env!("CARGO_MANIFEST_DIR"));
    testkit
        .parent()
        .unwrap_or(testkit)
        .join("target")
        .join(name)
}

/// True when something accepts TCP connections on `addr`.
pub(crate) fn answers(addr: std::net::SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// The directories of `PATH`, in order.
pub(crate) fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect())
        .unwrap_or_default()
}

/// Runs `command` to its end; an error carries its exit status and stderr.
pub(crate) fn run(command: &mut std::process::Command) -> anyhow::Result<()> {
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// What `done` finds, else the result of `work` run by one process of the
/// machine at a time: `lock` is a directory, whose creation is atomic. The
/// others wait for it to go and look again. A lock older than `patience`
/// belongs to a process that died and is taken over; waiting gives up after
/// `patience`. `what` names the work in errors.
pub(crate) fn once_across_processes<T>(
    lock: &Path,
    patience: Duration,
    what: &str,
    mut done: impl FnMut() -> Option<T>,
    work: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + patience;
    loop {
        // Done and nobody at work, before and after the look: complete.
        if !lock.exists() {
            if let Some(found) = done() {
                if !lock.exists() {
                    return Ok(found);
                }
            }
        }
        match std::fs::create_dir(lock) {
            Ok(()) => {
                // The previous holder may have finished just before.
                let result = match done() {
                    Some(found) => Ok(found),
                    None => work(),
                };
                let _ = std::fs::remove_dir(lock);
                return result;
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                let stale = std::fs::metadata(lock)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > patience);
                if stale {
                    let _ = std::fs::remove_dir(lock);
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "waited {} s for another process {what} (lock {})",
                    patience.as_secs(),
                    lock.display()
                );
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(err) => {
                return Err(err).with_context(|| format!("creating {}", lock.display()));
            }
        }
    }
}
