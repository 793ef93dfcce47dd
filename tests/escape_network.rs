//! Attacks on the egress policy (`Network::Egress`): code in the sandbox tries to reach what the
//! policy does not allow, learn an injected credential, spend the host's resources through the
//! proxy or the forwarder, break the forwarder, or reach the host through `expose`. Every test
//! asserts that the defence holds: a failure is a breach.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestSandbox;
use common::egress::{LOOPBACK, Upstream, drain, egress, python, raw};
use oci_sandbox::{
    EgressDecision, EgressPolicy, ExecConfig, Network, OciRuntime, OutputMode, Sandbox,
    SandboxConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "s3cret-credential-4711";

/// A server that accepts connections and holds them open, silent, ignoring their end (as a
/// server the sandbox's accomplice runs would), until released: then it closes them all, and
/// every later one at once.
struct Silent {
    port: u16,
    accepted: Arc<AtomicUsize>,
    released: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<tokio::net::TcpStream>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
        self.held.lock().unwrap().clear();
    }
}

impl Silent {
    async fn start() -> Silent {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let released = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (a, r, h) = (accepted.clone(), released.clone(), held.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                if !r.load(Ordering::SeqCst) {
                    h.lock().unwrap().push(s);
                }
            }
        });
        Silent {
            port,
            accepted,
            released,
            held,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
        self.held.lock().unwrap().clear();
    }
}

/// Runs `script` in a new exec of `sandbox`; returns its stdout and stderr.
async fn sh(sandbox: &Sandbox, script: &str) -> String {
    common::egress::with_interpreter(sandbox, "sh", script).await
}

/// Sockets of live processes connected to `127.0.0.1:port` (in `/proc/net/tcp`, owned by an
/// fd: an orphan that only waits out its FIN timeout has inode 0).
fn open_sockets_to(port: u16) -> usize {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let remote = format!("0100007F:{port:04X}");
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 9 && f[2] == remote && f[9] != "0"
        })
        .count()
}

/// An IPv4 address of this host that is not loopback (its address on the network).
fn host_address() -> Option<Ipv4Addr> {
    let udp = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    if udp.connect("192.0.2.1:9").is_ok()
        && let Ok(SocketAddr::V4(a)) = udp.local_addr()
        && !a.ip().is_loopback()
        && !a.ip().is_unspecified()
    {
        return Some(*a.ip());
    }
    // /proc/net/fib_trie: an address line followed by "/32 host LOCAL".
    let trie = std::fs::read_to_string("/proc/net/fib_trie").ok()?;
    let lines: Vec<&str> = trie.lines().collect();
    lines.windows(2).find_map(|w| {
        let ip: Ipv4Addr = w[0].trim().trim_start_matches("|-- ").parse().ok()?;
        (w[1].contains("/32 host LOCAL") && !ip.is_loopback()).then_some(ip)
    })
}

fn is_ok(status: Option<&String>) -> bool {
    status.is_some_and(|s| s.starts_with("HTTP/1.1 200") || s.starts_with("HTTP/1.0 200"))
}

// ---------------------------------------------------------------------------------------------
// (a) Parser tricks: names, authorities, literals, pipelining, long heads.

