//! One connection through a sandbox's egress proxy: the HTTP request head the sandbox sends
//! (`CONNECT host:port` for a tunnel, or a plain-HTTP request in absolute form), the policy's
//! verdict *before* any name is resolved, the connection, the relay, and one event.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::Egress;
use crate::config::network::{
    EgressDecision, EgressEvent, EgressPolicy, Host, Verdict, canonical, is_public_enough,
};

/// The longest request head the proxy reads.
const MAX_HEAD: usize = 64 * 1024;
/// How long the sandbox has to send its request head.
const HEAD_DEADLINE: Duration = Duration::from_secs(30);
/// How long a name lookup and a connect may take.
const CONNECT_DEADLINE: Duration = Duration::from_secs(15);

/// What the sandbox asked for.
struct Request {
    method: String,
    host: Host,
    port: u16,
    /// Plain HTTP: the head to send upstream (origin form, headers rewritten).
    forward: Option<ForwardHead>,
    /// Bytes read past the head (a body's start, or a TLS hello sent early).
    rest: Vec<u8>,
}

struct ForwardHead {
    /// The `Host` header's value: the target's authority, normalised (lower case, no final
    /// dot, the port in digits and left out when 80).
    authority: String,
    path: String,
    version: u8,
    headers: Vec<(String, Vec<u8>)>,
    /// How the request's body ends: the proxy forwards that body and nothing after it.
    body: Body,
}

/// The framing of a plain-HTTP request's body (RFC 9112 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// No body: neither `Content-Length` nor `Transfer-Encoding`.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`, up to its last chunk and trailers.
    Chunked,
}

/// A request the proxy answers `400` without connecting: why, and what could be read of it
/// (for its event).
struct Refusal {
    reason: String,
    method: String,
    host: String,
    port: u16,
}

impl Refusal {
    fn new(reason: impl Into<String>) -> Self {
        Refusal {
            reason: reason.into(),
            method: String::new(),
            host: String::new(),
            port: 0,
        }
    }
}

impl From<String> for Refusal {
    fn from(reason: String) -> Self {
        Refusal::new(reason)
    }
}

/// The longest line of a chunked body's framing (a size with its extensions, a trailer).
const MAX_CHUNK_LINE: usize = 8 * 1024;

/// Relay buffer per direction and connection (256 connections: 64 MiB per sandbox at most;
/// 64 KiB cost gVisor a fifth of its throughput).
const RELAY_BUFFER: usize = 128 << 10;

/// Serves one connection from the sandbox's forwarder to its end, or until `stop` (its
/// forwarder's end, or the sandbox's).
pub(crate) async fn serve(
    client: UnixStream,
    egress: Arc<Egress>,
    stop: tokio_util::sync::CancellationToken,
) {
    tokio::select! {
        () = serve_until_done(client, egress) => {}
        () = stop.cancelled() => {}
    }
}

