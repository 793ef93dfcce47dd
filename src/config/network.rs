//! [`EgressPolicy`]: what a sandbox with [`Network::Egress`](super::Network::Egress) may reach
//! through the library's proxy, and the [`EgressEvent`]s that report each decision.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::SandboxError;

/// The port of the proxy inside a sandbox: `HTTP_PROXY` and friends name `127.0.0.1:3128`.
pub const EGRESS_PROXY_PORT: u16 = 3128;

/// What a sandbox may connect to: allowed domain patterns, CIDRs and ports; everything else
/// is refused. Built with its methods, checked when a sandbox gets it ([`validate`]).
///
/// The sandbox has no network of its own (only loopback). Its commands get `HTTP_PROXY`,
/// `HTTPS_PROXY` and `ALL_PROXY` naming a forwarder on its loopback, which carries each
/// connection to the library's proxy on the host; the proxy checks the policy *before* it
/// resolves a name (a denied name is never looked up), then connects. A tool that ignores
/// the proxy variables finds no route: it is refused, never let through.
///
/// ```
/// use oci_sandbox::{EgressPolicy, Network, SandboxConfig};
///
/// let policy = EgressPolicy::new()
///     .allow_domain("pypi.org")
///     .allow_domain("*.pythonhosted.org")
///     .allow_cidr_ports("10.0.0.0/8", &[443]);
/// let config = SandboxConfig {
///     network: Network::Egress(policy),
///     ..SandboxConfig::default()
/// };
/// # let _ = config;
/// ```
///
/// [`validate`]: EgressPolicy::validate
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EgressPolicy {
    rules: Vec<EgressRule>,
    resolve: Vec<(String, Vec<IpAddr>)>,
    headers: Vec<HeaderInjection>,
}

/// One allowed destination: a domain pattern or a CIDR, on some ports (none: every port).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct EgressRule {
    target: Target,
    ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
enum Target {
    /// `example.org` (that name) or `*.example.org` (its subdomains, not itself).
    Domain(String),
    /// Every domain name (never an IP address): only by [`EgressPolicy::allow_any_domain`].
    AnyDomain,
    /// Addresses, as written (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`).
    Cidr(String),
}

/// A header the proxy sets on plain-HTTP requests to matching domains on some ports (a
/// credential the sandbox never sees).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct HeaderInjection {
    domain: String,
    ports: Vec<u16>,
    name: String,
    value: String,
}

/// The ports [`EgressPolicy::inject_header`] sets its header on: plain HTTP's.
pub const INJECTION_DEFAULT_PORTS: &[u16] = &[80];

impl fmt::Debug for EgressPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|h| format!("{}: <hidden> for {}", h.name, h.domain))
            .collect();
        f.debug_struct("EgressPolicy")
            .field("rules", &self.rules)
            .field("resolve", &self.resolve)
            .field("headers", &headers)
            .finish()
    }
}

/// A destination as a client names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Host {
    /// A domain name, lowercased, without a trailing dot.
    Name(String),
    /// An address literal.
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl Host {
    /// `text` as a host: an address literal (IPv6 in brackets or bare; an IPv4-mapped IPv6
    /// address is its IPv4 address) or a domain name of letters, digits, `-` and `.` (labels
    /// of 1..=63 bytes, 253 bytes in all). A name whose last label is a number (`3221225986`,
    /// `0xc0000202`, `1.2.3.4.`) is refused: resolvers read those as addresses.
    pub(crate) fn parse(text: &str) -> Option<Host> {
        let bare = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Some(Host::Ip(canonical(ip)));
        }
        let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Some(Host::Ip(canonical(ip)));
        }
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        let last = name.rsplit('.').next().unwrap_or("");
        let numeric = last.bytes().all(|b| b.is_ascii_digit())
            || (last.starts_with("0x") && last[2..].bytes().all(|b| b.is_ascii_hexdigit()));
        (valid && !numeric).then_some(Host::Name(name))
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it is: only IPv4 rules
/// can allow it, and the proxy connects over IPv4.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `pattern` (a validated domain pattern) matches `name`.
fn domain_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name.len() > suffix.len() + 1 && name.ends_with(&format!(".{suffix}")),
        None => pattern == name,
    }
}