/// Every trick a client could play with the request head to reach `evil.test` (a host loopback
/// server that a resolve entry names, but no rule allows) or the host's loopback. Nothing may
/// reach it; the allowed destination still works.
async fn request_tricks_never_reach_a_denied_destination(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let allowed = Upstream::start().await;
    let evil = Upstream::start().await;
    let (a, e) = (allowed.port, evil.port);
    let policy = EgressPolicy::new()
        .allow_domain("allowed.test")
        .allow_domain_ports("ported.test", &[a])
        .resolve("allowed.test", &[LOOPBACK])
        .resolve("ported.test", &[LOOPBACK])
        .resolve("evil.test", &[LOOPBACK]);
    let sandbox = t.start_sandbox(&egress(policy)).await;
    let mut events = sandbox.egress_events();

    let get = |target: &str| format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();
    let connect = |authority: &str| format!("CONNECT {authority} HTTP/1.1\r\n\r\n").into_bytes();
    let mut long = format!("GET http://evil.test:{e}/ HTTP/1.1\r\nX-Pad: ").into_bytes();
    long.extend(std::iter::repeat_n(b'a', 70_000));
    long.extend_from_slice(b"\r\n\r\n");
    let mut many = format!("GET http://evil.test:{e}/ HTTP/1.1\r\n").into_bytes();
    for i in 0..200 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");

    // Each must be refused (400 or 403), never relayed.
    let refused: Vec<(&str, Vec<u8>)> = vec![
        (
            "abs-userinfo",
            get(&format!("http://allowed.test@evil.test:{e}/")),
        ),
        (
            "abs-userinfo-port",
            get(&format!("http://allowed.test:{a}@evil.test:{e}/")),
        ),
        (
            "abs-fragment",
            get(&format!("http://evil.test:{e}#@allowed.test:{a}/")),
        ),
        (
            "abs-query",
            get(&format!("http://evil.test:{e}?@allowed.test:{a}/")),
        ),
        (
            "abs-backslash",
            get(&format!("http://allowed.test:{a}\\@evil.test:{e}/")),
        ),
        ("abs-upper", get(&format!("HTTP://EVIL.TEST:{e}/"))),
        ("abs-upper-host", get(&format!("http://EVIL.test:{e}/"))),
        ("abs-trailing-dot", get(&format!("http://evil.test.:{e}/"))),
        ("abs-pct", get(&format!("http://evil%2etest:{e}/"))),
        (
            "abs-pct-userinfo",
            get(&format!("http://allowed.test%40evil.test:{e}/")),
        ),
        (
            "abs-suffix",
            get(&format!("http://allowed.test.evil.test:{e}/")),
        ),
        ("abs-prefix", get(&format!("http://evilallowed.test:{e}/"))),
        ("abs-v6-loopback", get(&format!("http://[::1]:{e}/"))),
        (
            "abs-v4-mapped",
            get(&format!("http://[::ffff:127.0.0.1]:{e}/")),
        ),
        ("abs-v4-bracketed", get(&format!("http://[127.0.0.1]:{e}/"))),
        ("abs-decimal", get(&format!("http://2130706433:{e}/"))),
        ("abs-short", get(&format!("http://127.1:{e}/"))),
        ("abs-hex", get(&format!("http://0x7f000001:{e}/"))),
        ("abs-octal", get(&format!("http://0177.0.0.1:{e}/"))),
        ("abs-ip-dot", get(&format!("http://127.0.0.1.:{e}/"))),
        ("abs-zero", get(&format!("http://0.0.0.0:{e}/"))),
        ("abs-zero-short", get(&format!("http://0:{e}/"))),
        ("abs-localhost", get(&format!("http://localhost:{e}/"))),
        ("abs-plus-port", get(&format!("http://evil.test:+{e}/"))),
        ("abs-https", get(&format!("https://evil.test:{e}/"))),
        ("abs-nul", {
            let mut r = get(&format!("http://allowed.test:{a}/"));
            r.splice(11..11, b"\0".iter().copied());
            r
        }),
        (
            "abs-ported-other-port",
            get(&format!("http://ported.test:{e}/")),
        ),
        (
            "abs-host-header",
            format!("GET http://evil.test:{e}/ HTTP/1.1\r\nHost: allowed.test:{a}\r\n\r\n")
                .into_bytes(),
        ),
        (
            "origin-form-host",
            format!("GET / HTTP/1.1\r\nHost: evil.test:{e}\r\n\r\n").into_bytes(),
        ),
        (
            "origin-form-host-allowed",
            format!("GET http://evil.test:{e} HTTP/1.1\r\nHost: allowed.test:{a}\r\n\r\n")
                .into_bytes(),
        ),
        (
            "lf-only",
            format!("GET http://evil.test:{e}/ HTTP/1.1\nHost: x\n\n").into_bytes(),
        ),
        ("long-head", long),
        ("many-headers", many),
        (
            "connect-userinfo",
            connect(&format!("allowed.test@evil.test:{e}")),
        ),
        (
            "connect-userinfo-2",
            connect(&format!("evil.test:{e}@allowed.test:{a}")),
        ),
        (
            "connect-two-ports",
            connect(&format!("allowed.test:{a}:{e}")),
        ),
        ("connect-upper-dot", connect(&format!("EVIL.TEST.:{e}"))),
        ("connect-pct", connect(&format!("evil%2etest:{e}"))),
        ("connect-url", connect(&format!("http://evil.test:{e}/"))),
        ("connect-v6-loopback", connect(&format!("[::1]:{e}"))),
        (
            "connect-v4-mapped",
            connect(&format!("[::ffff:7f00:1]:{e}")),
        ),
        (
            "connect-v4-mapped-long",
            connect(&format!("[0:0:0:0:0:ffff:127.0.0.1]:{e}")),
        ),
        ("connect-v4-compat", connect(&format!("[::127.0.0.1]:{e}"))),
        ("connect-zone", connect(&format!("[fe80::1%25lo]:{e}"))),
        ("connect-bracketed-v4", connect(&format!("[127.0.0.1]:{e}"))),
        ("connect-decimal", connect(&format!("2130706433:{e}"))),
        ("connect-ip-dot", connect(&format!("127.0.0.1.:{e}"))),
        ("connect-leading-zero", connect(&format!("evil.test:0{e}"))),
        ("connect-ported-other", connect(&format!("ported.test:{e}"))),
        (
            "connect-ported-overflow",
            connect(&format!("ported.test:{}", u32::from(a) + 65536)),
        ),
        ("connect-no-port", connect("evil.test")),
        (
            "connect-lowercase-method",
            format!("connect evil.test:{e} HTTP/1.1\r\n\r\n").into_bytes(),
        ),
    ];
    // These reach the allowed destination; what they carry past their head must stay on that
    // connection, never become a request of its own.
    let contained: Vec<(&str, Vec<u8>)> = vec![
        (
            "pipelined-get",
            format!(
                "GET http://allowed.test:{a}/one HTTP/1.1\r\nHost: allowed.test\r\n\r\n\
                 GET http://evil.test:{e}/two HTTP/1.1\r\nHost: evil.test\r\n\r\n"
            )
            .into_bytes(),
        ),
        (
            "pipelined-connect",
            format!(
                "GET http://allowed.test:{a}/one HTTP/1.1\r\nContent-Length: 0\r\n\r\n\
                 CONNECT evil.test:{e} HTTP/1.1\r\n\r\n"
            )
            .into_bytes(),
        ),
        (
            "smuggled-chunked",
            format!(
                "POST http://allowed.test:{a}/one HTTP/1.1\r\nContent-Length: 4\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
                 GET http://evil.test:{e}/two HTTP/1.1\r\n\r\n"
            )
            .into_bytes(),
        ),
        (
            "connect-then-connect",
            format!(
                "CONNECT allowed.test:{a} HTTP/1.1\r\n\r\nCONNECT evil.test:{e} HTTP/1.1\r\n\r\n"
            )
            .into_bytes(),
        ),
        ("ported-leading-zero", connect(&format!("ported.test:0{a}"))),
    ];
    let controls: Vec<(&str, Vec<u8>)> = vec![
        ("ok-get", get(&format!("http://allowed.test:{a}/ok"))),
        ("ok-upper-dot", get(&format!("http://ALLOWED.TEST.:{a}/ok"))),
        ("ok-connect", connect(&format!("allowed.test:{a}"))),
    ];
    let all: Vec<(&str, Vec<u8>)> = refused
        .iter()
        .chain(&contained)
        .chain(&controls)
        .cloned()
        .collect();
    let got = raw(&sandbox, &all).await;
    let report = format!("{got:#?}");
    for (label, _) in &controls {
        assert!(is_ok(got.get(*label)), "control {label} failed: {report}");
    }
    for (label, _) in &refused {
        let status = got.get(*label);
        assert!(
            status.is_some_and(|s| s.starts_with("HTTP/1.1 400") || s.starts_with("HTTP/1.1 403")),
            "{label} was not refused: {report}"
        );
    }
    for (label, _) in &contained {
        assert!(got.contains_key(*label), "{label} missing: {report}");
    }
    assert!(
        evil.heads().is_empty(),
        "the denied destination was reached: {:#?}\n{report}",
        evil.heads()
    );
    let events = drain(&mut events, 1000).await;
    for ev in &events {
        if ev.decision.is_allowed() {
            assert_eq!(ev.address.map(|s| s.port()), Some(a), "{ev:#?}");
            assert!(
                ev.host == "allowed.test" || ev.host == "ported.test",
                "{ev:#?}"
            );
        }
    }
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// Attack: plain HTTP to an allowed name with a `Host` header naming another site. The proxy
/// connects to the allowed name, but the upstream routes by `Host` (virtual hosting, CDNs,
/// reverse proxies): the request, with the credential injected for the allowed name, lands on
/// the other site. RFC 9112 section 3.2.2: a proxy must replace `Host` with the target's
/// authority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_header_cannot_steer_a_forwarded_request() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let up = Upstream::start().await;
    let p = up.port;
    let policy = EgressPolicy::new()
        .allow_domain("api.test")
        .resolve("api.test", &[LOOPBACK])
        .inject_header_ports(
            "api.test",
            &[p],
            "Authorization",
            format!("Bearer {SECRET}"),
        );
    let sandbox = t.start_sandbox(&egress(policy)).await;
    let got = raw(
        &sandbox,
        &[
            (
                "other-host",
                format!("GET http://api.test:{p}/one HTTP/1.1\r\nHost: evil.test\r\n\r\n")
                    .into_bytes(),
            ),
            (
                "two-hosts",
                format!(
                    "GET http://api.test:{p}/two HTTP/1.1\r\nHost: api.test:{p}\r\n\
                     Host: evil.test\r\n\r\n"
                )
                .into_bytes(),
            ),
        ],
    )
    .await;
    sandbox.close().await;
    let heads = up.heads();
    // Two Host headers are refused outright; the one forwarded request names the target.
    assert_eq!(
        got.get("two-hosts").map(String::as_str),
        Some("HTTP/1.1 400 Bad Request"),
        "{got:?}"
    );
    assert_eq!(heads.len(), 1, "{got:?} {heads:#?}");
    for head in &heads {
        let hosts: Vec<&str> = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.trim())
            .collect();
        assert_eq!(
            hosts,
            [format!("api.test:{p}")],
            "the upstream was told another Host than the one the policy allowed:\n{head}"
        );
    }
    t.assert_nothing_left(&[], None).await;
}

