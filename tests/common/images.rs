//! Real OCI images and a real registry for the image tests, built with Debian's tools: `umoci`
//! (image layouts), `skopeo` (copies, pushes, inspection), `docker-registry` (the CNCF
//! distribution registry), GNU `tar` and `gzip`, and `/usr/bin/python3` (bcrypt for the
//! registry's htpasswd, and the python image's content).
//!
//! Everything a fixture creates lives under the directory its caller passes, or in a temp dir
//! (prefix `osb-img-`) owned by the value it returns and removed when that value drops. A
//! missing or failing tool panics with the tool's stderr: the tests fail, they never skip.
//!
//! The builders run as root (the suite does): `umoci unpack` and `repack` keep the owners of
//! the files, which the `app` user's home needs.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The tag of the busybox image in [`busybox_layout`]'s layout.
pub const BUSYBOX_TAG: &str = "busybox";
/// The second tag of [`busybox_layout`]'s layout: the same layers, config `User=app` and
/// `WorkingDir=/home/app`.
pub const BUSYBOX_APP_TAG: &str = "busybox-app";
/// The tag of the image in [`python_layout`]'s layout.
pub const PYTHON_TAG: &str = "python";

/// The applets linked to `/bin/busybox` in the busybox image's first layer.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "cat", "ls", "echo", "id", "env", "pwd", "touch", "rm", "stat", "mkdir", "sleep", "true",
    "readlink",
];

/// Media type of an OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of a Docker image manifest, version 2 schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// One tagged image of an OCI image layout, as its `index.json` and manifest describe it.
#[derive(Debug, Clone)]
pub struct ImageFixture {
    /// The layout's directory (holds `oci-layout`, `index.json` and `blobs/`).
    pub layout: PathBuf,
    /// The tag (`org.opencontainers.image.ref.name`) of the image in the layout.
    pub tag: String,
    /// `sha256:…` of the image's manifest.
    pub manifest_digest: String,
    /// `sha256:…` of each layer blob (compressed), lowest layer first.
    pub layer_digests: Vec<String>,
}

impl ImageFixture {
    /// The image's manifest.
    pub fn manifest(&self) -> Value {
        read_json(&blob_path(&self.layout, &self.manifest_digest))
    }

    /// The image's config blob (with `config`, `rootfs`, `history`…).
    pub fn config(&self) -> Value {
        let digest = self.manifest()["config"]["digest"]
            .as_str()
            .expect("manifest without a config digest")
            .to_owned();
        read_json(&blob_path(&self.layout, &digest))
    }

    /// The entries of layer `index` (0 is the lowest), in archive order.
    pub fn layer_entries(&self, index: usize) -> Vec<LayerEntry> {
        layer_entries(&blob_path(&self.layout, &self.layer_digests[index]))
    }

    /// The image as a skopeo/containers reference: `oci:LAYOUT:TAG`.
    pub fn oci_reference(&self) -> String {
        oci_reference(&self.layout, &self.tag)
    }
}

/// One entry of a layer tarball.
#[derive(Debug, Clone)]
pub struct LayerEntry {
    /// The path as archived (`etc/.wh.gone`; directories end with `/`).
    pub path: String,
    /// Regular file, directory, symlink, hard link…
    pub kind: tar::EntryType,
    /// The target of a symlink or hard link.
    pub link: Option<String>,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Permission bits (and setuid/setgid/sticky).
    pub mode: u32,
}

/// Reads `tag` of the OCI image layout at `layout` (panics if the index does not name it).
pub fn image_fixture(layout: &Path, tag: &str) -> ImageFixture {
    let index = read_json(&layout.join("index.json"));
    let descriptor = index["manifests"]
        .as_array()
        .expect("index.json without manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| {
            panic!(
                "{}/index.json names no tag {tag:?}: {index}",
                layout.display()
            )
        });
    let manifest_digest = descriptor["digest"].as_str().unwrap().to_owned();
    let manifest = read_json(&blob_path(layout, &manifest_digest));
    let layer_digests = manifest["layers"]
        .as_array()
        .expect("manifest without layers")
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    ImageFixture {
        layout: layout.to_owned(),
        tag: tag.to_owned(),
        manifest_digest,
        layer_digests,
    }
}