/// A parsed CIDR: an address and a prefix length.
#[derive(Debug, Clone, Copy)]
struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        fn bits(ip: IpAddr) -> (u128, u8) {
            match ip {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        }
        let ((net, width), (host, host_width)) = (bits(self.addr), bits(canonical(ip)));
        if width != host_width {
            return false;
        }
        let shift = u32::from(width - self.prefix);
        self.prefix == 0 || (net >> shift) == (host >> shift)
    }
}

/// What the policy says of a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Allowed by this rule (as the caller wrote it).
    Allowed(String),
    /// Refused, and why.
    Denied(String),
}

impl EgressPolicy {
    /// A policy that allows nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows a domain on every port: `example.org` (exactly that name) or `*.example.org`
    /// (every subdomain of it, not the name itself).
    pub fn allow_domain(self, pattern: impl Into<String>) -> Self {
        self.allow_domain_ports(pattern, &[])
    }

    /// Allows a domain pattern (as [`allow_domain`](Self::allow_domain)) on these ports only.
    pub fn allow_domain_ports(mut self, pattern: impl Into<String>, ports: &[u16]) -> Self {
        self.rules.push(EgressRule {
            target: Target::Domain(pattern.into().to_ascii_lowercase()),
            ports: ports.to_vec(),
        });
        self
    }

    /// Allows every domain name (on these ports; none: every port). Addresses given as
    /// literals still need a CIDR rule. `*` as a domain pattern is refused: this says it.
    pub fn allow_any_domain(mut self, ports: &[u16]) -> Self {
        self.rules.push(EgressRule {
            target: Target::AnyDomain,
            ports: ports.to_vec(),
        });
        self
    }

    /// Allows the addresses of a CIDR (`10.0.0.0/8`, `2001:db8::/32`, or one address) on
    /// every port, whether the client names them or a domain resolves to them.
    pub fn allow_cidr(self, cidr: impl Into<String>) -> Self {
        self.allow_cidr_ports(cidr, &[])
    }

    /// Allows a CIDR (as [`allow_cidr`](Self::allow_cidr)) on these ports only.
    pub fn allow_cidr_ports(mut self, cidr: impl Into<String>, ports: &[u16]) -> Self {
        self.rules.push(EgressRule {
            target: Target::Cidr(cidr.into()),
            ports: ports.to_vec(),
        });
        self
    }

    /// Resolves `domain` to `addrs` in the proxy instead of asking DNS (tests point names at
    /// loopback servers this way; addresses given here are used as they are, loopback
    /// included).
    pub fn resolve(mut self, domain: impl Into<String>, addrs: &[IpAddr]) -> Self {
        self.resolve
            .push((domain.into().to_ascii_lowercase(), addrs.to_vec()));
        self
    }

    /// Sets a header on every plain-HTTP request to a domain matching `domain` (a pattern as
    /// in [`allow_domain`](Self::allow_domain)) on port 80, replacing any the sandbox sent: a
    /// credential that never enters the sandbox. HTTPS is tunnelled unread and gets no header.
    /// Other ports: [`inject_header_ports`](Self::inject_header_ports).
    ///
    /// The header goes to the ports it names only, whatever ports the allowing rule has: a
    /// rule for every port would otherwise hand the credential to whatever listens on any of
    /// them (the sandbox's own exposed port, resolved to this host, was one). And never to a
    /// listener of this library's (see `docs/NETWORK.md`).
    pub fn inject_header(
        self,
        domain: impl Into<String>,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.inject_header_ports(domain, INJECTION_DEFAULT_PORTS, name, value)
    }