/// Attack: with `allow_any_domain`, an address written as a name (`192.0.2.2.` with a trailing
/// dot, `3221225986`, `0xc0000202`) passes the verdict as a *domain*; the host's resolver turns
/// it back into the address, and a non-loopback address counts as "public enough". So the
/// sandbox reaches any address without the CIDR rule that the documentation requires for
/// literals, the host's own services on its network address included (here a server bound on
/// 0.0.0.0, as most are).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_disguised_as_names_need_a_cidr_rule() {
    let ip = host_address().expect("the attack needs a non-loopback address on this host");
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let service = Upstream::start_on("0.0.0.0:0").await;
    let p = service.port;
    let policy = EgressPolicy::new().allow_any_domain(&[]);
    let sandbox = t.start_sandbox(&egress(policy)).await;
    let n = u32::from(ip);
    let get = |host: String, tag: &str| {
        format!("GET http://{host}:{p}/{tag} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
    };
    let got = raw(
        &sandbox,
        &[
            ("literal", get(ip.to_string(), "literal")),
            ("trailing-dot", get(format!("{ip}."), "trailing-dot")),
            ("decimal", get(n.to_string(), "decimal")),
            ("hex", get(format!("0x{n:x}"), "hex")),
            (
                "connect-trailing-dot",
                format!("CONNECT {ip}.:{p} HTTP/1.1\r\n\r\n").into_bytes(),
            ),
        ],
    )
    .await;
    sandbox.close().await;
    let heads = service.heads();
    assert_eq!(
        got.get("literal").map(String::as_str),
        Some("HTTP/1.1 403 Forbidden"),
        "{got:#?}"
    );
    assert!(
        heads.is_empty(),
        "the host's own service on {ip}:{p} was reached without any CIDR rule: \
         answers {got:#?}, requests it got {heads:#?}"
    );
    t.assert_nothing_left(&[], None).await;
}

