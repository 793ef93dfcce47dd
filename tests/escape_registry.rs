//! Attacks by a registry: a hostile one written here (a Tokio listener on 127.0.0.1 speaking
//! just enough HTTP/1.1 of the OCI distribution API: `/v2/`, a bearer token, a manifest, a
//! config and a layer blob) floods, stalls, trickles and lies. Each pull must fail with its
//! typed error within the (short) deadlines the test sets, leave nothing in the store's `tmp/`
//! nor any byte in the store, whether it failed, was dropped, or its process was killed; a
//! prune must not wait for a stalled pull.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::TestSandbox;
use common::images::image_kind;
use oci_sandbox::{
    Image, ImageErrorKind, NamespaceContainer, OciRuntime, RegistryImage, RegistryLimits,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the registry does wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attack {
    /// Nothing: an honest registry that wants a bearer token.
    None,
    /// The layer declares 100 bytes; the blob streams on (up to 256 MiB).
    LayerFlood,
    /// The manifest never ends (up to 64 MiB).
    ManifestFlood,
    /// The token reply never ends (up to 64 MiB).
    TokenFlood,
    /// The manifest request gets no reply at all.
    StallAtHeaders,
    /// The layer's headers and part of its bytes, then silence.
    StallMidBody,
    /// The layer's bytes one at a time, every 50 ms: never silent, never done.
    Trickle,
    /// The layer's bytes are not the ones its digest names.
    WrongDigest,
}

const TOKEN: &str = "letmein";
const REPOSITORY: &str = "evil/tools";

/// The image the registry serves: an honest layer (`/hello.txt`), its config and manifest.
struct Served {
    layer: Vec<u8>,
    layer_digest: String,
    config: Vec<u8>,
    config_digest: String,
    manifest: Vec<u8>,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn served(attack: Attack) -> Served {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let content = b"hello from the registry\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, "hello.txt", &content[..])
        .unwrap();
    // 1 MiB that does not compress: a stalled download has some of it on disk.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Vec<u8> = (0..1 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    header.set_size(noise.len() as u64);
    header.set_cksum();
    tar.append_data(&mut header, "noise.bin", &noise[..])
        .unwrap();
    let layer = tar.into_inner().unwrap().finish().unwrap();
    let layer_digest = sha256(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": ["GREETING=hostile"] },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    }))
    .unwrap();
    let config_digest = sha256(&config);
    let declared = match attack {
        Attack::LayerFlood => 100,
        Attack::Trickle => 64 * 1024 * 1024,
        _ => layer.len(),
    };
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": declared,
        }],
    }))
    .unwrap();
    Served {
        layer,
        layer_digest,
        config,
        config_digest,
        manifest,
    }
}

/// The hostile registry; dropping it closes every connection.
struct Hostile {
    addr: SocketAddr,
    /// Bytes of blobs, manifests and tokens it managed to write.
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hostile {
    async fn start(attack: Attack) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let image = Arc::new(served(attack));
        let counter = sent.clone();
        let task = tokio::spawn(async move {
            // Connections live in the set: aborting the registry aborts them.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (image, sent) = (image.clone(), counter.clone());
                connections.spawn(connection(stream, addr, attack, image, sent));
            }
        });
        Hostile { addr, sent, task }
    }

    fn reference(&self) -> String {
        format!("{}/{REPOSITORY}:1", self.addr)
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// One request's head: its path and whether it carries the token.
async fn request(stream: &mut TcpStream) -> Option<(String, bool)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 || stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let path = head.split_whitespace().nth(1)?.to_owned();
    let authorized = head.contains(&format!("authorization: bearer {TOKEN}"));
    Some((path, authorized))
}

async fn reply(stream: &mut TcpStream, status: &str, headers: &str, body: &[u8]) -> bool {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\n{headers}\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.is_ok() && stream.write_all(body).await.is_ok()
}