/// The path of blob `digest` (`sha256:…`) in the layout at `layout`.
pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest
        .split_once(':')
        .unwrap_or_else(|| panic!("not a digest: {digest:?}"));
    layout.join("blobs").join(algorithm).join(hex)
}

/// The entries of a layer blob, gzip-compressed or not, in archive order (decompressed with
/// `gzip`, read with the `tar` crate).
pub fn layer_entries(blob: &Path) -> Vec<LayerEntry> {
    let raw = fs::read(blob).unwrap_or_else(|e| panic!("{}: {e}", blob.display()));
    let tar = if raw.starts_with(&[0x1f, 0x8b]) {
        run(Command::new("gzip").arg("-dc").arg(blob)).stdout
    } else {
        raw
    };
    let mut archive = tar::Archive::new(&tar[..]);
    archive
        .entries()
        .expect("layer is no tar archive")
        .map(|entry| {
            let mut entry = entry.expect("bad layer entry");
            let header = entry.header();
            let layer_entry = LayerEntry {
                path: entry.path().unwrap().to_string_lossy().into_owned(),
                kind: header.entry_type(),
                link: entry
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned()),
                uid: header.uid().unwrap(),
                gid: header.gid().unwrap(),
                mode: header.mode().unwrap(),
            };
            // The archive reader needs each entry's data read (or skipped) in order.
            entry.read_to_end(&mut Vec::new()).unwrap();
            layer_entry
        })
        .collect()
}

/// Builds with `umoci`, at `dir/layout` (`dir` must exist, `dir/layout` must not), a busybox
/// image tagged [`BUSYBOX_TAG`] (reference `layout:busybox`) from scratch, and the same image
/// tagged [`BUSYBOX_APP_TAG`] with config `User=app` and `WorkingDir=/home/app`. Returns the
/// `busybox` tag; read the other with [`image_fixture`]. Blocks for about 0.1 s.
///
/// Layer 1 (`umoci repack`): `/bin/busybox` (the host's static one) and the
/// [`BUSYBOX_APPLETS`] symlinks to it, `/etc/gone` ("gone\n"), `/opaque/old.txt` ("old\n"),
/// `/etc/passwd` (root and `app` 1000:1000) and `/etc/group`, `/home/app` (1000:1000, 0700)
/// holding `secret` ("secret\n", 1000:1000, 0600), `/data/original` ("original\n") and its
/// hard link `/data/hardlink`.
///
/// Layer 2 (GNU `tar`, added with `umoci raw add-layer`, as `umoci repack` writes a whiteout
/// per deleted file and never an opaque directory): `etc/.wh.gone` (whiteout),
/// `etc/motd` ("layer two\n"), `opaque/.wh..wh..opq` (opaque whiteout) and `opaque/new.txt`
/// ("new\n").
///
/// Config: `Env=[GREETING=hello-from-image, PATH=/bin]`, `WorkingDir=/data`, no `User`,
/// `Entrypoint=["/bin/sh","-c"]`, `Cmd=["echo entry-$GREETING"]`.
///
/// umoci 0.4.7 writes manifests without their optional `mediaType` field (the index's
/// descriptors and a registry's `Content-Type` carry it): a client must not require it.
pub fn busybox_layout(dir: &Path) -> ImageFixture {
    let layout = new_layout(dir, BUSYBOX_TAG);
    repack_layer(dir, &layout, BUSYBOX_TAG, busybox_layer_one);
    add_raw_layer(dir, &layout, BUSYBOX_TAG, busybox_layer_two);
    umoci(&[
        "config",
        &image_arg(&layout, BUSYBOX_TAG),
        "--config.env=GREETING=hello-from-image",
        "--config.env=PATH=/bin",
        "--config.workingdir=/data",
        "--config.entrypoint=/bin/sh",
        "--config.entrypoint=-c",
        "--config.cmd=echo entry-$GREETING",
    ]);
    umoci(&[
        "config",
        &image_arg(&layout, BUSYBOX_TAG),
        &format!("--tag={BUSYBOX_APP_TAG}"),
        "--config.user=app",
        "--config.workingdir=/home/app",
    ]);
    image_fixture(&layout, BUSYBOX_TAG)
}