/// Attack: a policy that allows "all of IPv6" (`::/0`) also allows the IPv4-mapped
/// `[::ffff:127.0.0.1]`, which the kernel connects to as 127.0.0.1: the host's loopback
/// services, which a name resolving there is refused. CIDR matching does not unmap IPv4-mapped
/// addresses, and literals skip the public-address check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_rule_does_not_open_ipv4_loopback() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let service = Upstream::start().await;
    let p = service.port;
    let policy = EgressPolicy::new().allow_cidr("::/0");
    let sandbox = t.start_sandbox(&egress(policy)).await;
    let got = raw(
        &sandbox,
        &[
            (
                "mapped-get",
                format!("GET http://[::ffff:127.0.0.1]:{p}/mapped HTTP/1.1\r\n\r\n").into_bytes(),
            ),
            (
                "mapped-connect",
                format!("CONNECT [::ffff:7f00:1]:{p} HTTP/1.1\r\n\r\n").into_bytes(),
            ),
            (
                "v4-loopback",
                format!("GET http://127.0.0.1:{p}/v4 HTTP/1.1\r\n\r\n").into_bytes(),
            ),
        ],
    )
    .await;
    sandbox.close().await;
    assert_eq!(
        got.get("v4-loopback").map(String::as_str),
        Some("HTTP/1.1 403 Forbidden"),
        "{got:#?}"
    );
    let heads = service.heads();
    assert!(
        heads.is_empty(),
        "an IPv6 rule let the sandbox reach the host's IPv4 loopback: answers {got:#?}, \
         requests {heads:#?}"
    );
    t.assert_nothing_left(&[], None).await;
}

// ---------------------------------------------------------------------------------------------
// (b) The injected credential.

