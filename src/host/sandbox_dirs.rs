//! The host directories that running containers of this process can write (their writable
//! binds, the workdir among them), known by `(st_dev, st_ino)` while their bundle lives.
//!
//! The host's own file work (`upload_dir`, `download_dir`) resolves a caller's path one name
//! at a time and asks here whether a directory on the way is one of them: from there on, no
//! link is followed, since any container that writes there may have planted it (see
//! [`crate::sys::host_tree::open_dir_blocking`]).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex};

use crate::config::{ContainerConfig, MountKind};

/// `(st_dev, st_ino)` of a directory.
type DirId = (u64, u64);

/// Every registered directory, with how many live containers write it and its path.
static DIRS: LazyLock<Mutex<HashMap<DirId, (usize, PathBuf)>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The writable host directories of one container, registered until this is dropped.
#[derive(Debug, Default)]
pub(crate) struct SandboxDirs {
    ids: Vec<DirId>,
}

impl SandboxDirs {
    /// Registers `config`'s writable bind sources (those that exist and are directories).
    /// Blocking (a `stat` each).
    pub fn register_blocking(config: &ContainerConfig) -> SandboxDirs {
        let sources = config.mounts.iter().filter_map(|m| match &m.kind {
            MountKind::Bind {
                source,
                writable: true,
            } => Some(source.clone()),
            _ => None,
        });
        Self::register_paths_blocking(sources)
    }

    /// Registers directories `paths` (those that exist), as containers' writable dirs: the
    /// library's data dirs, where named sandboxes and volumes keep what containers write.
    /// Blocking.
    pub fn register_paths_blocking(paths: impl IntoIterator<Item = PathBuf>) -> SandboxDirs {
        let mut ids = Vec::new();
        for source in paths {
            if let Some(meta) = std::fs::metadata(&source).ok().filter(|m| m.is_dir()) {
                ids.push(((meta.dev(), meta.ino()), source));
            }
        }
        let mut dirs = DIRS.lock().unwrap_or_else(|e| e.into_inner());
        for (id, path) in &ids {
            dirs.entry(*id).or_insert_with(|| (0, path.clone())).0 += 1;
        }
        SandboxDirs {
            ids: ids.into_iter().map(|(id, _)| id).collect(),
        }
    }
}

impl Drop for SandboxDirs {
    fn drop(&mut self) {
        let mut dirs = DIRS.lock().unwrap_or_else(|e| e.into_inner());
        for id in &self.ids {
            if let Some(entry) = dirs.get_mut(id) {
                entry.0 -= 1;
                if entry.0 == 0 {
                    dirs.remove(id);
                }
            }
        }
    }
}

/// The path of the registered directory `(dev, ino)`, if a live container writes it.
pub(crate) fn writable_by_a_container(dev: u64, ino: u64) -> Option<PathBuf> {
    let dirs = DIRS.lock().unwrap_or_else(|e| e.into_inner());
    dirs.get(&(dev, ino)).map(|(_, path)| path.clone())
}

/// Whether `path` is a registered directory (for tests and diagnostics).
#[cfg(test)]
pub(crate) fn is_registered(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| writable_by_a_container(m.dev(), m.ino()).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mount;

    #[test]
    fn registered_while_held() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ContainerConfig::new("/bin/true", Vec::<String>::new());
        config.mounts.push(Mount {
            destination: "/w".into(),
            kind: MountKind::Bind {
                source: dir.path().to_path_buf(),
                writable: true,
            },
        });
        let first = SandboxDirs::register_blocking(&config);
        let second = SandboxDirs::register_blocking(&config);
        assert!(is_registered(dir.path()));
        drop(first);
        assert!(is_registered(dir.path()), "still written by the second");
        drop(second);
        assert!(!is_registered(dir.path()));
    }
}