    /// [`inject_header`](Self::inject_header) on `ports` (at least one).
    ///
    /// ```
    /// use oci_sandbox::EgressPolicy;
    /// let policy = EgressPolicy::new()
    ///     .allow_domain_ports("api.internal", &[8080])
    ///     .inject_header_ports("api.internal", &[8080], "Authorization", "Bearer …");
    /// policy.validate().unwrap();
    /// ```
    pub fn inject_header_ports(
        mut self,
        domain: impl Into<String>,
        ports: &[u16],
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.headers.push(HeaderInjection {
            domain: domain.into().to_ascii_lowercase(),
            ports: ports.to_vec(),
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// Checks every pattern, CIDR and header.
    ///
    /// # Errors
    ///
    /// [`SandboxError::InvalidConfig`] (field `network`) for an empty or malformed domain
    /// pattern, `*` alone (use [`allow_any_domain`](Self::allow_any_domain)), a bad CIDR, port
    /// 0, a header name or value that is not a valid HTTP header or injected on no port, or
    /// a resolve entry without addresses.
    pub fn validate(&self) -> Result<(), SandboxError> {
        let bad = |reason: String| Err(SandboxError::invalid("network", reason));
        for rule in &self.rules {
            if rule.ports.contains(&0) {
                return bad("port 0 in an egress rule".into());
            }
            match &rule.target {
                Target::Domain(p) => check_pattern(p)?,
                Target::AnyDomain => {}
                Target::Cidr(c) => {
                    if Cidr::parse(c).is_none() {
                        return bad(format!(
                            "{c:?} is no CIDR (an address, or address/prefix: 10.0.0.0/8)"
                        ));
                    }
                }
            }
        }
        for (name, addrs) in &self.resolve {
            if !matches!(Host::parse(name), Some(Host::Name(_))) || addrs.is_empty() {
                return bad(format!(
                    "resolve entry {name:?} needs a domain and an address"
                ));
            }
        }
        for h in &self.headers {
            check_pattern(&h.domain)?;
            if h.ports.is_empty() || h.ports.contains(&0) {
                return bad(format!(
                    "header {:?} injected on no port, or on port 0",
                    h.name
                ));
            }
            let name_ok = !h.name.is_empty()
                && h.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            let value_ok = h
                .value
                .bytes()
                .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
            if !name_ok || !value_ok {
                return bad(format!("header {:?} is not a valid HTTP header", h.name));
            }
        }
        Ok(())
    }

    /// The verdict on `host:port` as the client named it, before any resolution.
    pub(crate) fn verdict(&self, host: &Host, port: u16) -> Verdict {
        for rule in &self.rules {
            if !rule.ports.is_empty() && !rule.ports.contains(&port) {
                continue;
            }
            let hit = match (&rule.target, host) {
                (Target::Domain(p), Host::Name(n)) => domain_matches(p, n),
                (Target::AnyDomain, Host::Name(_)) => true,
                (Target::Cidr(c), Host::Ip(ip)) => Cidr::parse(c).is_some_and(|c| c.contains(*ip)),
                _ => false,
            };
            if hit {
                return Verdict::Allowed(rule.describe());
            }
        }
        Verdict::Denied(match host {
            Host::Name(_) => format!("no rule allows {host} on port {port}"),
            Host::Ip(_) => format!("no CIDR rule allows {host} on port {port}"),
        })
    }

    /// Whether a CIDR rule allows `ip` on `port` (for addresses a name resolved to that
    /// are not public).
    pub(crate) fn cidr_allows(&self, ip: IpAddr, port: u16) -> bool {
        self.rules.iter().any(|rule| {
            (rule.ports.is_empty() || rule.ports.contains(&port))
                && matches!(&rule.target, Target::Cidr(c) if Cidr::parse(c).is_some_and(|c| c.contains(ip)))
        })
    }

    /// The test resolver's addresses for `name`, if it has an entry.
    pub(crate) fn resolved(&self, name: &str) -> Option<&[IpAddr]> {
        self.resolve
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.as_slice())
    }

    /// The headers to set on a plain-HTTP request to `name` on `port`.
    pub(crate) fn headers_for<'a>(
        &'a self,
        name: &'a str,
        port: u16,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.headers
            .iter()
            .filter(move |h| domain_matches(&h.domain, name) && h.ports.contains(&port))
            .map(|h| (h.name.as_str(), h.value.as_str()))
    }
}

impl EgressRule {
    fn describe(&self) -> String {
        let target = match &self.target {
            Target::Domain(p) => p.clone(),
            Target::AnyDomain => "any domain".into(),
            Target::Cidr(c) => c.clone(),
        };
        if self.ports.is_empty() {
            target
        } else {
            let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
            format!("{target} on {}", ports.join(","))
        }
    }
}

fn check_pattern(pattern: &str) -> Result<(), SandboxError> {
    let bad = |reason: String| Err(SandboxError::invalid("network", reason));
    if pattern.is_empty() {
        return bad("an empty domain pattern".into());
    }
    if pattern == "*" {
        return bad(
            "`*` alone as a domain pattern: say allow_any_domain() to allow every domain".into(),
        );
    }
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    match Host::parse(name) {
        Some(Host::Name(n)) if n == name => Ok(()),
        _ => bad(format!(
            "{pattern:?} is no domain pattern (`example.org` or `*.example.org`)"
        )),
    }
}

/// Whether an address a *name* resolved to may be used without a CIDR rule naming it: not
/// loopback, unspecified, link-local (cloud metadata), multicast, broadcast, the other clouds'
/// metadata addresses (Alibaba's 100.100.100.200, AWS's `fd00:ec2::254`), nor an IPv4-mapped
/// or NAT64 (`64:ff9b::/96`) form of those. (The proxy also refuses a connection that lands
/// on the host itself: see `net::proxy`.)
pub(crate) fn is_public_enough(ip: IpAddr) -> bool {
    let ip = match canonical(ip) {
        IpAddr::V6(v6) if v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] => {
            let o = v6.octets();
            IpAddr::V4(std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]))
        }
        other => other,
    };
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.octets() == [100, 100, 100, 200])
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254))
        }
    }
}