/// Every way to have the credential set where the sandbox can read it, other than the allowed
/// upstream echoing it: other names on the same server, its address, a tunnel, a failed
/// connection's error, header-name variants, the environment, the events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credential_goes_to_its_domain_only() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let up = Upstream::start().await;
    let p = up.port;
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let policy = EgressPolicy::new()
        .allow_domain("api.test")
        .allow_domain("other.test")
        .allow_domain("dead.test")
        .allow_cidr_ports("127.0.0.1", &[p])
        .resolve("api.test", &[LOOPBACK])
        .resolve("other.test", &[LOOPBACK])
        .resolve("dead.test", &[LOOPBACK])
        .inject_header_ports(
            "api.test",
            &[p],
            "Authorization",
            format!("Bearer {SECRET}"),
        )
        .inject_header_ports(
            "dead.test",
            &[p, closed_port],
            "Authorization",
            format!("Bearer {SECRET}"),
        );
    let sandbox = t.start_sandbox(&egress(policy)).await;
    let mut events = sandbox.egress_events();
    let got = raw(
        &sandbox,
        &[
            (
                "cred",
                format!(
                    "GET http://api.test:{p}/cred HTTP/1.1\r\nauthorization: mine\r\n\
                     AUTHORIZATION: mine2\r\n\r\n"
                )
                .into_bytes(),
            ),
            (
                "other",
                format!("GET http://other.test:{p}/other HTTP/1.1\r\nHost: api.test\r\n\r\n")
                    .into_bytes(),
            ),
            (
                "ip",
                format!("GET http://127.0.0.1:{p}/ip HTTP/1.1\r\nHost: api.test\r\n\r\n")
                    .into_bytes(),
            ),
            (
                "tunnel",
                format!(
                    "CONNECT api.test:{p} HTTP/1.1\r\n\r\nGET /tunnel HTTP/1.1\r\n\
                     Host: api.test\r\n\r\n"
                )
                .into_bytes(),
            ),
            (
                "pipelined",
                format!(
                    "GET http://other.test:{p}/first HTTP/1.1\r\n\r\n\
                     GET http://api.test:{p}/second HTTP/1.1\r\n\r\n"
                )
                .into_bytes(),
            ),
        ],
    )
    .await;
    // A failed connection's answer, whole, and the environment.
    let dead = sh(
        &sandbox,
        &format!(
            "curl -s -i --max-time 20 http://dead.test:{closed_port}/dead; echo; \
             env | grep -c {SECRET}"
        ),
    )
    .await;
    let evs = drain(&mut events, 20).await;
    sandbox.close().await;
    assert!(
        !dead.contains(SECRET) && dead.contains("502"),
        "a failed connection's answer: {dead}"
    );
    assert!(!format!("{got:?}").contains(SECRET), "{got:#?}");
    assert!(!format!("{evs:?}").contains(SECRET), "{evs:#?}");
    let heads = up.heads();
    let cred = heads
        .iter()
        .find(|h| h.starts_with("GET /cred "))
        .unwrap_or_else(|| panic!("{heads:#?}"));
    let auth: Vec<&str> = cred
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("authorization:"))
        .collect();
    assert_eq!(auth, [format!("Authorization: Bearer {SECRET}")], "{cred}");
    for head in heads.iter().filter(|h| !h.starts_with("GET /cred ")) {
        assert!(
            !head.contains(SECRET),
            "the credential went beyond its domain:\n{head}"
        );
    }
    t.assert_nothing_left(&[], None).await;
}

// ---------------------------------------------------------------------------------------------
// (c) Resources and hangs.

/// Attack: tunnels to an allowed server that never closes (the sandbox's accomplice). When the
/// sandbox is gone, the proxy only half-closes the upstream and waits for it forever: the tasks,
/// their fds and slots outlive the sandbox, no event is ever sent, and
/// `NamespaceContainer::close()` (which waits for every background task) never returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_do_not_outlive_their_sandbox() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let silent = Silent::start().await;
    let p = silent.port;
    let policy = EgressPolicy::new()
        .allow_domain("silent.test")
        .resolve("silent.test", &[LOOPBACK]);
    let sandbox = t.start_sandbox(&egress(policy)).await;
    let program = format!(
        "import socket, time\n\
         held = []\n\
         for i in range(8):\n\
         \x20   s = socket.create_connection(('127.0.0.1', 3128), timeout=10)\n\
         \x20   s.sendall(b'CONNECT silent.test:{p} HTTP/1.1\\r\\n\\r\\n')\n\
         \x20   print(s.recv(100).split(b'\\r\\n')[0].decode(), flush=True)\n\
         \x20   held.append(s)\n\
         time.sleep(3600)\n"
    );
    let _job = sandbox
        .spawn_job(
            &ExecConfig::new("python3", vec!["-c".to_owned(), program]),
            OutputMode::Combined,
        )
        .await
        .unwrap();
    for _ in 0..200 {
        if silent.accepted() >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(silent.accepted(), 8, "the tunnels were not made");
    let open_before = open_sockets_to(p);
    sandbox.close().await;
    drop(_job);
    drop(sandbox);
    let closed = tokio::time::timeout(Duration::from_secs(20), t.sandbox.close())
        .await
        .is_ok();
    let open_after = open_sockets_to(p);
    // Let the tasks end, whatever happened, before asserting.
    silent.release();
    assert!(
        closed,
        "NamespaceContainer::close() still waits 20 s after the sandbox was closed: its egress \
         proxy tasks outlive it while the upstream stays open (the proxy's sockets to the \
         upstream: {open_before} with the sandbox running, {open_after} 20 s after its end)"
    );
    t.assert_nothing_left(&[], None).await;
}