async fn serve_until_done(mut client: UnixStream, egress: Arc<Egress>) {
    // A socket the forwarder holds as a spare sees nothing until a connection uses it: the
    // head's deadline starts with its first byte.
    if client.readable().await.is_err() {
        return;
    }
    let begun = Instant::now();
    let request = match tokio::time::timeout(HEAD_DEADLINE, read_request(&mut client)).await {
        Ok(Ok(r)) => r,
        Ok(Err(refusal)) => {
            let _ = respond(&mut client, 400, &refusal.reason).await;
            report_refusal(&egress, refusal, begun);
            return;
        }
        Err(_) => {
            let reason = format!("the request head did not come within {HEAD_DEADLINE:?}");
            report_refusal(&egress, Refusal::new(reason), begun);
            return;
        }
    };
    let policy = egress.policy();
    let mut event = EgressEvent {
        sandbox: egress.sandbox.clone(),
        host: request.host.to_string(),
        port: request.port,
        method: request.method.clone(),
        decision: EgressDecision::Denied {
            reason: String::new(),
        },
        address: None,
        bytes_sent: 0,
        bytes_received: 0,
        connect_time: Duration::ZERO,
        duration: Duration::ZERO,
    };
    // The policy's verdict, then a request that would reflect an injected credential.
    let allowed = match policy.verdict(&request.host, request.port) {
        Verdict::Allowed(rule) => match reflects_credentials(&request, &policy) {
            None => Ok(rule),
            Some(reason) => Err(reason),
        },
        Verdict::Denied(reason) => Err(reason),
    };
    let rule = match allowed {
        Ok(rule) => rule,
        Err(reason) => {
            let _ = respond(&mut client, 403, &reason).await;
            event.decision = EgressDecision::Denied { reason };
            event.connect_time = begun.elapsed();
            event.duration = event.connect_time;
            egress.report(event);
            return;
        }
    };
    let upstream = tokio::time::timeout(
        CONNECT_DEADLINE,
        connect(&policy, &request.host, request.port),
    )
    .await
    .unwrap_or_else(|_| Err("timed out connecting".into()));
    event.connect_time = begun.elapsed();
    let upstream = match upstream {
        Ok(s) => s,
        Err(error) => {
            let _ = respond(&mut client, 502, &error).await;
            event.decision = EgressDecision::Failed { rule, error };
            event.duration = event.connect_time;
            egress.report(event);
            return;
        }
    };
    event.address = upstream.peer_addr().ok();
    event.decision = EgressDecision::Allowed { rule };
    let _ = upstream.set_nodelay(true);
    let _open = egress.counters.opened();
    let upstream = Counted {
        inner: upstream,
        sent: Arc::clone(&egress.counters.sent),
        received: Arc::clone(&egress.counters.received),
    };
    let (sent, received) = match &request.forward {
        None => tunnel(client, upstream, &request.rest).await,
        Some(head) => {
            let name = match &request.host {
                Host::Name(n) => n.as_str(),
                Host::Ip(_) => "",
            };
            let bytes = head.encode(&request, &policy, name);
            forward(client, upstream, bytes, head.body, &request.rest).await
        }
    };
    event.bytes_sent = sent;
    event.bytes_received = received;
    event.duration = begun.elapsed();
    egress.report(event);
}

/// Why `request` is refused though its destination is allowed: a `TRACE` (or `TRACK`) that
/// would carry an injected header. The upstream answers a TRACE with the request it got
/// (RFC 9110 9.3.8; Apache does by default), injected credential included, and RFC 9110
/// says a client must not send sensitive fields in one.
fn reflects_credentials(request: &Request, policy: &EgressPolicy) -> Option<String> {
    let Host::Name(name) = &request.host else {
        return None;
    };
    let reflected = ["TRACE", "TRACK"]
        .iter()
        .any(|m| request.method.eq_ignore_ascii_case(m));
    (request.forward.is_some()
        && reflected
        && policy.headers_for(name, request.port).next().is_some())
    .then(|| {
        format!(
            "{} to {name} would reflect the headers injected for it: refused",
            request.method
        )
    })
}

/// Reports a request answered `400`: a denial like any other.
fn report_refusal(egress: &Egress, refusal: Refusal, begun: Instant) {
    egress.report(EgressEvent {
        sandbox: egress.sandbox.clone(),
        host: refusal.host,
        port: refusal.port,
        method: refusal.method,
        decision: EgressDecision::Denied {
            reason: refusal.reason,
        },
        address: None,
        bytes_sent: 0,
        bytes_received: 0,
        connect_time: begun.elapsed(),
        duration: begun.elapsed(),
    });
}

/// An upstream connection whose bytes are counted as they go, into the sandbox's
/// [`EgressCounts`](crate::EgressCounts): a long tunnel shows in the metrics while it runs.
struct Counted<T> {
    inner: T,
    sent: Arc<std::sync::atomic::AtomicU64>,
    received: Arc<std::sync::atomic::AtomicU64>,
}

type Upstream = Counted<TcpStream>;

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.received
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            self.sent
                .fetch_add(*n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A `CONNECT` tunnel: the answer, then bytes both ways unread. Bytes sent and received.
async fn tunnel(mut client: UnixStream, mut upstream: Upstream, early: &[u8]) -> (u64, u64) {
    let mut sent = 0;
    let relayed = async {
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        if !early.is_empty() {
            upstream.write_all(early).await?;
            sent += early.len() as u64;
        }
        tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut upstream,
            RELAY_BUFFER,
            RELAY_BUFFER,
        )
        .await
    };
    match relayed.await {
        Ok((up, down)) => (sent + up, down),
        Err(e) => {
            tracing::debug!(error = %e, "egress tunnel ended with an error");
            (sent, 0)
        }
    }
}

