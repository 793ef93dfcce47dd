//! Layer 1: system calls, fds and processes (pidfds, fd-safe tree walks, user namespaces).

pub(crate) mod fs_tree;
pub(crate) mod histogram;
pub(crate) mod host_tree;
pub(crate) mod layer_tree;
pub(crate) mod pidfd;
pub(crate) mod userns;

/// Milliseconds since `since`, for the lifecycle events' `elapsed_ms` fields.
pub(crate) fn ms_since(since: std::time::Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Runs `f` on the blocking pool and returns its result; a panic in it (the only way the
/// join fails: the pool never cancels a started task) becomes [`SandboxError::Process`]
/// with `context`. If the caller goes away, `f` still runs to its end (what it made is then
/// dropped).
///
/// [`SandboxError::Process`]: crate::SandboxError::Process
pub(crate) async fn blocking<T, F>(
    context: &'static str,
    f: F,
) -> Result<T, crate::error::SandboxError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, crate::error::SandboxError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| crate::error::SandboxError::Process {
            context,
            source: std::io::Error::other(e),
        })?
}

/// [`blocking`], counted by `tracker` until `f`'s result is dropped: when the caller went
/// away, what `f` made (a bundle, a user namespace) is dropped, and so cleaned up, before
/// `tracker.wait()` returns.
pub(crate) async fn blocking_tracked<T, F>(
    tracker: &tokio_util::task::TaskTracker,
    context: &'static str,
    f: F,
) -> Result<T, crate::error::SandboxError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, crate::error::SandboxError> + Send + 'static,
{
    let token = tracker.token();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        // Unsent (the caller is gone): dropped here, while the token still counts.
        drop(tx.send(f()));
        drop(token);
    });
    rx.await.map_err(|e| crate::error::SandboxError::Process {
        context,
        source: std::io::Error::other(e),
    })?
}

/// Whether `path` is a regular file with an execute bit (following symlinks). Blocking.
pub(crate) fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blocking_returns_the_result_and_a_panic_becomes_a_typed_error() {
        assert_eq!(blocking("adding", || Ok(2 + 2)).await.unwrap(), 4);
        let err = blocking::<(), _>("panicking", || panic!("boom"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                crate::error::SandboxError::Process {
                    context: "panicking",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn only_executable_regular_files_are_executable() {
        assert!(is_executable(std::path::Path::new("/bin/sh")));
        assert!(!is_executable(std::path::Path::new("/etc/passwd")));
        assert!(!is_executable(std::path::Path::new("/usr/bin")));
        assert!(!is_executable(std::path::Path::new("/no/such/file")));
    }
}