/// Attack: 600 connections at once, each a tunnel to a server that holds it. At most 256 may
/// reach the host's proxy (and its fds) at a time; the rest wait or are closed; once they end,
/// the forwarder still works (no deadlock on its channel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_stays_within_the_bound() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let silent = Silent::start().await;
    let up = Upstream::start().await;
    let (p, u) = (silent.port, up.port);
    let policy = EgressPolicy::new()
        .allow_domain("silent.test")
        .allow_domain("allowed.test")
        .resolve("silent.test", &[LOOPBACK])
        .resolve("allowed.test", &[LOOPBACK]);
    // Room for the forwarder's relay thread per connection: the pids limit is not the bound
    // under test.
    let config = SandboxConfig {
        pids_limit: Some(4096),
        ..egress(policy)
    };
    let sandbox = t.start_sandbox(&config).await;
    let program = format!(
        "import socket, time\n\
         held = []\n\
         ok = 0\n\
         for i in range(600):\n\
         \x20   try:\n\
         \x20       s = socket.socket()\n\
         \x20       s.settimeout(2)\n\
         \x20       s.connect(('127.0.0.1', 3128))\n\
         \x20       s.sendall(b'CONNECT silent.test:{p} HTTP/1.1\\r\\n\\r\\n')\n\
         \x20       held.append(s)\n\
         \x20       ok += 1\n\
         \x20   except Exception as e:\n\
         \x20       pass\n\
         open('/tmp/flood', 'w').write(str(ok))\n\
         time.sleep(3600)\n"
    );
    let job = sandbox
        .spawn_job(
            &ExecConfig::new("python3", vec!["-c".to_owned(), program]),
            OutputMode::Combined,
        )
        .await
        .unwrap();
    // Until the sandbox has made its connections and the count settles.
    let mut connected = String::new();
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        connected = sh(&sandbox, "cat /tmp/flood 2>/dev/null").await;
        if !connected.is_empty() {
            break;
        }
    }
    let mut last = usize::MAX;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = silent.accepted();
        if now == last {
            break;
        }
        last = now;
    }
    let reached = silent.accepted();
    let proxy_sockets = open_sockets_to(p);
    // Releasing the held tunnels lets the waiting connections through (and closes them).
    silent.release();
    job.kill().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = sh(
        &sandbox,
        &format!("curl -s --max-time 20 http://allowed.test:{u}/after-flood"),
    )
    .await;
    drop(job);
    sandbox.close().await;
    eprintln!(
        "flood: {connected:?} connected in the sandbox, {reached} reached the host, \
         {proxy_sockets} proxy sockets to it at once"
    );
    assert!(reached > 0, "no tunnel was made");
    assert!(
        reached <= 256,
        "{reached} connections reached the host through one sandbox's proxy at once"
    );
    assert!(
        proxy_sockets <= 256,
        "the proxy held {proxy_sockets} upstream sockets (and as many to the forwarder)"
    );
    assert_eq!(
        after, "hello from upstream /after-flood\n",
        "the forwarder no longer works after the flood"
    );
    let closed = tokio::time::timeout(Duration::from_secs(20), t.sandbox.close())
        .await
        .is_ok();
    assert!(closed, "close() hangs after the flood");
    t.assert_nothing_left(&[], None).await;
}

// ---------------------------------------------------------------------------------------------
// (d) The forwarder and its channel; other sandboxes.

/// The forwarder's spare sockets are made at the sandbox's start, and the proxy task at their
/// other end gives up after its 30 s head deadline. A connection made after the sandbox has been
/// idle that long must still work (and must not kill the forwarder: it writes to the dead
/// socket, and SIGPIPE is not ignored in the launcher's helpers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarder_works_after_an_idle_minute() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let up = Upstream::start().await;
    let p = up.port;
    let policy = EgressPolicy::new()
        .allow_domain("allowed.test")
        .resolve("allowed.test", &[LOOPBACK]);
    let sandbox = t.start_sandbox(&egress(policy)).await;
    let curl = |tag: &str| {
        format!("curl -s -S --max-time 10 -d x http://allowed.test:{p}/{tag} 2>&1; echo \" rc=$?\"")
    };
    let first = sh(&sandbox, &curl("first")).await;
    assert_eq!(first, "hello from upstream /first\n rc=0\n");
    tokio::time::sleep(Duration::from_secs(35)).await;
    let mut later = Vec::new();
    for i in 0..4 {
        later.push(sh(&sandbox, &curl(&format!("later{i}"))).await);
    }
    sandbox.close().await;
    for (i, out) in later.iter().enumerate() {
        assert_eq!(
            out,
            &format!("hello from upstream /later{i}\n rc=0\n"),
            "request {i} after 35 s idle: {later:#?}"
        );
    }
    t.assert_nothing_left(&[], None).await;
}