/// One plain-HTTP request: its head (`head`, rewritten), its body as its framing says, and
/// nothing after it (a pipelined request is never sent: the head asks for `Connection:
/// close`); then the answer, until the upstream closes. What the sandbox sends meanwhile is
/// read and dropped. Bytes sent and received.
async fn forward(
    client: UnixStream,
    upstream: Upstream,
    head: Vec<u8>,
    body: Body,
    early: &[u8],
) -> (u64, u64) {
    let (client_read, mut client_write) = client.into_split();
    let mut from_client =
        tokio::io::BufReader::with_capacity(RELAY_BUFFER, AsyncReadExt::chain(early, client_read));
    let (mut up_read, mut up_write) = tokio::io::split(upstream);
    let mut sent = head.len() as u64;
    let request = async {
        up_write.write_all(&head).await?;
        sent += match body {
            Body::Empty => 0,
            Body::Length(n) => {
                let copied =
                    tokio::io::copy(&mut (&mut from_client).take(n), &mut up_write).await?;
                if copied < n {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the request's body ended early",
                    ));
                }
                copied
            }
            Body::Chunked => copy_chunked(&mut from_client, &mut up_write).await?,
        };
        up_write.flush().await?;
        // Whatever comes after the body is no request of this connection's.
        let mut sink = [0u8; 4096];
        while from_client.read(&mut sink).await? > 0 {}
        std::future::pending::<std::io::Result<()>>().await
    };
    let answer = tokio::io::copy(&mut up_read, &mut client_write);
    let received = tokio::select! {
        r = request => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "egress request ended with an error");
            }
            0
        }
        r = answer => r.unwrap_or(0),
    };
    let _ = client_write.shutdown().await;
    (sent, received)
}

/// Copies a chunked body (RFC 9112 section 7.1) as it is, checking its framing, up to its
/// last chunk and trailers, and nothing after. Returns the bytes copied.
///
/// Strict, because the bytes go upstream as they came: every framing line ends in CRLF, a
/// size is hex digits only (no sign, no whitespace before it), extensions and trailers hold
/// no control character, and a trailer is a `name: value` field. A lenient proxy (a bare LF
/// taken as a line end, say) reads a body that ends elsewhere than a strict upstream's, and
/// a request hidden in what the proxy took for chunk data is one more request upstream.
async fn copy_chunked(
    from: &mut (impl tokio::io::AsyncBufRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> std::io::Result<u64> {
    use tokio::io::AsyncBufReadExt;
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let mut copied = 0u64;
    let mut line = Vec::new();
    loop {
        read_line(from, &mut line).await?;
        let text = crlf_line(&line).ok_or_else(|| bad("a chunk size line without CRLF"))?;
        let (size_text, ext) = match text.iter().position(|b| *b == b';') {
            Some(i) => (text[..i].trim_ascii_end(), Some(&text[i..])),
            None => (text, None),
        };
        let hex = !size_text.is_empty()
            && size_text.len() <= 16
            && size_text.iter().all(u8::is_ascii_hexdigit);
        if !hex || ext.is_some_and(|e| e.iter().any(|b| is_ctl(*b))) {
            return Err(bad("a bad chunk size or extension"));
        }
        let size_text = std::str::from_utf8(size_text).map_err(|_| bad("a bad chunk size"))?;
        let size = u64::from_str_radix(size_text, 16).map_err(|_| bad("a bad chunk size"))?;
        to.write_all(&line).await?;
        copied += line.len() as u64;
        if size == 0 {
            // Trailers (`name: value` fields), up to an empty line.
            loop {
                read_line(from, &mut line).await?;
                let field = crlf_line(&line).ok_or_else(|| bad("a trailer without CRLF"))?;
                let valid = field.is_empty()
                    || field.iter().position(|b| *b == b':').is_some_and(|colon| {
                        colon > 0
                            && field[..colon].iter().all(|b| is_token(*b))
                            && !field[colon..].iter().any(|b| is_ctl(*b))
                    });
                if !valid {
                    return Err(bad("a malformed trailer"));
                }
                to.write_all(&line).await?;
                copied += line.len() as u64;
                if field.is_empty() {
                    return Ok(copied);
                }
            }
        }
        let n = tokio::io::copy(&mut from.take(size), to).await?;
        if n < size {
            return Err(bad("the body ended inside a chunk"));
        }
        read_line(from, &mut line).await?;
        if line != b"\r\n" {
            return Err(bad("a chunk without its CRLF"));
        }
        to.write_all(&line).await?;
        copied += n + line.len() as u64;
        let _ = from.fill_buf().await;
    }
}

/// A line's text without its CRLF, if it ends in CRLF and holds no other CR or LF.
fn crlf_line(line: &[u8]) -> Option<&[u8]> {
    let text = line.strip_suffix(b"\r\n")?;
    (!text.iter().any(|b| *b == b'\r' || *b == b'\n')).then_some(text)
}

/// A control character (HTAB aside), never in a chunk extension or a field.
fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// A character of an HTTP token (a field name).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads one line (with its end) into `line`, at most [`MAX_CHUNK_LINE`] bytes.
async fn read_line(
    from: &mut (impl tokio::io::AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
) -> std::io::Result<()> {
    use tokio::io::AsyncBufReadExt;
    line.clear();
    let n = from
        .take(MAX_CHUNK_LINE as u64)
        .read_until(b'\n', line)
        .await?;
    if n == 0 || !line.ends_with(b"\n") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a chunk line too long or cut",
        ));
    }
    Ok(())
}

