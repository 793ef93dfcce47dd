//! The store's `tmp/`: downloads, unpacks, archive scratch and pruned layers on their way
//! out, each a directory named `<what>-<owner>-<random>` (the owner is `<pid>-<start time>`,
//! as bundles record it). A [`TempTree`] removes its directory when dropped, so a cancelled
//! pull leaves nothing; [`sweep_blocking`] removes what dead owners left (a crashed pull),
//! never a live process's.

use std::io;
use std::path::{Path, PathBuf};

/// The name of a new entry of `tmp/` for `what` (no `-` in it), owned by this process.
pub(crate) fn entry_name(what: &str) -> String {
    debug_assert!(!what.contains('-'));
    format!(
        "{what}-{}-{}",
        crate::host::owner::self_owner(),
        crate::host::state::random_token()
    )
}

/// The owner (`<pid>-<start time>`) an entry of `tmp/` is named for, if it is named as
/// [`entry_name`] names them.
fn owner_of(name: &str) -> Option<String> {
    let mut parts = name.splitn(4, '-');
    let (_what, pid, start) = (parts.next()?, parts.next()?, parts.next()?);
    parts.next()?;
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (numeric(pid) && numeric(start)).then(|| format!("{pid}-{start}"))
}

/// A directory of this process's in `tmp/`, removed (with all it holds) when dropped.
///
/// The drop removes it at once, on the dropping thread: that is what lets a dropped pull
/// future leave nothing behind by the time the drop returns. The paths that end normally call
/// [`TempTree::remove`] instead, which does the removal off the async workers.
#[derive(Debug)]
pub(crate) struct TempTree {
    path: Option<PathBuf>,
}

impl TempTree {
    /// A new directory `tmp/<what>-<owner>-<random>` (mode 0700). Blocking.
    pub(crate) fn create_blocking(tmp: &Path, what: &str) -> io::Result<TempTree> {
        use std::os::unix::fs::DirBuilderExt;
        let path = tmp.join(entry_name(what));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(TempTree { path: Some(path) })
    }

    /// [`create_blocking`](Self::create_blocking) off the async workers.
    pub(crate) async fn create(tmp: &Path, what: &'static str) -> io::Result<TempTree> {
        let tmp = tmp.to_owned();
        tokio::task::spawn_blocking(move || TempTree::create_blocking(&tmp, what))
            .await
            .map_err(io::Error::other)?
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        self.path.as_deref().expect("a temp tree is removed once")
    }

    /// Removes the directory off the async workers, and waits for it.
    pub(crate) async fn remove(mut self) {
        if let Some(path) = self.path.take() {
            let removal = tokio::task::spawn_blocking(move || remove_logged(&path));
            let _ = removal.await;
        }
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            remove_logged(&path);
        }
    }
}

fn remove_logged(path: &Path) {
    if let Err(e) = crate::sys::fs_tree::remove_tree_blocking(path) {
        tracing::warn!(path = %path.display(), error = %e, "removing an image temp dir");
    }
}

/// Removes the entries of `tmp` whose owner is dead (a crashed or killed process's pulls,
/// unpacks and prunes). Entries of live processes, this one included, and entries not named
/// for an owner are left. Returns how many were removed. Blocking.
pub(crate) fn sweep_blocking(tmp: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = owner_of(&name) else {
            continue;
        };
        if crate::host::owner::owner_alive(&owner) {
            continue;
        }
        match crate::sys::fs_tree::remove_tree_blocking(&entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(path = %entry.path().display(), error = %e,
                "sweeping a dead process's image temp dir"),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_owner() {
        let name = entry_name("layer");
        assert_eq!(
            owner_of(&name).as_deref(),
            Some(crate::host::owner::self_owner())
        );
        assert_eq!(owner_of("layer-12-34-abcd").as_deref(), Some("12-34"));
        assert_eq!(owner_of("layer-abc123"), None); // an older version's name
        assert_eq!(owner_of("layer-12-34"), None);
        assert_eq!(owner_of("pruned-x-34-ab"), None);
    }

    #[test]
    fn the_sweep_removes_dead_owners_entries_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dead = tmp.path().join("layer-999999999-1-00ff");
        std::fs::create_dir_all(dead.join("root/deep")).unwrap();
        std::fs::write(dead.join("blob"), b"x").unwrap();
        let mine = TempTree::create_blocking(tmp.path(), "layer").unwrap();
        let unnamed = tmp.path().join("layer-abc123");
        std::fs::create_dir(&unnamed).unwrap();
        assert_eq!(sweep_blocking(tmp.path()), 1);
        assert!(!dead.exists());
        assert!(mine.path().exists() && unnamed.exists());
        let path = mine.path().to_owned();
        drop(mine);
        assert!(
            !path.exists(),
            "a dropped temp tree is gone when the drop returns"
        );
    }
}