/// What became of one connection the sandbox asked the proxy for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EgressDecision {
    /// The policy allowed it (the rule that did, as written) and the proxy connected.
    Allowed {
        /// The rule.
        rule: String,
    },
    /// The policy refused it; nothing was resolved or connected.
    Denied {
        /// Why.
        reason: String,
    },
    /// The policy allowed it but the destination could not be reached (name unknown,
    /// connection refused, a resolved address that is not allowed).
    Failed {
        /// The rule that allowed it.
        rule: String,
        /// What failed.
        error: String,
    },
}

/// The most bytes an [`EgressEvent`]'s method keeps (longer ones are cut: a sandbox chooses
/// them, and events wait in memory for slow subscribers).
pub const EVENT_METHOD_MAX: usize = 32;
/// The most bytes an event's host, and a decision's rule, reason or error, keep.
pub const EVENT_TEXT_MAX: usize = 512;

/// `text` cut to at most `max` bytes on a character boundary, with `…` when cut.
fn capped(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max.saturating_sub('…'.len_utf8());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

impl EgressEvent {
    /// The event with every text field cut to its bound ([`EVENT_METHOD_MAX`],
    /// [`EVENT_TEXT_MAX`]): 1024 events held for a subscriber that never reads are then
    /// under a MiB, whatever the sandbox sent.
    pub(crate) fn capped(mut self) -> Self {
        capped(&mut self.method, EVENT_METHOD_MAX);
        capped(&mut self.host, EVENT_TEXT_MAX);
        match &mut self.decision {
            EgressDecision::Allowed { rule } => capped(rule, EVENT_TEXT_MAX),
            EgressDecision::Denied { reason } => capped(reason, EVENT_TEXT_MAX),
            EgressDecision::Failed { rule, error } => {
                capped(rule, EVENT_TEXT_MAX);
                capped(error, EVENT_TEXT_MAX);
            }
        }
        self
    }
}

impl EgressDecision {
    /// Whether the connection was allowed (and made).
    pub fn is_allowed(&self) -> bool {
        matches!(self, EgressDecision::Allowed { .. })
    }
}

/// What a sandbox's egress proxy has let through and refused so far
/// ([`SandboxMetrics::egress`](crate::SandboxMetrics::egress)). Bytes are counted as they
/// are relayed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EgressCounts {
    /// Connections the policy allowed and the proxy connected.
    pub allowed: u64,
    /// Connections refused (by the policy, or as malformed).
    pub denied: u64,
    /// Connections allowed whose upstream could not be reached.
    pub failed: u64,
    /// Allowed connections open now.
    pub open: u64,
    /// Bytes the sandbox sent upstream (request heads and bodies, tunnelled bytes).
    pub bytes_sent: u64,
    /// Bytes the upstreams sent back.
    pub bytes_received: u64,
}