/// Connects to `host:port`: a literal as given (the verdict allowed it), a name through the
/// policy's resolver entries or the host's resolver, using only addresses that are public
/// enough or that a CIDR rule allows.
async fn connect(policy: &EgressPolicy, host: &Host, port: u16) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = match host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        Host::Name(name) => match policy.resolved(name) {
            Some(ips) => ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect(),
            None => {
                let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
                    .await
                    .map_err(|e| format!("resolving {name}: {e}"))?
                    .collect();
                let usable: Vec<SocketAddr> = found
                    .iter()
                    .copied()
                    .filter(|a| is_public_enough(a.ip()) || policy.cidr_allows(a.ip(), port))
                    .collect();
                if usable.is_empty() && !found.is_empty() {
                    let ips: Vec<IpAddr> = found.iter().map(SocketAddr::ip).collect();
                    return Err(format!(
                        "{name} resolves to {ips:?}, which only a CIDR rule may allow"
                    ));
                }
                usable
            }
        },
    };
    // A name's address (not the policy's own resolve entries) must not lead to this host:
    // its own addresses are not all loopback (its eth0's, say).
    let checked = matches!(host, Host::Name(n) if policy.resolved(n).is_none());
    let mut last = format!("{host} has no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                // What the connection reached, whatever the address looked like (a mapped
                // IPv6 one, `0.0.0.0`): never one of this library's own listeners.
                if s.peer_addr().is_ok_and(super::is_own_listener) {
                    return Err(format!(
                        "{addr} is a sandbox's exposed port on this host: refused, whatever \
                         the policy"
                    ));
                }
                if checked && lands_home(&s, addr) && !policy.cidr_allows(addr.ip(), port) {
                    return Err(format!(
                        "{host} resolves to {}, an address of this host, which only a CIDR rule may allow",
                        addr.ip()
                    ));
                }
                return Ok(s);
            }
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    Err(last)
}

/// Whether connection `s` to `addr` landed on this host: its own address is the one it
/// reached (the kernel picks a local destination as the source). Both sides are compared
/// canonical: a connection to `[::ffff:a.b.c.d]` reports its local address mapped too.
fn lands_home(s: &TcpStream, addr: SocketAddr) -> bool {
    s.local_addr()
        .is_ok_and(|l| canonical(l.ip()) == canonical(addr.ip()))
}

/// Reads and parses the request head.
///
/// The head is parsed again only when what came may have ended it (a blank line in the new
/// bytes) or when it has doubled since the last parse: parsing it afresh on every read let a
/// sandbox that sends its head a byte at a time make the host parse up to 64 KiB 64 Ki times
/// (2 GiB of parsing, seconds of host CPU, per connection, 256 connections at once).
async fn read_request(
    client: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<Request, Refusal> {
    let mut buf = Vec::with_capacity(4096);
    let mut parsed_at = 0;
    loop {
        let mut chunk = [0u8; 8192];
        let n = client
            .read(&mut chunk)
            .await
            .map_err(|e| Refusal::new(format!("reading the request: {e}")))?;
        if n == 0 {
            return Err(Refusal::new("the request ended early"));
        }
        let scanned = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        let may_end = buf[scanned..]
            .windows(2)
            .any(|w| w == b"\n\n" || w == b"\n\r");
        if parsed_at > 0 && !may_end && buf.len() < 2 * parsed_at && buf.len() < MAX_HEAD {
            continue;
        }
        parsed_at = buf.len();
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let method = req.method.unwrap_or_default().to_owned();
                return parse(&req, buf[len..].to_vec()).map_err(|reason| Refusal {
                    reason,
                    method,
                    host: req.path.unwrap_or_default().to_owned(),
                    port: 0,
                });
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(Refusal::new("the request head is too long"));
            }
            Err(e) => return Err(Refusal::new(format!("a malformed request: {e}"))),
        }
    }
}

