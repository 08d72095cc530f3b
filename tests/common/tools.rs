//! System tools some tests drive (dnsmasq, Kamailio, Chromium, …).
//!
//! `.ci/run` installs every tool these tests name and sets `SIPSCREEN_CI=1`:
//! there a missing tool fails the test. A plain `cargo test` on a machine
//! without the tool prints why the test did not run (on stderr, shown with
//! `--nocapture` and in the failure output) and passes it by, so the README's
//! test command works on a fresh machine; `.ci/run` runs them all.

use std::path::PathBuf;

/// The tool's path on `PATH`, or `None` (after saying so) when it is absent
/// outside CI. Panics in CI (`SIPSCREEN_CI=1`) when absent.
pub fn tool(name: &str, debian_package: &str) -> Option<PathBuf> {
    tool_in(name, debian_package, &[])
}

/// [`tool`], also looking in `dirs` (after `PATH`): e.g. Debian's
/// `/usr/lib/postgresql/15/bin`, which is not on `PATH`.
pub fn tool_in(name: &str, debian_package: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    if let Some(path) =
        find(name).or_else(|| dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()))
    {
        return Some(path);
    }
    let msg = format!(
        "`{name}` is not installed (Debian package `{debian_package}`); \
         `.ci/run` installs it"
    );
    if std::env::var_os("SIPSCREEN_CI").is_some_and(|v| v == "1") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