/// A 200 with no length that streams `limit` bytes (or until the client hangs up).
async fn flood(stream: &mut TcpStream, content_type: &str, limit: u64, sent: &AtomicU64) {
    let head =
        format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\nconnection: close\r\n\r\n");
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let chunk = vec![b'{'; 64 * 1024];
    let mut done = 0;
    while done < limit {
        if stream.write_all(&chunk).await.is_err() {
            return;
        }
        done += chunk.len() as u64;
        sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
}

async fn connection(
    mut stream: TcpStream,
    addr: SocketAddr,
    attack: Attack,
    image: Arc<Served>,
    sent: Arc<AtomicU64>,
) {
    const MIB: u64 = 1024 * 1024;
    let bearer = matches!(attack, Attack::None | Attack::TokenFlood);
    while let Some((path, authorized)) = request(&mut stream).await {
        let manifests = format!("/v2/{REPOSITORY}/manifests/");
        let blobs = format!("/v2/{REPOSITORY}/blobs/");
        if path == "/v2/" {
            if bearer {
                let challenge = format!(
                    "www-authenticate: Bearer realm=\"http://{addr}/token\",service=\"hostile\"\r\n"
                );
                reply(&mut stream, "401 Unauthorized", &challenge, b"{}").await;
            } else {
                reply(&mut stream, "200 OK", "", b"{}").await;
            }
            continue;
        }
        if path.starts_with("/token") {
            if attack == Attack::TokenFlood {
                return flood(&mut stream, "application/json", 64 * MIB, &sent).await;
            }
            let token = format!("{{\"token\":\"{TOKEN}\"}}");
            reply(&mut stream, "200 OK", "", token.as_bytes()).await;
            continue;
        }
        if bearer && !authorized {
            reply(&mut stream, "401 Unauthorized", "", b"{}").await;
            continue;
        }
        let ok = if path == format!("{manifests}1") {
            match attack {
                Attack::ManifestFlood => {
                    let media = "application/vnd.oci.image.manifest.v1+json";
                    return flood(&mut stream, media, 64 * MIB, &sent).await;
                }
                Attack::StallAtHeaders => return std::future::pending().await,
                _ => {
                    let headers = "content-type: application/vnd.oci.image.manifest.v1+json\r\n";
                    reply(&mut stream, "200 OK", headers, &image.manifest).await
                }
            }
        } else if path == format!("{blobs}{}", image.config_digest) {
            reply(&mut stream, "200 OK", "", &image.config).await
        } else if path == format!("{blobs}{}", image.layer_digest) {
            let layer = &image.layer;
            match attack {
                Attack::LayerFlood => {
                    return flood(&mut stream, "application/octet-stream", 256 * MIB, &sent).await;
                }
                Attack::StallMidBody => {
                    let head =
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", layer.len());
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(&layer[..layer.len() / 2]).await;
                    return std::future::pending().await;
                }
                Attack::Trickle => {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
                        .await;
                    loop {
                        if stream.write_all(b"x").await.is_err() {
                            return;
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Attack::WrongDigest => {
                    let mut forged = layer.clone();
                    let last = forged.len() - 1;
                    forged[last] ^= 0xff;
                    reply(&mut stream, "200 OK", "", &forged).await
                }
                _ => reply(&mut stream, "200 OK", "", layer).await,
            }
        } else {
            let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"no such thing"}]}"#;
            reply(&mut stream, "404 Not Found", "", body).await
        };
        if !ok {
            return;
        }
    }
}

/// Short deadlines: 1 s to connect or between two reads, 6 s for the whole pull.
fn short() -> RegistryLimits {
    let mut limits = RegistryLimits::default();
    limits.connect = Duration::from_secs(1);
    limits.read_idle = IDLE;
    limits.total = TOTAL;
    limits
}

const IDLE: Duration = Duration::from_secs(1);
const TOTAL: Duration = Duration::from_secs(6);
/// What a loaded 2-core machine may add to a deadline.
const SLACK: Duration = Duration::from_secs(2);
/// A flood is cut long before any deadline.
const PROMPT: Duration = Duration::from_secs(3);

/// Deadlines long enough that a stalled pull stays stalled for the test.
fn long() -> RegistryLimits {
    let mut limits = RegistryLimits::default();
    limits.read_idle = Duration::from_secs(120);
    limits.total = Duration::from_secs(300);
    limits
}

fn image_of(registry: &Hostile, limits: RegistryLimits) -> Image {
    Image::Registry(RegistryImage::new(registry.reference()).limits(limits))
}

fn tmp_of(t: &TestSandbox) -> PathBuf {
    t.state.path().join("images/tmp")
}

/// The names in the store's `tmp/`.
fn tmp_entries(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The bytes of the regular files under `path` (links not followed).
fn bytes_under(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    std::fs::read_dir(path)
        .map(|d| d.flatten().map(|e| bytes_under(&e.path())).sum())
        .unwrap_or(0)
}

/// Waits (10 s at most) until a pull's download has its first bytes on disk in `tmp/`.
async fn download_started(tmp: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let started = tmp_entries(tmp)
            .iter()
            .any(|name| bytes_under(&tmp.join(name).join("blob")) > 0);
        if started {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no download began in {}",
            tmp.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Pulls from a registry attacking with `attack` under [`short`] deadlines: the pull must fail
/// with `kind` after `from` and before `within`, and leave nothing in the store. Returns the
/// bytes the registry wrote.
async fn attacked(attack: Attack, kind: ImageErrorKind, from: Duration, within: Duration) -> u64 {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let registry = Hostile::start(attack).await;
    let started = Instant::now();
    let err = t
        .sandbox
        .pull(&image_of(&registry, short()))
        .await
        .unwrap_err();
    let took = started.elapsed();
    let message = err.to_string();
    assert_eq!(image_kind(err), kind, "{attack:?}: {message}");
    assert!(
        from <= took && took < within,
        "{attack:?}: failed after {took:?}, not within {from:?}..{within:?}: {message}"
    );
    let store = t.state.path().join("images");
    let left = tmp_entries(&tmp_of(&t));
    assert!(left.is_empty(), "{attack:?}: temp files left: {left:?}");
    assert_eq!(
        bytes_under(&store),
        0,
        "{attack:?}: bytes left in the store"
    );
    println!(
        "{attack:?}: {kind} after {took:?} (registry wrote {} bytes; store {} bytes): {message}",
        registry.sent(),
        bytes_under(&store)
    );
    registry.sent()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_registry_with_a_bearer_token_is_pulled() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let registry = Hostile::start(Attack::None).await;
    let default = image_of(&registry, RegistryLimits::default());
    let pulled = t.sandbox.pull(&default).await.unwrap();
    assert_eq!(pulled.layers, [served(Attack::None).layer_digest]);
    assert!(tmp_entries(&tmp_of(&t)).is_empty());
    let hex = pulled.layers[0].trim_start_matches("sha256:");
    let layer = t.state.path().join("images/layers").join(hex);
    assert_eq!(
        std::fs::read_to_string(layer.join("hello.txt")).unwrap(),
        "hello from the registry\n"
    );
    // Without the token's flow, the registry refuses: a typed error.
    let missing = Image::Registry(
        RegistryImage::new(format!("{}/{REPOSITORY}:nope", registry.addr)).limits(short()),
    );
    let kind = image_kind(t.sandbox.pull(&missing).await.unwrap_err());
    assert_eq!(kind, ImageErrorKind::NotFound);
}

/// A flood is refused as `TooLarge` at once, having read far less than it sent.
async fn flood_is_cut(attack: Attack) {
    let sent = attacked(attack, ImageErrorKind::TooLarge, Duration::ZERO, PROMPT).await;
    assert!(
        sent < 64 * 1024 * 1024,
        "the pull read on: {sent} bytes sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_larger_than_it_declares_is_cut() {
    flood_is_cut(Attack::LayerFlood).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_manifest_is_cut() {
    flood_is_cut(Attack::ManifestFlood).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_token_is_cut() {
    flood_is_cut(Attack::TokenFlood).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_silent_before_its_headers_times_out() {
    attacked(
        Attack::StallAtHeaders,
        ImageErrorKind::Timeout,
        IDLE,
        IDLE + SLACK,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_silent_mid_body_times_out() {
    attacked(
        Attack::StallMidBody,
        ImageErrorKind::Timeout,
        IDLE,
        IDLE + SLACK,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_registry_meets_the_total_deadline() {
    attacked(
        Attack::Trickle,
        ImageErrorKind::Timeout,
        TOTAL,
        TOTAL + SLACK,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_with_the_wrong_digest_is_refused() {
    attacked(
        Attack::WrongDigest,
        ImageErrorKind::DigestMismatch,
        Duration::ZERO,
        PROMPT,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_pull_leaves_no_temp_file() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let registry = Hostile::start(Attack::StallMidBody).await;
    let image = image_of(&registry, long());
    let tmp = tmp_of(&t);
    // The pull's own future, dropped mid-download: its temp dir goes with the drop.
    let mut pull = Box::pin(t.sandbox.pull(&image));
    tokio::select! {
        r = &mut pull => panic!("the stalled pull ended: {r:?}"),
        () = download_started(&tmp) => {}
    }
    assert!(!tmp_entries(&tmp).is_empty());
    drop(pull);
    let left = tmp_entries(&tmp);
    assert!(left.is_empty(), "left when the drop returned: {left:?}");
    // A pull with progress, dropped: its task is aborted and its temp dir goes right after.
    let progress = t.sandbox.pull_with_progress(&image);
    download_started(&tmp).await;
    let dropped = Instant::now();
    drop(progress);
    while !tmp_entries(&tmp).is_empty() {
        assert!(
            dropped.elapsed() < Duration::from_secs(1),
            "left 1 s after the drop: {:?}",
            tmp_entries(&tmp)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "pull_with_progress's temp dir gone {:?} after its drop",
        dropped.elapsed()
    );
    assert_eq!(bytes_under(&t.state.path().join("images")), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_does_not_wait_for_a_stalled_pull() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let registry = Hostile::start(Attack::StallMidBody).await;
    let (runtime, image) = (t.sandbox.clone(), image_of(&registry, long()));
    let stalled = tokio::spawn(async move { runtime.pull(&image).await });
    download_started(&tmp_of(&t)).await;
    let started = Instant::now();
    let pruned = tokio::time::timeout(Duration::from_secs(5), t.sandbox.prune_images())
        .await
        .expect("prune waited for the stalled pull")
        .unwrap();
    let took = started.elapsed();
    assert!(pruned.is_empty());
    assert!(took < Duration::from_secs(1), "prune took {took:?}");
    println!("prune took {took:?} beside a stalled pull");
    // The stalled pull's download is its own: still there, gone once it is cancelled.
    assert_eq!(tmp_entries(&tmp_of(&t)).len(), 1);
    stalled.abort();
    assert!(stalled.await.unwrap_err().is_cancelled());
    assert!(tmp_entries(&tmp_of(&t)).is_empty());
}

/// The owner string (`<pid>-<start time>`) of a live process, as the library names it.
fn owner_of(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    format!("{pid}-{}", after.split_whitespace().nth(19).unwrap())
}

/// A temp dir in `tmp/` as an owner's download would leave it, with a 1 MiB blob.
fn plant(tmp: &Path, owner: &str) -> PathBuf {
    let dir = tmp.join(format!("layer-{owner}-00000000deadbeef"));
    std::fs::create_dir_all(dir.join("root/usr")).unwrap();
    std::fs::File::create(dir.join("blob"))
        .unwrap()
        .write_all(&vec![0u8; 1 << 20])
        .unwrap();
    dir
}

async fn build_on(state: &Path) -> NamespaceContainer {
    NamespaceContainer::builder()
        .state_dir(state)
        .capture_dir(state.join("captures"))
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_processes_temp_files_are_swept_and_a_live_ones_kept() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let tmp = tmp_of(&t);
    std::fs::create_dir_all(&tmp).unwrap();
    let live = plant(&tmp, &owner_of(1)); // init's: alive, never ours to remove
    let dead = plant(&tmp, "999999999-1");
    let _next = build_on(t.state.path()).await;
    assert!(!dead.exists(), "the next process's construction sweeps");
    assert!(live.exists());
    let dead = plant(&tmp, "999999998-1");
    t.sandbox.prune_images().await.unwrap();
    assert!(!dead.exists(), "a prune sweeps");
    assert!(live.exists());
    std::fs::remove_dir_all(&live).unwrap();
}

/// The variable that makes this test binary the process killed mid-pull.
const CHILD: &str = "OSB_REGISTRY_CRASH_CHILD";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pulls_temp_files_are_swept_by_the_next_process() {
    if let Ok(args) = std::env::var(CHILD) {
        // The child: pulls from the stalling registry until it is killed.
        let (state, reference) = args.split_once('|').unwrap();
        let runtime = build_on(Path::new(state)).await;
        let image = Image::Registry(RegistryImage::new(reference).limits(long()));
        let r = runtime.pull(&image).await;
        panic!("the stalled pull ended: {r:?}");
    }
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let registry = Hostile::start(Attack::StallMidBody).await;
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "a_killed_pulls_temp_files_are_swept_by_the_next_process",
            "--exact",
            "--nocapture",
        ])
        .env(
            CHILD,
            format!("{}|{}", t.state.path().display(), registry.reference()),
        )
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let child_pid = child.id().unwrap();
    let tmp = tmp_of(&t);
    download_started(&tmp).await;
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    let left = tmp_entries(&tmp);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        left[0].starts_with(&format!("layer-{child_pid}-")),
        "the killed child's download: {left:?}"
    );
    println!(
        "the killed pull left {left:?} ({} bytes)",
        bytes_under(&tmp)
    );
    // The next process: its construction removes the dead pull's download.
    let _next = build_on(t.state.path()).await;
    assert!(tmp_entries(&tmp).is_empty(), "{:?}", tmp_entries(&tmp));
    assert_eq!(bytes_under(&t.state.path().join("images")), 0);
}