/// One decision of a sandbox's egress proxy, sent when the connection ends (at once when it is
/// denied or fails).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EgressEvent {
    /// The sandbox's container id.
    pub sandbox: String,
    /// The destination as the sandbox named it (a domain, or an address literal; at most
    /// [`EVENT_TEXT_MAX`] bytes, as the decision's texts). For a malformed request (answered
    /// `400`), what could be read of it, or empty.
    pub host: String,
    /// Its port (0 when the request named none that could be read).
    pub port: u16,
    /// `CONNECT` (a tunnel, HTTPS) or the plain-HTTP request's method (at most
    /// [`EVENT_METHOD_MAX`] bytes; empty when the request was too malformed to have one).
    pub method: String,
    /// Allowed, denied or failed.
    pub decision: EgressDecision,
    /// The address the proxy connected to.
    pub address: Option<SocketAddr>,
    /// Bytes from the sandbox to the destination (headers included for plain HTTP).
    pub bytes_sent: u64,
    /// Bytes from the destination to the sandbox.
    pub bytes_received: u64,
    /// From the request to the connection made (or the refusal).
    pub connect_time: Duration,
    /// From the request to the connection's end.
    pub duration: Duration,
}

/// `config` with the proxy variables, when it has an egress policy (the caller's own values
/// of them win); `None` otherwise.
pub(crate) fn with_proxy_env(
    config: &crate::config::ContainerConfig,
) -> Option<crate::config::ContainerConfig> {
    config.network.egress()?;
    let url = format!("http://127.0.0.1:{EGRESS_PROXY_PORT}");
    let mut proxied = config.clone();
    let mut vars = Vec::new();
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        vars.push((name.to_owned(), url.clone()));
        vars.push((name.to_ascii_lowercase(), url.clone()));
    }
    for name in ["NO_PROXY", "no_proxy"] {
        vars.push((name.to_owned(), "localhost,127.0.0.1,::1".to_owned()));
    }
    for (k, v) in vars {
        if !proxied.env.iter().any(|(key, _)| *key == k) {
            proxied.env.push((k, v));
        }
    }
    Some(proxied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> Host {
        Host::parse(n).unwrap()
    }

    #[test]
    fn patterns_match_names_and_ports() {
        let p = EgressPolicy::new()
            .allow_domain("pypi.org")
            .allow_domain_ports("*.pythonhosted.org", &[443]);
        p.validate().unwrap();
        assert!(matches!(
            p.verdict(&name("PyPI.org."), 80),
            Verdict::Allowed(_)
        ));
        assert!(matches!(
            p.verdict(&name("evil-pypi.org"), 80),
            Verdict::Denied(_)
        ));
        assert!(matches!(
            p.verdict(&name("a.pypi.org"), 80),
            Verdict::Denied(_)
        ));
        assert!(matches!(
            p.verdict(&name("files.pythonhosted.org"), 443),
            Verdict::Allowed(_)
        ));
        assert!(matches!(
            p.verdict(&name("pythonhosted.org"), 443),
            Verdict::Denied(_)
        ));
        assert!(matches!(
            p.verdict(&name("files.pythonhosted.org"), 80),
            Verdict::Denied(_)
        ));
        // Names never match CIDRs and addresses never match names.
        assert!(matches!(
            p.verdict(&name("127.0.0.1"), 80),
            Verdict::Denied(_)
        ));
    }

    #[test]
    fn cidrs_hold_their_addresses_only() {
        let p = EgressPolicy::new()
            .allow_cidr("10.0.0.0/8")
            .allow_cidr("2001:db8::/32")
            .allow_cidr("192.0.2.7");
        p.validate().unwrap();
        for (ip, ok) in [
            ("10.1.2.3", true),
            ("11.0.0.1", false),
            ("2001:db8::1", true),
            ("2001:db9::1", false),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
        ] {
            let v = p.verdict(&Host::Ip(ip.parse().unwrap()), 1);
            assert_eq!(matches!(v, Verdict::Allowed(_)), ok, "{ip}");
        }
    }

    #[test]
    fn bad_policies_are_typed_errors() {
        for p in [
            EgressPolicy::new().allow_domain(""),
            EgressPolicy::new().allow_domain("*"),
            EgressPolicy::new().allow_domain("a..b"),
            EgressPolicy::new().allow_domain("exa mple.org"),
            EgressPolicy::new().allow_domain("*.*.org"),
            EgressPolicy::new().allow_cidr("10.0.0.0/33"),
            EgressPolicy::new().allow_cidr("not-an-ip"),
            EgressPolicy::new().allow_domain_ports("a.org", &[0]),
            EgressPolicy::new().inject_header("a.org", "Bad Name", "x"),
            EgressPolicy::new().inject_header("a.org", "X", "line\r\nbreak"),
            EgressPolicy::new().resolve("a.org", &[]),
        ] {
            match p.validate() {
                Err(SandboxError::InvalidConfig { field, .. }) => assert_eq!(field, "network"),
                other => panic!("{p:?}: {other:?}"),
            }
        }
        EgressPolicy::new()
            .allow_any_domain(&[443])
            .validate()
            .unwrap();
    }

    #[test]
    fn names_pointing_home_are_not_public() {
        for (ip, public) in [
            ("127.0.0.1", false),
            ("169.254.169.254", false),
            ("0.0.0.0", false),
            ("::1", false),
            ("::ffff:127.0.0.1", false),
            ("fe80::1", false),
            ("93.184.216.34", true),
            ("100.100.100.200", false),
            ("fd00:ec2::254", false),
            ("64:ff9b::7f00:1", false),
            ("10.0.0.1", true),
        ] {
            assert_eq!(is_public_enough(ip.parse().unwrap()), public, "{ip}");
        }
    }

    #[test]
    fn numbers_are_addresses_never_names() {
        assert_eq!(
            Host::parse("192.0.2.2."),
            Some(Host::Ip("192.0.2.2".parse().unwrap()))
        );
        assert_eq!(
            Host::parse("[::ffff:127.0.0.1]"),
            Some(Host::Ip("127.0.0.1".parse().unwrap()))
        );
        for n in ["3221225986", "0xc0000202", "a.0x7f", "foo.123"] {
            assert_eq!(Host::parse(n), None, "{n}");
        }
        assert!(matches!(Host::parse("a1.example"), Some(Host::Name(_))));
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let p = EgressPolicy::new().inject_header("a.org", "Authorization", "Bearer s3cret");
        assert!(!format!("{p:?}").contains("s3cret"));
    }

    #[test]
    fn headers_go_to_the_ports_they_name() {
        let p = EgressPolicy::new()
            .allow_domain("api.test")
            .inject_header("api.test", "Authorization", "a")
            .inject_header_ports("api.test", &[8080], "X-Key", "k");
        p.validate().unwrap();
        let on = |port| {
            p.headers_for("api.test", port)
                .map(|(n, _)| n)
                .collect::<Vec<_>>()
        };
        assert_eq!(on(80), ["Authorization"]);
        assert_eq!(on(8080), ["X-Key"]);
        assert!(
            on(38023).is_empty(),
            "a rule for every port is no injection on every port"
        );
        let none = EgressPolicy::new().inject_header_ports("api.test", &[], "X", "v");
        assert!(none.validate().is_err());
    }

    #[test]
    fn events_are_capped() {
        let event = EgressEvent {
            sandbox: "s".into(),
            host: "h".repeat(70_000),
            port: 80,
            method: "é".repeat(30_000),
            decision: EgressDecision::Denied {
                reason: "r".repeat(70_000),
            },
            address: None,
            bytes_sent: 0,
            bytes_received: 0,
            connect_time: Duration::ZERO,
            duration: Duration::ZERO,
        }
        .capped();
        assert!(event.method.len() <= EVENT_METHOD_MAX && event.method.ends_with('…'));
        assert!(event.host.len() <= EVENT_TEXT_MAX);
        let EgressDecision::Denied { reason } = &event.decision else {
            unreachable!()
        };
        assert!(reason.len() <= EVENT_TEXT_MAX);
    }
}