fn parse(req: &httparse::Request<'_, '_>, rest: Vec<u8>) -> Result<Request, String> {
    let method = req.method.unwrap_or_default().to_owned();
    let target = req.path.unwrap_or_default();
    if method == "CONNECT" {
        let (host, port) = split_authority(target, None)?;
        return Ok(Request {
            method,
            host,
            port,
            forward: None,
            rest,
        });
    }
    let Some(after) = target.strip_prefix("http://") else {
        return Err(format!(
            "{target:?} is no absolute http:// URL (use CONNECT for anything else)"
        ));
    };
    let (authority, path) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    if authority.contains('@') {
        return Err("credentials in the URL are not forwarded".into());
    }
    let (host, port) = split_authority(authority, Some(80))?;
    let normalised = normalised_authority(&host, port);
    let hosts = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .count();
    if hosts > 1 {
        return Err("more than one Host header".into());
    }
    let body = framing(req.headers)?;
    if body == Body::Chunked && req.version == Some(0) {
        // RFC 9112 6.1: HTTP/1.0 has no Transfer-Encoding; an HTTP/1.0 upstream reads no
        // body there, and the chunks would be its next request.
        return Err("Transfer-Encoding in an HTTP/1.0 request: refused (RFC 9112 6.1)".into());
    }
    // The target names the host: the sandbox's own Host header is replaced by it (RFC 9112
    // 3.2.2), so that a request cannot be steered to another site behind the same server.
    let hop_by_hop = [
        "host",
        "connection",
        "proxy-connection",
        "proxy-authorization",
        "keep-alive",
        "te",
        "upgrade",
    ];
    let headers = req
        .headers
        .iter()
        .filter(|h| !hop_by_hop.contains(&h.name.to_ascii_lowercase().as_str()))
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect();
    Ok(Request {
        method,
        host,
        port,
        forward: Some(ForwardHead {
            authority: normalised,
            path: path.to_owned(),
            version: req.version.unwrap_or(1),
            headers,
            body,
        }),
        rest,
    })
}

/// How a request's body ends, from its headers: conflicting or unknown framing is refused,
/// as RFC 9112 (section 6.1, 6.3) lets a proxy do, rather than forwarded for the upstream
/// to read otherwise (request smuggling).
fn framing(headers: &[httparse::Header<'_>]) -> Result<Body, String> {
    let values = |name: &str| -> Vec<&[u8]> {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.trim_ascii())
            .collect()
    };
    let lengths = values("content-length");
    let encodings = values("transfer-encoding");
    match (lengths.as_slice(), encodings.as_slice()) {
        ([], []) => Ok(Body::Empty),
        ([_, ..], [_, ..]) => {
            Err("both Content-Length and Transfer-Encoding: refused (RFC 9112 6.1)".into())
        }
        ([], [te]) if te.eq_ignore_ascii_case(b"chunked") => Ok(Body::Chunked),
        ([], _) => Err("a Transfer-Encoding other than chunked alone".into()),
        ([first, rest @ ..], []) => {
            let digits = !first.is_empty()
                && first.len() <= 19
                && first.iter().all(u8::is_ascii_digit)
                && rest.iter().all(|other| other == first);
            let n = std::str::from_utf8(first).ok().and_then(|t| t.parse().ok());
            match n {
                Some(n) if digits => Ok(Body::Length(n)),
                _ => Err("a bad or conflicting Content-Length".into()),
            }
        }
    }
}

/// The `Host` header for `host:port`: a name as parsed (lower case, no final dot), an IPv6
/// address in brackets, the port in digits unless it is 80.
fn normalised_authority(host: &Host, port: u16) -> String {
    let host = match host {
        Host::Ip(IpAddr::V6(v6)) => format!("[{v6}]"),
        other => other.to_string(),
    };
    if port == 80 {
        host
    } else {
        format!("{host}:{port}")
    }
}