/// [`python_layout`]'s image with one more layer (a raw tar, root-owned) holding set-id
/// files: `/setid/suid` (4755), `/setid/sgid` (2755) and the directory `/setid/gdir` (2775).
pub fn setid_layout(dir: &Path) -> ImageFixture {
    let f = python_layout(dir);
    add_raw_layer(dir, &f.layout, PYTHON_TAG, setid_layer);
    image_fixture(&f.layout, PYTHON_TAG)
}

/// The set-id layer of [`setid_layout`], as a staging dir to archive.
fn setid_layer(stage: &Path) {
    fs::create_dir_all(stage.join("setid/gdir")).unwrap();
    write(stage, "setid/suid", "#!/bin/sh\necho image\n", 0o4755);
    write(stage, "setid/sgid", "image content of sgid\n", 0o2755);
    fs::set_permissions(stage.join("setid"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(stage.join("setid/gdir"), fs::Permissions::from_mode(0o2775)).unwrap();
}

/// Builds with `umoci`, at `dir/layout` (`dir` must exist, `dir/layout` must not), an image
/// tagged [`PYTHON_TAG`] whose single layer holds the host's `/usr/bin/python3` (Debian's),
/// its standard library (without the static `config-*` build directory), `/etc/python3.X` and
/// the shared libraries `ldd` lists, so that `/usr/bin/python3 -c 'print(1+1)'` runs in a
/// container of this image alone. Config: `Env=[PATH=/usr/bin]`, `Cmd=["/usr/bin/python3"]`.
/// Blocks for about a second.
pub fn python_layout(dir: &Path) -> ImageFixture {
    let layout = new_layout(dir, PYTHON_TAG);
    repack_layer(dir, &layout, PYTHON_TAG, python_layer);
    umoci(&[
        "config",
        &image_arg(&layout, PYTHON_TAG),
        "--config.env=PATH=/usr/bin",
        "--config.cmd=/usr/bin/python3",
    ]);
    image_fixture(&layout, PYTHON_TAG)
}

/// Converts `tag` of the layout at `layout` with `skopeo copy` into a `docker save` style
/// archive at `out` (which must not exist), its image named `busybox:latest`. Blocks.
pub fn docker_archive(layout: &Path, tag: &str, out: &Path) {
    run(Command::new("skopeo")
        .arg("copy")
        .arg(oci_reference(layout, tag))
        .arg(format!("docker-archive:{}:busybox:latest", out.display())));
}

/// Copies `tag` of the layout at `layout` with `skopeo copy --dest-compress-format=zstd` into a
/// new layout at `out` (same tag): the same image with zstd-compressed layers. Blocks.
pub fn zstd_layout(layout: &Path, tag: &str, out: &Path) {
    run(Command::new("skopeo")
        .args(["copy", "--dest-compress-format=zstd"])
        .arg(oci_reference(layout, tag))
        .arg(oci_reference(out, tag)));
}

/// `oci:LAYOUT:TAG`, the containers/skopeo reference of a tag of a layout.
pub fn oci_reference(layout: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", no_colon(layout))
}

/// `umoci init` a layout at `dir/layout` and `umoci new` an empty image `tag` in it.
fn new_layout(dir: &Path, tag: &str) -> PathBuf {
    let layout = dir.join("layout");
    umoci(&["init", "--layout", no_colon(&layout)]);
    umoci(&["new", &image_arg(&layout, tag)]);
    layout
}

/// Unpacks `tag` into a bundle under `dir`, lets `fill` change its rootfs, and repacks the
/// change as a new layer of `tag`; removes the bundle.
fn repack_layer(dir: &Path, layout: &Path, tag: &str, fill: fn(&Path)) {
    let bundle = dir.join(format!("bundle-{tag}"));
    let image = image_arg(layout, tag);
    umoci(&["unpack", &image, no_colon(&bundle)]);
    fill(&bundle.join("rootfs"));
    umoci(&["repack", &image, no_colon(&bundle)]);
    remove_dir(&bundle);
}

/// Lets `fill` populate a staging dir under `dir`, archives it with GNU tar (ustar, sorted,
/// root-owned) and appends it verbatim to `tag` with `umoci raw add-layer`; removes both.
fn add_raw_layer(dir: &Path, layout: &Path, tag: &str, fill: fn(&Path)) {
    let stage = dir.join(format!("stage-{tag}"));
    let archive = dir.join(format!("layer-{tag}.tar"));
    fs::create_dir(&stage).unwrap();
    fill(&stage);
    let top: Vec<_> = fs::read_dir(&stage)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    run(Command::new("tar")
        .args(["--create", "--format=ustar", "--sort=name"])
        .args(["--numeric-owner", "--owner=0", "--group=0", "--file"])
        .arg(&archive)
        .arg("-C")
        .arg(&stage)
        .args(&top));
    umoci(&[
        "raw",
        "add-layer",
        &image_arg(layout, tag),
        no_colon(&archive),
    ]);
    remove_dir(&stage);
    fs::remove_file(&archive).unwrap();
}

/// The busybox image's first layer (see [`busybox_layout`]).
fn busybox_layer_one(root: &Path) {
    for d in ["bin", "etc", "opaque", "home/app", "data"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (Debian's busybox-static) must be installed");
    for applet in BUSYBOX_APPLETS {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    write(root, "etc/gone", "gone\n", 0o644);
    write(root, "opaque/old.txt", "old\n", 0o644);
    write(
        root,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        0o644,
    );
    write(root, "etc/group", "root:x:0:\napp:x:1000:\n", 0o644);
    write(root, "home/app/secret", "secret\n", 0o600);
    for p in ["home/app", "home/app/secret"] {
        std::os::unix::fs::chown(root.join(p), Some(1000), Some(1000))
            .expect("chown needs root: the image fixtures run as root");
    }
    fs::set_permissions(root.join("home/app"), fs::Permissions::from_mode(0o700)).unwrap();
    write(root, "data/original", "original\n", 0o644);
    fs::hard_link(root.join("data/original"), root.join("data/hardlink")).unwrap();
}

/// The busybox image's second layer (see [`busybox_layout`]), as a staging dir to archive.
fn busybox_layer_two(stage: &Path) {
    fs::create_dir_all(stage.join("etc")).unwrap();
    fs::create_dir_all(stage.join("opaque")).unwrap();
    write(stage, "etc/.wh.gone", "", 0o644);
    write(stage, "etc/motd", "layer two\n", 0o644);
    write(stage, "opaque/.wh..wh..opq", "", 0o644);
    write(stage, "opaque/new.txt", "new\n", 0o644);
    for d in ["etc", "opaque"] {
        fs::set_permissions(stage.join(d), fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// The python image's layer (see [`python_layout`]).
fn python_layer(root: &Path) {
    let exe = fs::canonicalize("/usr/bin/python3")
        .expect("/usr/bin/python3 (Debian's python3) must be installed");
    let version = exe.file_name().unwrap().to_str().unwrap().to_owned(); // python3.11
    copy_into(root, &exe);
    symlink(&version, root.join("usr/bin/python3")).unwrap();
    let stdlib = Path::new("/usr/lib").join(&version);
    copy_into(root, &stdlib);
    for entry in fs::read_dir(root.join(stdlib.strip_prefix("/").unwrap())).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("config-")
        {
            remove_dir(&path); // libpython.a and friends: 25 MB nobody runs
        }
    }
    // The stdlib's sitecustomize.py is a symlink into /etc/python3.X.
    let etc = Path::new("/etc").join(&version);
    if etc.exists() {
        copy_into(root, &etc);
    }
    for library in shared_libraries(&exe) {
        fs::create_dir_all(root.join(library.parent().unwrap().strip_prefix("/").unwrap()))
            .unwrap();
        // -L: the image gets the file, not the host's symlink chain.
        run(Command::new("cp")
            .arg("-L")
            .arg(&library)
            .arg(root.join(library.strip_prefix("/").unwrap())));
    }
}

/// The absolute paths `ldd` lists for `exe`: its libraries and its ELF interpreter.
fn shared_libraries(exe: &Path) -> Vec<PathBuf> {
    let out = run(Command::new("ldd").arg(exe));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Copies `host` (file or tree, with `cp -a`) to the same path under `root`.
fn copy_into(root: &Path, host: &Path) {
    let target = root.join(host.strip_prefix("/").unwrap());
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    run(Command::new("cp").arg("-a").arg(host).arg(&target));
}

/// Writes `content` to `root/rel` with permissions `mode`.
fn write(root: &Path, rel: &str, content: &str, mode: u32) {
    let path = root.join(rel);
    fs::write(&path, content).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
}

fn remove_dir(path: &Path) {
    fs::remove_dir_all(path).unwrap_or_else(|e| panic!("removing {}: {e}", path.display()));
}

fn read_json(path: &Path) -> Value {
    let text = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `--image=LAYOUT:TAG`, umoci's image argument.
fn image_arg(layout: &Path, tag: &str) -> String {
    format!("--image={}:{tag}", no_colon(layout))
}

/// `path` as a string, which must not hold the `:` that umoci and skopeo split references on.
fn no_colon(path: &Path) -> &str {
    let s = path.to_str().expect("non-UTF-8 path");
    assert!(!s.contains(':'), "{s}: image paths cannot contain ':'");
    s
}

fn umoci(args: &[&str]) -> Output {
    run(Command::new("umoci").args(args))
}

/// Runs `command` to its end; panics, with its stderr, if it cannot start or fails.
pub fn run(command: &mut Command) -> Output {
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{command:?} did not start (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A `docker-registry` (distribution 2.8) serving plain HTTP on 127.0.0.1, its storage, config
/// and log in a temp dir (`osb-img-…`). Dropping it kills and reaps the registry and removes
/// the dir.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// `(user, password)` when the registry requires basic auth.
    pub creds: Option<(String, String)>,
    child: std::process::Child,
    dir: tempfile::TempDir,
}

/// A response of [`Registry::get`].
#[derive(Debug)]
pub struct HttpResponse {
    /// The status code (200, 401…).
    pub status: u16,
    /// The header lines, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// Starts a registry on a free port, with htpasswd basic auth for `(user, password)` when
    /// `auth` is given, and waits until `GET /v2/` answers (200, or 401 with auth). Panics with
    /// the registry's log if it is not up within 10 s.
    pub async fn start(auth: Option<(&str, &str)>) -> Registry {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut registry = Registry::spawn(auth);
            match registry.wait_ready(deadline).await {
                Ok(()) => return registry,
                // Another process took the port between our probe and the registry's bind.
                Err(log) if log.contains("address already in use") => continue,
                Err(log) => panic!(
                    "docker-registry did not come up on {}:\n{log}",
                    registry.addr
                ),
            }
        }
    }

    /// Writes the config (and htpasswd) into a new temp dir and starts `docker-registry serve`
    /// on a port that was free a moment ago.
    fn spawn(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("osb-img-registry-")
            .tempdir_in("/tmp")
            .expect("registry temp dir");
        let addr = free_address();
        let config = dir.path().join("config.yml");
        fs::write(&config, registry_config(dir.path(), &addr, auth)).unwrap();
        let log = fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian's docker-registry) must be installed");
        Registry {
            addr,
            creds: auth.map(|(u, p)| (u.to_owned(), p.to_owned())),
            child,
            dir,
        }
    }

    /// Polls `GET /v2/` until it answers 200 or 401; on exit or timeout returns the log.
    async fn wait_ready(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            let probe = tokio::time::timeout(Duration::from_secs(1), self.get("/v2/", None, None));
            if let Ok(Ok(response)) = probe.await
                && matches!(response.status, 200 | 401)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not answering after 10 s:\n{}", self.log()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the registry logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The registry's temp dir (config, storage, log); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id of the registry.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `ADDR/REPO:TAG`, the image reference a client pulls.
    pub fn reference(&self, repo_and_tag: &str) -> String {
        format!("{}/{repo_and_tag}", self.addr)
    }

    /// Pushes `tag` of the layout at `layout` as `repo_and_tag` (`repo:tag`) with
    /// `skopeo copy --format oci`: OCI media types, with the registry's credentials if it has
    /// any. Blocks the calling thread (the registry is another process).
    pub fn push(&self, layout: &Path, tag: &str, repo_and_tag: &str) {
        self.copy(layout, tag, repo_and_tag, "oci");
    }

    /// Like [`Registry::push`] but with `--format v2s2`: Docker v2 schema 2 media types for
    /// the manifest, config and layers.
    pub fn push_docker_format(&self, layout: &Path, tag: &str, repo_and_tag: &str) {
        self.copy(layout, tag, repo_and_tag, "v2s2");
    }

    fn copy(&self, layout: &Path, tag: &str, repo_and_tag: &str, format: &str) {
        let mut command = Command::new("skopeo");
        command
            .args(["copy", "--format", format, "--dest-tls-verify=false"])
            .args(self.creds_args("--dest-creds"))
            .arg(oci_reference(layout, tag))
            .arg(format!("docker://{}", self.reference(repo_and_tag)));
        run(&mut command);
    }

    /// The raw manifest of `repo_and_tag` as `skopeo inspect --raw` fetches it (with the
    /// registry's credentials). Blocks.
    pub fn inspect_raw(&self, repo_and_tag: &str) -> Value {
        let out = run(Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .args(self.creds_args("--creds"))
            .arg(format!("docker://{}", self.reference(repo_and_tag))));
        serde_json::from_slice(&out.stdout).expect("skopeo inspect --raw printed no JSON")
    }

    fn creds_args(&self, flag: &str) -> Vec<String> {
        match &self.creds {
            Some((user, password)) => vec![format!("{flag}={user}:{password}")],
            None => vec![],
        }
    }

    /// `GET path` over plain HTTP/1.0, with basic auth when `creds` is given and an `Accept`
    /// header when `accept` is given.
    pub async fn get(
        &self,
        path: &str,
        creds: Option<(&str, &str)>,
        accept: Option<&str>,
    ) -> std::io::Result<HttpResponse> {
        let mut request = format!("GET {path} HTTP/1.0\r\nHost: {}\r\n", self.addr);
        if let Some((user, password)) = creds {
            let token = base64(format!("{user}:{password}").as_bytes());
            request += &format!("Authorization: Basic {token}\r\n");
        }
        if let Some(accept) = accept {
            request += &format!("Accept: {accept}\r\n");
        }
        request += "Connection: close\r\n\r\n";
        let mut stream = tokio::net::TcpStream::connect(&self.addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse_response(&raw)
            .ok_or_else(|| std::io::Error::other(String::from_utf8_lossy(&raw).into_owned()))
    }
}

/// A port on 127.0.0.1 that nothing listens on right now.
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().to_string()
}

/// The registry's config.yml: filesystem storage under `dir`, plain HTTP on `addr`, htpasswd
/// auth (written next to it, bcrypt) when `auth` is given.
fn registry_config(dir: &Path, addr: &str, auth: Option<(&str, &str)>) -> String {
    let mut config = format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
         delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
        dir.join("storage").display()
    );
    if let Some((user, password)) = auth {
        let htpasswd = dir.join("htpasswd");
        fs::write(&htpasswd, format!("{user}:{}\n", bcrypt(password))).unwrap();
        config += &format!(
            "auth:\n  htpasswd:\n    realm: osb-test\n    path: {}\n",
            htpasswd.display()
        );
    }
    config
}

/// A bcrypt hash (`$2b$04$…`, the lowest cost: the registry checks it on every request) of
/// `password`, from Debian's python3 `crypt` module (libcrypt), as the registry's htpasswd
/// accepts only bcrypt.
fn bcrypt(password: &str) -> String {
    let out = run(Command::new("/usr/bin/python3")
        .args(["-W", "ignore", "-c"])
        .arg(
            "import crypt, sys\n\
             print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))",
        )
        .arg(password));
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$2b$"), "not a bcrypt hash: {hash:?}");
    hash
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Splits a raw HTTP/1.x response into status, headers and body.
fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(HttpResponse {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    })
}

/// The kind of a [`oci_sandbox::SandboxError::Image`]; any other error fails the test.
pub fn image_kind(e: oci_sandbox::SandboxError) -> oci_sandbox::ImageErrorKind {
    match e {
        oci_sandbox::SandboxError::Image { kind, .. } => kind,
        other => panic!("expected an image error, got {other:?}"),
    }
}
