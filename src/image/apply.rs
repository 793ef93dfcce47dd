//! An image's config applied to a container's: `Env` under the caller's variables,
//! `WorkingDir` unless the caller set one, `User` unless the caller set a uid or gid, and
//! `Entrypoint` + `Cmd` when the caller gave no command.

use std::path::{Path, PathBuf};

use super::{ImageFailure, PreparedImage};
use crate::config::ContainerConfig;
use crate::error::{ImageErrorKind, SandboxError};

use crate::config::DEFAULT_PATH;

/// The topmost layer's copy of `rel` (e.g. `etc/passwd`), read without following links; a
/// whiteout or a non-file ends the search (the file is absent).
fn read_from_layers(layers: &[PathBuf], rel: &str) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    for layer in layers.iter().rev() {
        let path = layer.join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            return None;
        }
        let mut text = String::new();
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .ok()?
            .take(1 << 20)
            .read_to_string(&mut text)
            .ok()?;
        return Some(text);
    }
    None
}

/// The id of `name` in a passwd- or group-style file (`name:x:id:...`).
fn id_in(file: Option<&str>, name: &str) -> Option<(u32, Option<u32>)> {
    file?.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.first() == Some(&name)).then(|| {
            let id = f.get(2)?.parse().ok()?;
            Some((id, f.get(3).and_then(|g| g.parse().ok())))
        })?
    })
}

/// `User` (`name`, `uid`, `name:group`, `uid:gid`) as ids, through the image's own
/// `/etc/passwd` and `/etc/group` in `layers` (lowest first). Blocking.
pub(crate) fn resolve_user(layers: &[PathBuf], user: &str) -> Result<(u32, u32), ImageFailure> {
    let unknown = |what: &str| {
        ImageFailure::new(
            ImageErrorKind::InvalidFormat,
            format!("the image's User {user:?}: no {what} in its /etc/passwd or /etc/group"),
        )
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => {
            let passwd = read_from_layers(layers, "etc/passwd");
            id_in(passwd.as_deref(), u).ok_or_else(|| unknown(u))?
        }
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let group = read_from_layers(layers, "etc/group");
                id_in(group.as_deref(), g).ok_or_else(|| unknown(g))?.0
            }
        },
        None => primary_gid.unwrap_or(uid),
    };
    Ok((uid, gid))
}

/// Applies `image`'s config to `config` (made by `from_policy` for an image: its env holds
/// only the caller's variables, its cwd is empty unless the caller set a workdir). Pure: what
/// needs the image's files was read when it was prepared.
pub(crate) fn apply(
    image: &PreparedImage,
    config: &mut ContainerConfig,
) -> Result<(), SandboxError> {
    let defaults = &image.defaults;
    let mut env = defaults.env.clone();
    crate::config::merge_env(&mut env, &config.env);
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".to_owned(), DEFAULT_PATH.to_owned()));
    }
    if config.uid == 0
        && config.gid == 0
        && let Some(ids) = image.user_ids
    {
        (config.uid, config.gid) = ids;
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        let home = if config.uid == 0 { "/root" } else { "/" };
        env.push(("HOME".to_owned(), home.to_owned()));
    }
    config.env = env;
    if config.cwd.as_os_str().is_empty() {
        config.cwd = defaults
            .working_dir
            .as_deref()
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| Path::new("/").to_path_buf());
    }
    if config.command.is_empty() {
        let mut argv = defaults.entrypoint.clone();
        if config.args.is_empty() {
            argv.extend(defaults.cmd.iter().cloned());
        } else {
            argv.append(&mut config.args);
        }
        if argv.is_empty() {
            return Err(SandboxError::invalid(
                "command",
                "no command given and the image has no Entrypoint or Cmd",
            ));
        }
        config.command = argv.remove(0);
        config.args = argv;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_through_passwd_lines() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
        assert_eq!(id_in(Some(passwd), "app"), Some((1000, Some(1001))));
        assert_eq!(id_in(Some(passwd), "nobody"), None);
        assert_eq!(id_in(None, "app"), None);
    }
}