/// `host:port` (IPv6 in brackets), with `default` when the port is left out; the port is 1
/// to 5 digits (no sign, no spaces).
fn split_authority(authority: &str, default: Option<u16>) -> Result<(Host, u16), String> {
    let bad = || format!("{authority:?} is no host:port");
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
            let digits = !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
            if !digits {
                return Err(bad());
            }
            (h, p.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (authority, default.ok_or_else(bad)?),
    };
    if port == 0 {
        return Err(bad());
    }
    Ok((Host::parse(host).ok_or_else(bad)?, port))
}

impl ForwardHead {
    /// The head sent upstream: origin form, one request per connection, the policy's headers
    /// for `name` in place of the sandbox's own of that name.
    fn encode(&self, request: &Request, policy: &EgressPolicy, name: &str) -> Vec<u8> {
        let injected: Vec<(&str, &str)> = policy.headers_for(name, request.port).collect();
        let mut out = format!(
            "{} {} HTTP/1.{}\r\n",
            request.method, self.path, self.version
        )
        .into_bytes();
        out.extend_from_slice(format!("Host: {}\r\n", self.authority).as_bytes());
        for (k, v) in &self.headers {
            if injected.iter().any(|(n, _)| n.eq_ignore_ascii_case(k)) {
                continue;
            }
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        for (k, v) in injected {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        out
    }
}

/// Answers the sandbox with a status and a one-line reason (also in `X-Egress-Reason`).
async fn respond(client: &mut UnixStream, status: u16, reason: &str) -> std::io::Result<()> {
    let text = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        _ => "Bad Gateway",
    };
    let reason: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let body = format!("oci-sandbox egress: {reason}\n");
    let head = format!(
        "HTTP/1.1 {status} {text}\r\nX-Egress-Reason: {reason}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(head.as_bytes()).await?;
    client.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_with_and_without_ports() {
        let (h, p) = split_authority("Example.org:8443", None).unwrap();
        assert_eq!((h, p), (Host::Name("example.org".into()), 8443));
        let (h, p) = split_authority("[::1]:443", None).unwrap();
        assert_eq!((h, p), (Host::Ip("::1".parse().unwrap()), 443));
        let (h, p) = split_authority("example.org", Some(80)).unwrap();
        assert_eq!((h, p), (Host::Name("example.org".into()), 80));
        for bad in ["example.org", "a:0", ":80", "a b:80", "::1:443"] {
            assert!(split_authority(bad, None).is_err(), "{bad}");
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> Vec<httparse::Header<'static>> {
        pairs
            .iter()
            .map(|(name, value)| httparse::Header {
                name,
                value: value.as_bytes(),
            })
            .collect()
    }

    #[test]
    fn framing_is_one_way_or_refused() {
        assert_eq!(framing(&headers(&[])), Ok(Body::Empty));
        assert_eq!(
            framing(&headers(&[("Content-Length", " 12 ")])),
            Ok(Body::Length(12))
        );
        assert_eq!(
            framing(&headers(&[
                ("content-length", "5"),
                ("Content-Length", "5")
            ])),
            Ok(Body::Length(5))
        );
        assert_eq!(
            framing(&headers(&[("Transfer-Encoding", "Chunked")])),
            Ok(Body::Chunked)
        );
        for bad in [
            &[("Content-Length", "5"), ("Transfer-Encoding", "chunked")][..],
            &[("Content-Length", "5"), ("Content-Length", "6")],
            &[("Content-Length", "+5")],
            &[("Content-Length", "5, 5")],
            &[("Content-Length", "")],
            &[("Transfer-Encoding", "gzip, chunked")],
            &[
                ("Transfer-Encoding", "chunked"),
                ("Transfer-Encoding", "chunked"),
            ],
            &[("Transfer-Encoding", "identity")],
        ] {
            assert!(framing(&headers(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn authorities_are_normalised() {
        let (h, p) = split_authority("API.TEST.:8080", None).unwrap();
        assert_eq!(normalised_authority(&h, p), "api.test:8080");
        let (h, p) = split_authority("Api.Test", Some(80)).unwrap();
        assert_eq!(normalised_authority(&h, p), "api.test");
        let (h, p) = split_authority("[::ffff:127.0.0.1]:81", None).unwrap();
        assert_eq!(normalised_authority(&h, p), "127.0.0.1:81");
        let (h, p) = split_authority("[2001:db8::1]:81", None).unwrap();
        assert_eq!(normalised_authority(&h, p), "[2001:db8::1]:81");
        for bad in [
            "api.test:+38023",
            "api.test: 80",
            "api.test:080000",
            "api.test:",
        ] {
            assert!(split_authority(bad, Some(80)).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_chunked_body_is_copied_to_its_end_and_no_further() {
        let body = b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n";
        let mut from = tokio::io::BufReader::new(&body[..]);
        let mut out = Vec::new();
        let n = copy_chunked(&mut from, &mut out).await.unwrap();
        assert_eq!(out, b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n");
        assert_eq!(n as usize, out.len());
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\r\nhel",
            b"10000000000000000\r\n",
        ] {
            let mut from = tokio::io::BufReader::new(bad);
            assert!(copy_chunked(&mut from, &mut Vec::new()).await.is_err());
        }
    }

    /// A connection to `[::ffff:127.0.0.1]` reports its local address mapped: compared
    /// canonical, it lands home (before, mapped against unmapped said it did not).
    #[tokio::test]
    async fn a_mapped_connection_to_this_host_lands_home() {
        let listener = tokio::net::TcpListener::bind("[::]:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{port}").parse().unwrap();
        let s = TcpStream::connect(mapped).await.unwrap();
        assert!(
            s.local_addr().unwrap().is_ipv6(),
            "the kernel reports it mapped"
        );
        assert!(lands_home(&s, mapped));
        let plain: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(lands_home(&TcpStream::connect(plain).await.unwrap(), plain));
        // An exposed port's listener, reached by its mapped form, is known as ours.
        let exposed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = exposed.local_addr().unwrap();
        let known = super::super::OwnListener::register(addr);
        let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", addr.port())
            .parse()
            .unwrap();
        assert!(super::super::is_own_listener(mapped));
        drop(known);
        assert!(!super::super::is_own_listener(addr));
    }

    /// A reader that hands out one byte per read, and is pending every other poll (so that a
    /// timeout around it can fire).
    struct ByteAtATime {
        data: Vec<u8>,
        at: usize,
        ready: bool,
    }

    impl tokio::io::AsyncRead for ByteAtATime {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let this = &mut *self;
            this.ready = !this.ready;
            if !this.ready {
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            if this.at < this.data.len() {
                buf.put_slice(&this.data[this.at..=this.at]);
                this.at += 1;
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// A head of 60 KiB sent a byte at a time (what a sandbox does with a write per byte):
    /// parsed afresh on every read it cost the host 2 GiB of parsing (20 s of CPU in a debug
    /// build, about 2 in release, per connection, and a sandbox has 256); now linear.
    #[tokio::test]
    async fn a_head_trickled_a_byte_at_a_time_costs_linear_parsing() {
        let mut head = b"GET http://api.test/ HTTP/1.1\r\nX-Pad: ".to_vec();
        head.resize(60 * 1024, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        let mut client = ByteAtATime {
            data: head,
            at: 0,
            ready: false,
        };
        let begun = Instant::now();
        let parsed = tokio::time::timeout(Duration::from_secs(5), read_request(&mut client)).await;
        let Ok(parsed) = parsed else {
            panic!(
                "BREAK: a 60 KiB head sent a byte at a time still parsing after {:?}: the host \
                 re-parses the whole head on every read (quadratic CPU for the sandbox's bytes)",
                begun.elapsed()
            );
        };
        let request = parsed.unwrap_or_else(|r| panic!("refused: {}", r.reason));
        assert_eq!(request.host, Host::Name("api.test".into()));
        // Garbage is still refused at its first bytes, not after 64 KiB.
        let mut garbage = ByteAtATime {
            data: b"\x01\x02 not http".to_vec(),
            at: 0,
            ready: false,
        };
        assert!(read_request(&mut garbage).await.is_err());
    }

    /// Chunk framing a strict upstream reads otherwise: each is refused. The first is
    /// "TERM.EXT": the proxy took the bare LF after `2;` as the size line's end, so `45` was
    /// a chunk of 69 bytes hiding a request; an upstream that ends lines at CRLF only reads
    /// `2;\nxx` as the size line, `45` as the data, then `0` as the last chunk, and the hidden
    /// request as the connection's next one.
    #[tokio::test]
    async fn chunk_framing_a_strict_upstream_reads_otherwise_is_refused() {
        let hidden = "GET /admin HTTP/1.1\r\nHost: internal.test\r\n\r\n";
        let term_ext = format!(
            "2;\nxx\r\n45\r\n0\r\n\r\n{hidden}{}\r\n0\r\n\r\n",
            "y".repeat(69 - 5 - hidden.len())
        );
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("term-ext", term_ext.into_bytes()),
            ("bare-lf-size", b"5\nhello\r\n0\r\n\r\n".to_vec()),
            ("bare-lf-data", b"5\r\nhello\n0\r\n\r\n".to_vec()),
            ("bare-lf-last", b"5\r\nhello\r\n0\n\n".to_vec()),
            ("bare-cr-ext", b"5;a\rb\r\nhello\r\n0\r\n\r\n".to_vec()),
            ("ctl-ext", b"5;a\x00b\r\nhello\r\n0\r\n\r\n".to_vec()),
            ("plus", b"+5\r\nhello\r\n0\r\n\r\n".to_vec()),
            ("leading-space", b" 5\r\nhello\r\n0\r\n\r\n".to_vec()),
            ("trailing-space", b"5 \r\nhello\r\n0\r\n\r\n".to_vec()),
            ("0x", b"0x5\r\nhello\r\n0\r\n\r\n".to_vec()),
            ("trailer-no-colon", b"0\r\nGET /x HTTP/1.1\r\n\r\n".to_vec()),
            ("trailer-bare-lf", b"0\r\nA: b\n\r\n".to_vec()),
            ("trailer-space-name", b"0\r\nA b: c\r\n\r\n".to_vec()),
        ];
        let mut held = Vec::new();
        for (label, body) in cases {
            let mut from = tokio::io::BufReader::new(&body[..]);
            let mut out = Vec::new();
            if let Ok(n) = copy_chunked(&mut from, &mut out).await {
                held.push(format!(
                    "{label}: {n} bytes forwarded: {:?}",
                    String::from_utf8_lossy(&out)
                ));
            }
        }
        assert!(
            held.is_empty(),
            "BREAK: chunk framing a strict upstream reads otherwise was forwarded:\n{}",
            held.join("\n")
        );
        // What RFC 9112 allows still goes: extensions (with BWS before the `;`), trailers.
        for ok in [
            &b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n"[..],
            b"5 ;a=\"q\"\r\nhello\r\n0;b\r\n\r\n",
            b"A\r\n0123456789\r\n0\r\nX-A: 1\r\nX-B:\t2\r\n\r\n",
        ] {
            let mut from = tokio::io::BufReader::new(ok);
            let mut out = Vec::new();
            copy_chunked(&mut from, &mut out).await.unwrap();
            assert_eq!(out, ok);
        }
    }

    /// Parses `head` as the proxy does.
    fn parse_head(head: &[u8]) -> Result<Request, String> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(len) = req.parse(head).unwrap() else {
            panic!("a partial head");
        };
        parse(&req, head[len..].to_vec())
    }

    /// HTTP/1.0 has no Transfer-Encoding: an HTTP/1.0 upstream reads no body, and the chunks
    /// (a request hidden in them) are its next request. Refused.
    #[test]
    fn chunked_http_1_0_is_refused() {
        let head = b"POST http://api.test/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(
            parse_head(head).is_err(),
            "BREAK: a chunked HTTP/1.0 request is forwarded"
        );
        let ok = b"POST http://api.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(parse_head(ok).is_ok());
    }

    /// A TRACE to a host with an injected header: the upstream reflects the request it got,
    /// credential included (RFC 9110 9.3.8, Apache's default). Refused; without an injected
    /// header, or to another host, it goes.
    #[test]
    fn a_trace_never_carries_an_injected_header() {
        let policy = EgressPolicy::new()
            .allow_domain("api.test")
            .allow_domain("other.test")
            .inject_header("api.test", "Authorization", "Bearer s3cret");
        for method in ["TRACE", "TRACK", "trace"] {
            let head = format!("{method} http://api.test/ HTTP/1.1\r\n\r\n");
            let request = parse_head(head.as_bytes()).unwrap();
            assert!(
                reflects_credentials(&request, &policy).is_some(),
                "BREAK: {method} to a host with an injected credential is forwarded with it"
            );
        }
        for head in [
            &b"TRACE http://other.test/ HTTP/1.1\r\n\r\n"[..],
            b"TRACE http://api.test:8080/ HTTP/1.1\r\n\r\n",
            b"GET http://api.test/ HTTP/1.1\r\n\r\n",
        ] {
            let request = parse_head(head).unwrap();
            assert!(reflects_credentials(&request, &policy).is_none());
        }
    }
}