/// A sandbox that kills its own forwarder, takes its port and floods it cannot touch another
/// sandbox's proxy: the other's connections and events go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sandbox_cannot_disturb_anothers_proxy() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let up = Upstream::start().await;
    let p = up.port;
    let policy = EgressPolicy::new()
        .allow_domain("allowed.test")
        .resolve("allowed.test", &[LOOPBACK]);
    let attacker = t.start_sandbox(&egress(policy.clone())).await;
    let victim = t.start_sandbox(&egress(policy)).await;
    let mut victim_events = victim.egress_events();
    let mut attacker_events = attacker.egress_events();
    // Kill the forwarder (the launcher's children other than this command's), then listen on
    // 3128 itself.
    let out = sh(
        &attacker,
        "for p in /proc/[0-9]*; do set -- $(cat $p/stat 2>/dev/null); \
         [ \"$4\" = 1 ] && [ \"$1\" != \"$PPID\" ] && kill -9 $1; done; sleep 0.5; \
         python3 -c 'import socket; s = socket.socket(); \
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); \
         s.bind((\"127.0.0.1\", 3128)); s.listen(); print(\"bound\")'; \
         for i in $(seq 50); do curl -s -o /dev/null --max-time 1 http://allowed.test/; done; \
         echo done",
    )
    .await;
    assert!(out.contains("bound") && out.contains("done"), "{out}");
    let reached = sh(
        &victim,
        &format!("curl -s --max-time 10 http://allowed.test:{p}/victim"),
    )
    .await;
    assert_eq!(reached, "hello from upstream /victim\n");
    let evs = drain(&mut victim_events, 10).await;
    assert_eq!(evs.len(), 1, "{evs:#?}");
    assert_eq!(evs[0].sandbox, victim.id());
    assert!(evs[0].decision.is_allowed());
    let theirs = drain(&mut attacker_events, 10).await;
    assert!(
        theirs.iter().all(|e| e.sandbox == attacker.id()),
        "{theirs:#?}"
    );
    attacker.close().await;
    victim.close().await;
    let closed = tokio::time::timeout(Duration::from_secs(20), t.sandbox.close())
        .await
        .is_ok();
    assert!(closed, "close() hangs after a forwarder was killed");
    t.assert_nothing_left(&[], None).await;
}

/// `expose` connects to the sandbox's own loopback, never the host's: with a server on the
/// host's `127.0.0.1:<port>` and none in the sandbox, a connection to the exposed address gets
/// nothing from the host's server (whatever the sandbox's network mode).
async fn expose_never_reaches_the_hosts_loopback(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let host_service = Upstream::start().await;
    let p = host_service.port;
    for network in [
        Network::Egress(EgressPolicy::new().allow_cidr("127.0.0.1")),
        Network::None,
    ] {
        let sandbox = t
            .start_sandbox(&SandboxConfig {
                network,
                ..SandboxConfig::default()
            })
            .await;
        let addr = sandbox.expose(p).await.unwrap();
        let mut answer = String::new();
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            let _ = s
                .write_all(b"GET /via-expose HTTP/1.0\r\nHost: x\r\n\r\n")
                .await;
            let _ =
                tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer)).await;
        }
        assert!(
            !answer.contains("hello from upstream"),
            "expose reached the host's loopback: {answer}"
        );
        sandbox.close().await;
    }
    assert!(
        host_service.heads().is_empty(),
        "{:#?}",
        host_service.heads()
    );
    t.assert_nothing_left(&[], None).await;
}

