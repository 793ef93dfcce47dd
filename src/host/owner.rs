//! Who owns a container or an id range: a process named `<pid>-<start time>`, written into
//! bundles and leases, so that the crash sweep can tell a dead owner's leftovers.

use std::path::Path;
use std::sync::OnceLock;

/// The annotation in each bundle's `config.json` naming the process that owns the container
/// (`<pid>-<start time>`, see [`self_owner`]).
pub(crate) const OWNER_ANNOTATION: &str = "dev.oci-sandbox.owner";

/// This process's identity as written into bundles: `<pid>-<start time>`.
pub(crate) fn self_owner() -> &'static str {
    static OWNER: OnceLock<String> = OnceLock::new();
    OWNER.get_or_init(|| {
        let pid = std::process::id();
        format!("{pid}-{}", start_time(pid).unwrap_or(0))
    })
}

/// The start time (field 22 of `/proc/<pid>/stat`, clock ticks since boot) of a process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process named by an owner string (`<pid>-<start time>`) is still running.
/// Pids belong to the pid namespace: processes sharing a state dir must share one.
pub(crate) fn owner_alive(owner: &str) -> bool {
    let Some((pid, start)) = owner.split_once('-') else {
        return false;
    };
    match (pid.parse::<u32>(), start.parse::<u64>()) {
        (Ok(pid), Ok(start)) => start_time(pid) == Some(start),
        _ => false,
    }
}

/// The owner recorded in a bundle's config.json, if readable.
pub(crate) fn bundle_owner(bundle: &Path) -> Option<String> {
    let raw = std::fs::read(bundle.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    v.get("annotations")?
        .get(OWNER_ANNOTATION)?
        .as_str()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive() {
        assert!(owner_alive(self_owner()));
    }

    #[test]
    fn dead_or_malformed_owners_are_not_alive() {
        assert!(!owner_alive("999999999-1"));
        assert!(!owner_alive("garbage"));
        let pid = std::process::id();
        assert!(!owner_alive(&format!("{pid}-1")));
    }
}