/// Slowloris: heads that never end, trickled a byte a second by 20 connections at once. Each is
/// cut off by the proxy's head deadline (30 s), and meanwhile the proxy answers other
/// connections at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_heads_are_cut_off_at_the_deadline() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let up = Upstream::start().await;
    let p = up.port;
    let policy = EgressPolicy::new()
        .allow_domain("allowed.test")
        .resolve("allowed.test", &[LOOPBACK]);
    let sandbox = t.start_sandbox(&egress(policy)).await;
    let program = format!(
        "import socket, select, time, threading\n\
         out = {{}}\n\
         def endless(i):\n\
         \x20   s = socket.create_connection(('127.0.0.1', 3128), timeout=60)\n\
         \x20   s.sendall(b'GET http://allowed.test:{p}/endless HTTP/1.1\\r\\nX-A: ')\n\
         \x20   t0 = time.time()\n\
         \x20   while time.time() - t0 < 60:\n\
         \x20       r, _, _ = select.select([s], [], [], 1)\n\
         \x20       if r:\n\
         \x20           s.recv(100)\n\
         \x20           out[i] = round(time.time() - t0)\n\
         \x20           return\n\
         \x20       s.sendall(b'a')\n\
         \x20   out[i] = 'still open'\n\
         ts = [threading.Thread(target=endless, args=(i,)) for i in range(20)]\n\
         [t.start() for t in ts]\n\
         time.sleep(2)\n\
         s = socket.create_connection(('127.0.0.1', 3128), timeout=10)\n\
         s.sendall(b'GET http://allowed.test:{p}/meanwhile HTTP/1.1\\r\\n\\r\\n')\n\
         print('meanwhile:', s.recv(200).split(b'\\r\\n')[0].decode(), flush=True)\n\
         [t.join() for t in ts]\n\
         print('cut after:', sorted(set(out.values()), key=str), flush=True)\n"
    );
    let out = python(&sandbox, &program).await;
    sandbox.close().await;
    assert!(out.contains("meanwhile: HTTP/1.1 200"), "{out}");
    let cut = out
        .lines()
        .find_map(|l| l.strip_prefix("cut after: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(!cut.contains("still open"), "{out}");
    let times: Vec<u64> = cut
        .trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .map(|n| n.parse().unwrap_or_else(|_| panic!("{out}")))
        .collect();
    assert!(times.iter().all(|t| (25..=40).contains(t)), "{out}");
    let heads = up.heads();
    assert!(heads.iter().all(|h| h.contains("/meanwhile")), "{heads:#?}");
    t.assert_nothing_left(&[], None).await;
}

/// An upload the proxy refuses (403) while the client is still sending its body: the proxy
/// closes its socket, the forwarder's relay writes the next chunk into it and takes SIGPIPE
/// (not ignored in the launcher's helpers), which kills the forwarder and with it every later
/// connection of every command in the sandbox. A refused request must cost that connection
/// only.
async fn a_refused_upload_does_not_kill_the_forwarder(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let up = Upstream::start().await;
    let p = up.port;
    let policy = EgressPolicy::new()
        .allow_domain("allowed.test")
        .resolve("allowed.test", &[LOOPBACK]);
    let sandbox = t.start_sandbox(&egress(policy)).await;
    let program = "import socket\n\
         s = socket.create_connection(('127.0.0.1', 3128), timeout=10)\n\
         s.sendall(b'POST http://denied.test/upload HTTP/1.1\\r\\nContent-Length: 100000000\\r\\n\\r\\n')\n\
         try:\n\
         \x20   for i in range(1500):\n\
         \x20       s.sendall(b'x' * 65536)\n\
         \x20   print('sent all')\n\
         except Exception as e:\n\
         \x20   print('upload ended:', type(e).__name__)\n";
    let upload = python(&sandbox, program).await;
    let after = sh(
        &sandbox,
        &format!("curl -s -S --max-time 10 http://allowed.test:{p}/after 2>&1"),
    )
    .await;
    sandbox.close().await;
    assert_eq!(
        after,
        "hello from upstream /after\n",
        "egress is dead after one refused upload ({})",
        upload.trim()
    );
    t.assert_nothing_left(&[], None).await;
}

/// A denied connection is an event and a tracing line; a flood of them reaches the host as
/// events: the subscriber sees denials, and no allowed connection (the one being hidden) is
/// reported as anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_floods_are_reported_as_denied() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let up = Upstream::start().await;
    let p = up.port;
    let policy = EgressPolicy::new()
        .allow_domain("allowed.test")
        .resolve("allowed.test", &[LOOPBACK]);
    let sandbox = t.start_sandbox(&egress(policy)).await;
    let mut events = sandbox.egress_events();
    let program = format!(
        "import socket\n\
         for i in range(300):\n\
         \x20   s = socket.create_connection(('127.0.0.1', 3128), timeout=10)\n\
         \x20   s.sendall(b'CONNECT denied.test:1 HTTP/1.1\\r\\n\\r\\n')\n\
         \x20   s.recv(100)\n\
         \x20   s.close()\n\
         s = socket.create_connection(('127.0.0.1', 3128), timeout=10)\n\
         s.sendall(b'GET http://allowed.test:{p}/hidden HTTP/1.1\\r\\n\\r\\n')\n\
         print(s.recv(100).split(b'\\r\\n')[0].decode())\n"
    );
    let out = python(&sandbox, &program).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let evs = drain(&mut events, 400).await;
    sandbox.close().await;
    let denied = evs
        .iter()
        .filter(|e| matches!(e.decision, EgressDecision::Denied { .. }))
        .count();
    let allowed: Vec<_> = evs.iter().filter(|e| e.decision.is_allowed()).collect();
    assert_eq!(denied, 300, "{}", evs.len());
    assert_eq!(allowed.len(), 1, "{allowed:#?}");
    assert_eq!(allowed[0].host, "allowed.test");
    t.assert_nothing_left(&[], None).await;
}

on_every_runtime!(
    request_tricks_never_reach_a_denied_destination,
    expose_never_reaches_the_hosts_loopback,
    a_refused_upload_does_not_kill_the_forwarder,
);
