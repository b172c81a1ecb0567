//! The DNS proxy the boxes use: the only resolver a box can reach.
//!
//! - [`DnsProxy`]: UDP and TCP on one port. A query is answered only for a box the
//!   [`BoxResolver`] knows (by source IPv4 address). A name its [`DomainPolicy`] does not permit,
//!   `localhost` and reverse lookups are REFUSED without asking upstream; AAAA is answered empty
//!   (boxes have IPv4 only); everything else goes to the one upstream resolver. Before an answer is
//!   relayed, its A records (of the question name and the CNAME chain from it, every link of which
//!   must be permitted) are handed to [`BoxResolver::learned`], so the host's firewall allows them
//!   by the time the box connects.
//! - [`DomainPolicy`] and [`check_domain_pattern`]: the patterns (`example.com`, `*.example.com`).
//! - `wire`: a small, strict parser and builder for the part of the DNS message format the proxy
//!   needs (RFC 1035, EDNS OPT of RFC 6891). Untrusted input never panics it.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use wire::{Name, Query, QueryError};

/// A message from a box larger than this is dropped.
const MAX_MESSAGE: usize = 4096;
/// Queries of one box being answered at once; beyond, SERVFAIL.
const MAX_IN_FLIGHT: usize = 64;
/// Open TCP connections of one box; beyond, a new one is closed at once.
const MAX_TCP_CONNECTIONS: usize = 16;
/// A TCP connection with no complete message for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// One exchange with upstream; there are at most [`UPSTREAM_ATTEMPTS`] per transport.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
const UPSTREAM_ATTEMPTS: usize = 2;
/// The EDNS UDP payload size the proxy advertises (the DNS flag day 2020 value).
const EDNS_UDP_SIZE: u16 = 1232;
/// Longest CNAME chain followed in an answer.
const MAX_CNAME_CHAIN: usize = 16;

/// What the proxy asks about the box that sent a query (identified by its source IPv4 address).
pub trait BoxResolver: Send + Sync {
    /// `None`: not a box we know; the query is dropped (no answer).
    fn policy(&self, source: Ipv4Addr) -> Option<Arc<DomainPolicy>>;
    /// Called with the A records (address, ttl seconds) of an answer the proxy gives `source` for
    /// `name` (lower-case, no trailing dot), before the answer is sent. Not called when there
    /// are none.
    fn learned(
        &self,
        source: Ipv4Addr,
        name: &str,
        addrs: &[(Ipv4Addr, u32)],
    ) -> BoxFuture<'static, ()>;
}

/// The running proxy. Dropping it (or [`DnsProxy::shutdown`]) stops its tasks.
pub struct DnsProxy {
    port: u16,
    cancel: CancellationToken,
}

impl DnsProxy {
    /// Binds UDP and TCP on `listen` (port 0: a free port, the same for both) and serves the
    /// boxes `boxes` knows, forwarding allowed queries to `upstream` and nowhere else.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        boxes: Arc<dyn BoxResolver>,
    ) -> io::Result<Arc<DnsProxy>> {
        let (udp, tcp) = bind_pair(listen).await?;
        let port = udp.local_addr()?.port();
        let cancel = CancellationToken::new();
        let inner = Arc::new(Inner {
            upstream,
            boxes,
            in_flight: Arc::new(Counter::default()),
            tcp_connections: Arc::new(Counter::default()),
            cancel: cancel.clone(),
        });
        debug!(port, %upstream, "dns proxy started");
        tokio::spawn(inner.clone().serve_udp(Arc::new(udp)));
        tokio::spawn(inner.serve_tcp(tcp));
        Ok(Arc::new(DnsProxy { port, cancel }))
    }

    /// The port both the UDP and the TCP listener are bound to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the listeners, the connections and the queries being answered.
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }
}

impl Drop for DnsProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// UDP on `listen`, then TCP on the port it got; with port 0, tries again when that TCP port is taken.
async fn bind_pair(listen: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(listen).await?;
        let addr = SocketAddr::new(listen.ip(), udp.local_addr()?.port());
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if listen.port() == 0 && e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free port for udp and tcp")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

struct Inner {
    upstream: SocketAddr,
    boxes: Arc<dyn BoxResolver>,
    in_flight: Arc<Counter>,
    tcp_connections: Arc<Counter>,
    cancel: CancellationToken,
}

impl Inner {
    async fn serve_udp(self: Arc<Self>, socket: Arc<UdpSocket>) {
        // One byte more than the limit, to tell a message at the limit from a larger one.
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        loop {
            let received = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = socket.recv_from(&mut buf) => r,
            };
            let (n, from) = match received {
                Ok(v) => v,
                Err(e) => {
                    debug!(error = %e, "dns proxy: udp receive failed");
                    continue;
                }
            };
            if n > MAX_MESSAGE {
                debug!(%from, "dns proxy: udp message too large, dropped");
                continue;
            }
            let Some(source) = source_v4(from) else {
                continue;
            };
            let Some(policy) = self.boxes.policy(source) else {
                debug!(%from, "dns proxy: query from an unknown source, dropped");
                continue;
            };
            let msg = buf[..n].to_vec();
            let Some(permit) = self.in_flight.try_acquire(source, MAX_IN_FLIGHT) else {
                debug!(%source, "dns proxy: too many queries in flight");
                if let Some(reply) = wire::header_reply(&msg, wire::RCODE_SERVFAIL) {
                    let _ = socket.send_to(&reply, from).await;
                }
                continue;
            };
            let inner = self.clone();
            let socket = socket.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let reply = tokio::select! {
                    _ = inner.cancel.cancelled() => return,
                    r = inner.handle(&msg, source, &policy, Transport::Udp) => r,
                };
                if let Some(reply) = reply {
                    if let Err(e) = socket.send_to(&reply, from).await {
                        debug!(%from, error = %e, "dns proxy: udp send failed");
                    }
                }
            });
        }
    }

    async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = listener.accept() => r,
            };
            let (stream, from) = match accepted {
                Ok(v) => v,
                Err(e) => {
                    // E.g. out of descriptors: do not spin.
                    debug!(error = %e, "dns proxy: tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(source) = source_v4(from) else {
                continue;
            };
            if self.boxes.policy(source).is_none() {
                debug!(%from, "dns proxy: connection from an unknown source, closed");
                continue;
            }
            let Some(permit) = self
                .tcp_connections
                .try_acquire(source, MAX_TCP_CONNECTIONS)
            else {
                debug!(%source, "dns proxy: too many tcp connections, closed");
                continue;
            };
            let inner = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                tokio::select! {
                    _ = inner.cancel.cancelled() => {}
                    r = inner.serve_connection(stream, source) => {
                        if let Err(e) = r {
                            debug!(%source, error = %e, "dns proxy: tcp connection ended");
                        }
                    }
                }
            });
        }
    }

    /// Length-prefixed messages, one after the other, until the box closes, idles or misbehaves.
    async fn serve_connection(&self, mut stream: TcpStream, source: Ipv4Addr) -> io::Result<()> {
        loop {
            let mut len = [0u8; 2];
            match timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
                Err(_) => return Ok(()),
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(r) => r?,
            };
            let len = usize::from(u16::from_be_bytes(len));
            if len > MAX_MESSAGE {
                debug!(%source, len, "dns proxy: tcp message too large, connection closed");
                return Ok(());
            }
            let mut msg = vec![0u8; len];
            timeout(TCP_IDLE, stream.read_exact(&mut msg))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "partial message"))??;
            // Asked again for each message: the box may have gone, or its policy changed.
            let Some(policy) = self.boxes.policy(source) else {
                return Ok(());
            };
            let reply = match self.in_flight.try_acquire(source, MAX_IN_FLIGHT) {
                Some(_permit) => self.handle(&msg, source, &policy, Transport::Tcp).await,
                None => wire::header_reply(&msg, wire::RCODE_SERVFAIL),
            };
            let Some(reply) = reply else {
                continue;
            };
            let Ok(reply_len) = u16::try_from(reply.len()) else {
                continue;
            };
            let mut framed = Vec::with_capacity(reply.len() + 2);
            framed.extend_from_slice(&reply_len.to_be_bytes());
            framed.extend_from_slice(&reply);
            stream.write_all(&framed).await?;
        }
    }

    /// The answer to one message from a box, or `None` to drop it.
    async fn handle(
        &self,
        msg: &[u8],
        source: Ipv4Addr,
        policy: &DomainPolicy,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let query = match wire::parse_query(msg) {
            Ok(q) => q,
            Err(QueryError::Drop) => return None,
            Err(QueryError::Reply(rcode)) => {
                debug!(%source, rcode, "dns proxy: bad query");
                return wire::header_reply(msg, rcode);
            }
        };
        let refused = || Some(wire::build_reply(&query, wire::RCODE_REFUSED, false));
        let Some(name) = query.name.to_text() else {
            debug!(%source, "dns proxy: query for an unusable name, refused");
            return refused();
        };
        if query.qclass != wire::CLASS_IN
            || matches!(query.qtype, wire::TYPE_AXFR | wire::TYPE_IXFR)
            || is_special(&name)
            || !policy.permits(&name)
        {
            debug!(%source, name, qtype = query.qtype, "dns proxy: refused");
            return refused();
        }
        if query.qtype == wire::TYPE_AAAA {
            return Some(wire::build_reply(&query, wire::RCODE_NOERROR, false));
        }
        self.forward(&query, &name, source, policy, transport).await
    }

    async fn forward(
        &self,
        query: &Query,
        name: &str,
        source: Ipv4Addr,
        policy: &DomainPolicy,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let servfail = || Some(wire::build_reply(query, wire::RCODE_SERVFAIL, false));
        let id = random_id();
        let upstream_query = wire::build_upstream_query(query, id, EDNS_UDP_SIZE);
        let Some((mut answer, response)) =
            self.exchange(&upstream_query, id, query, transport).await
        else {
            return servfail();
        };
        let addrs = match follow_chain(&answer, &response, &query.name, policy) {
            Ok(addrs) => addrs,
            Err(Chain::Refused(target)) => {
                debug!(%source, name, target, "dns proxy: cname to a name not permitted, refused");
                return Some(wire::build_reply(query, wire::RCODE_REFUSED, false));
            }
            Err(Chain::Malformed) => {
                debug!(%source, name, "dns proxy: unusable cname chain from upstream");
                return servfail();
            }
        };
        answer[..2].copy_from_slice(&query.id.to_be_bytes());
        if transport == Transport::Udp && answer.len() > query.udp_limit() {
            // Too large for the box's UDP: it asks again over TCP, and learns then.
            return Some(wire::build_reply(query, response.rcode, true));
        }
        if !addrs.is_empty() {
            debug!(%source, name, count = addrs.len(), "dns proxy: learned addresses");
            self.boxes.learned(source, name, &addrs).await;
        }
        Some(answer)
    }

    /// The upstream answer to `upstream_query` (with id `id`), checked against `query`: over UDP
    /// unless the box asked over TCP or the UDP answer is truncated.
    async fn exchange(
        &self,
        upstream_query: &[u8],
        id: u16,
        query: &Query,
        transport: Transport,
    ) -> Option<(Vec<u8>, wire::Response)> {
        if transport == Transport::Udp {
            let mut truncated = false;
            for attempt in 0..UPSTREAM_ATTEMPTS {
                match timeout(
                    UPSTREAM_TIMEOUT,
                    udp_exchange(self.upstream, upstream_query, id),
                )
                .await
                {
                    Ok(Ok(bytes)) => match wire::parse_response(&bytes, id, query) {
                        Some(r) if r.tc => {
                            truncated = true;
                            break;
                        }
                        Some(r) => return Some((bytes, r)),
                        None => {
                            debug!(upstream = %self.upstream, "dns proxy: malformed upstream answer");
                            return None;
                        }
                    },
                    Ok(Err(e)) => debug!(attempt, error = %e, "dns proxy: upstream udp failed"),
                    Err(_) => debug!(attempt, "dns proxy: upstream udp timed out"),
                }
            }
            if !truncated {
                return None;
            }
        }
        for attempt in 0..UPSTREAM_ATTEMPTS {
            match timeout(
                UPSTREAM_TIMEOUT,
                tcp_exchange(self.upstream, upstream_query),
            )
            .await
            {
                Ok(Ok(bytes)) => {
                    let response = wire::parse_response(&bytes, id, query);
                    if response.is_none() {
                        debug!(upstream = %self.upstream, "dns proxy: malformed upstream answer");
                    }
                    return response.map(|r| (bytes, r));
                }
                Ok(Err(e)) => debug!(attempt, error = %e, "dns proxy: upstream tcp failed"),
                Err(_) => debug!(attempt, "dns proxy: upstream tcp timed out"),
            }
        }
        None
    }
}

/// One UDP exchange from a fresh socket (a fresh source port); datagrams with another id are ignored.
async fn udp_exchange(upstream: SocketAddr, query: &[u8], id: u16) -> io::Result<Vec<u8>> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket.recv(&mut buf).await?;
        if n >= 2 && buf[..2] == id.to_be_bytes() {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp_exchange(upstream: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let len = u16::try_from(query.len()).map_err(|_| io::Error::other("query too large"))?;
    let mut stream = TcpStream::connect(upstream).await?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}

fn source_v4(addr: SocketAddr) -> Option<Ipv4Addr> {
    match addr.ip() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    }
}

fn random_id() -> u16 {
    let mut b = [0u8; 2];
    if getrandom::getrandom(&mut b).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return nanos as u16;
    }
    u16::from_be_bytes(b)
}

/// Names never forwarded, whatever the policy: `localhost` and reverse lookups.
fn is_special(name: &str) -> bool {
    ["localhost", "in-addr.arpa", "ip6.arpa"]
        .iter()
        .any(|zone| {
            name == *zone
                || (name.len() > zone.len()
                    && name.ends_with(zone)
                    && name.as_bytes()[name.len() - zone.len() - 1] == b'.')
        })
}

enum Chain {
    /// A CNAME target the policy does not permit (its text, for the log).
    Refused(String),
    Malformed,
}

/// The A records of the answer section owned by `qname` or by a name reached from it through the
/// answer's CNAMEs, every one of which must be permitted.
fn follow_chain(
    msg: &[u8],
    response: &wire::Response,
    qname: &Name,
    policy: &DomainPolicy,
) -> Result<Vec<(Ipv4Addr, u32)>, Chain> {
    let mut chain = vec![qname.clone()];
    loop {
        let current = &chain[chain.len() - 1];
        let mut cnames = response.answers.iter().filter(|r| {
            r.rtype == wire::TYPE_CNAME
                && r.class == wire::CLASS_IN
                && r.owner.eq_ignore_case(current)
        });
        let Some(record) = cnames.next() else {
            break;
        };
        if cnames.next().is_some() {
            return Err(Chain::Malformed);
        }
        let target = wire::read_rdata_name(msg, record).ok_or(Chain::Malformed)?;
        match target.to_text() {
            Some(text) if !is_special(&text) && policy.permits(&text) => {}
            _ => return Err(Chain::Refused(target.display())),
        }
        if chain.iter().any(|n| n.eq_ignore_case(&target)) || chain.len() > MAX_CNAME_CHAIN {
            return Err(Chain::Malformed);
        }
        chain.push(target);
    }
    Ok(response
        .answers
        .iter()
        .filter(|r| r.rtype == wire::TYPE_A && r.class == wire::CLASS_IN)
        .filter(|r| chain.iter().any(|n| n.eq_ignore_case(&r.owner)))
        .filter_map(|r| {
            let b = msg
                .get(r.rdata..r.rdata + r.rdlen)
                .filter(|b| b.len() == 4)?;
            // RFC 2181 §8: a TTL with the top bit set is read as zero.
            let ttl = if r.ttl > i32::MAX as u32 { 0 } else { r.ttl };
            Some((Ipv4Addr::new(b[0], b[1], b[2], b[3]), ttl))
        })
        .collect())
}

/// Per-box counts with a cap; a [`Permit`] gives its unit back when dropped.
#[derive(Default)]
struct Counter {
    counts: Mutex<HashMap<Ipv4Addr, usize>>,
}

struct Permit {
    counter: Arc<Counter>,
    ip: Ipv4Addr,
}

impl Counter {
    fn try_acquire(self: &Arc<Self>, ip: Ipv4Addr, max: usize) -> Option<Permit> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Permit {
            counter: self.clone(),
            ip,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self
            .counter
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Which names a box may resolve: all but the denied ones, or only the allowed ones (deny
/// patterns win in both modes).
#[derive(Debug, Clone)]
pub struct DomainPolicy {
    default_allow: bool,
    allow: Vec<Pattern>,
    deny: Vec<Pattern>,
}

#[derive(Debug, Clone)]
enum Pattern {
    /// That name.
    Exact(String),
    /// Any name below it; held with its leading dot (`.example.com`).
    Below(String),
}

impl Pattern {
    fn parse(p: &str) -> Result<Pattern, String> {
        let p = check_domain_pattern(p)?;
        Ok(match p.strip_prefix('*') {
            Some(suffix) => Pattern::Below(suffix.to_string()),
            None => Pattern::Exact(p),
        })
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(p) => name == p,
            Pattern::Below(suffix) => name.len() > suffix.len() && name.ends_with(suffix.as_str()),
        }
    }
}

impl DomainPolicy {
    /// `default_allow`: every name but the `deny`ed ones; otherwise only the `allow`ed ones that
    /// are not denied. Each pattern is checked with [`check_domain_pattern`].
    pub fn new(
        default_allow: bool,
        allow: &[String],
        deny: &[String],
    ) -> Result<DomainPolicy, String> {
        Ok(DomainPolicy {
            default_allow,
            allow: allow
                .iter()
                .map(|p| Pattern::parse(p))
                .collect::<Result<_, _>>()?,
            deny: deny
                .iter()
                .map(|p| Pattern::parse(p))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether `name` (any case, trailing dot or not) may be resolved. A string that is not a
    /// host name (labels of letters, digits, '-' and '_') is never permitted.
    pub fn permits(&self, name: &str) -> bool {
        let Some(name) = normalize_name(name) else {
            return false;
        };
        if self.deny.iter().any(|p| p.matches(&name)) {
            return false;
        }
        self.default_allow || self.allow.iter().any(|p| p.matches(&name))
    }
}

/// Validates a domain pattern: `example.com` (that exact name) or `*.example.com` (any name below
/// it, not the apex). Returns it lower-cased without a trailing dot. Labels are 1-63 of
/// `[a-z0-9-]`, not starting or ending with '-'; at most 253 characters; no IP addresses.
pub fn check_domain_pattern(p: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("domain pattern {p:?}: {why}"));
    let lower = p.to_ascii_lowercase();
    let s = lower.strip_suffix('.').unwrap_or(&lower);
    let rest = s.strip_prefix("*.").unwrap_or(s);
    if rest.is_empty() {
        return bad("no name");
    }
    if s.len() > 253 {
        return bad("longer than 253 characters");
    }
    for label in rest.split('.') {
        if label.is_empty() {
            return bad("empty label");
        }
        if label.len() > 63 {
            return bad("label longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("only letters, digits, '-' and a leading '*.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label starts or ends with '-'");
        }
    }
    if rest
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return bad("an IP address, not a domain");
    }
    Ok(s.to_string())
}

/// A host name lower-cased without its trailing dot, if it is one: labels of 1-63 of
/// `[a-z0-9_-]`, at most 253 characters.
fn normalize_name(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    let s = lower.strip_suffix('.').unwrap_or(&lower);
    let valid = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        });
    valid.then(|| s.to_string())
}

/// The DNS message format, as far as the proxy needs it. Every read is bounds-checked.
mod wire {
    pub const TYPE_A: u16 = 1;
    pub const TYPE_CNAME: u16 = 5;
    pub const TYPE_AAAA: u16 = 28;
    pub const TYPE_OPT: u16 = 41;
    pub const TYPE_IXFR: u16 = 251;
    pub const TYPE_AXFR: u16 = 252;
    pub const CLASS_IN: u16 = 1;

    pub const RCODE_NOERROR: u8 = 0;
    pub const RCODE_FORMERR: u8 = 1;
    pub const RCODE_SERVFAIL: u8 = 2;
    pub const RCODE_NOTIMP: u8 = 4;
    pub const RCODE_REFUSED: u8 = 5;

    const HEADER_LEN: usize = 12;
    const FLAG_QR: u16 = 0x8000;
    const MASK_OPCODE: u16 = 0x7800;
    const FLAG_TC: u16 = 0x0200;
    const FLAG_RD: u16 = 0x0100;
    const FLAG_RA: u16 = 0x0080;
    const FLAG_CD: u16 = 0x0010;
    const EDNS_DO: u32 = 0x8000;

    /// A domain name as its raw labels (case kept, so an answer can echo the question).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Name(pub Vec<Vec<u8>>);

    impl Name {
        pub fn eq_ignore_case(&self, other: &Name) -> bool {
            self.0.len() == other.0.len()
                && self
                    .0
                    .iter()
                    .zip(&other.0)
                    .all(|(a, b)| a.eq_ignore_ascii_case(b))
        }

        /// Lower-case text without the trailing dot, if it is a host name.
        pub fn to_text(&self) -> Option<String> {
            let mut text = String::new();
            for (i, label) in self.0.iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                text.push_str(std::str::from_utf8(label).ok()?);
            }
            super::normalize_name(&text).filter(|n| n.len() == text.len())
        }

        /// For logs only.
        pub fn display(&self) -> String {
            let labels: Vec<_> = self.0.iter().map(|l| String::from_utf8_lossy(l)).collect();
            labels.join(".")
        }

        fn is_root(&self) -> bool {
            self.0.is_empty()
        }

        fn encode(&self, out: &mut Vec<u8>) {
            for label in &self.0 {
                out.push(label.len() as u8);
                out.extend_from_slice(label);
            }
            out.push(0);
        }
    }

    #[derive(Debug, Clone, Copy)]
    pub struct Edns {
        pub udp_size: u16,
        pub dnssec_ok: bool,
    }

    /// A standard query with one question, as a box sent it.
    #[derive(Debug, Clone)]
    pub struct Query {
        pub id: u16,
        rd: bool,
        cd: bool,
        pub name: Name,
        pub qtype: u16,
        pub qclass: u16,
        pub edns: Option<Edns>,
    }

    impl Query {
        /// The largest UDP answer the box accepts.
        pub fn udp_limit(&self) -> usize {
            self.edns.map_or(512, |e| {
                usize::from(e.udp_size).clamp(512, super::MAX_MESSAGE)
            })
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum QueryError {
        /// Not worth an answer (too short to have a header, or not a query).
        Drop,
        /// Answer with this rcode and no question.
        Reply(u8),
    }

    /// A resource record; `rdata` is its data's offset in the message.
    #[derive(Debug, Clone)]
    pub struct Record {
        pub owner: Name,
        pub rtype: u16,
        pub class: u16,
        pub ttl: u32,
        pub rdata: usize,
        pub rdlen: usize,
    }

    /// An upstream answer, checked to be the answer to our query.
    #[derive(Debug)]
    pub struct Response {
        pub tc: bool,
        pub rcode: u8,
        pub answers: Vec<Record>,
    }

    struct Reader<'a> {
        msg: &'a [u8],
        pos: usize,
    }

    impl<'a> Reader<'a> {
        fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
            let b = self.msg.get(self.pos..self.pos.checked_add(n)?)?;
            self.pos += n;
            Some(b)
        }

        fn u16(&mut self) -> Option<u16> {
            self.bytes(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
        }

        fn u32(&mut self) -> Option<u32> {
            self.bytes(4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }

        fn name(&mut self) -> Option<Name> {
            let (name, end) = read_name(self.msg, self.pos)?;
            self.pos = end;
            Some(name)
        }

        fn record(&mut self) -> Option<Record> {
            let owner = self.name()?;
            let rtype = self.u16()?;
            let class = self.u16()?;
            let ttl = self.u32()?;
            let rdlen = usize::from(self.u16()?);
            let rdata = self.pos;
            self.bytes(rdlen)?;
            Some(Record {
                owner,
                rtype,
                class,
                ttl,
                rdata,
                rdlen,
            })
        }
    }

    fn u16_at(msg: &[u8], pos: usize) -> Option<u16> {
        Some(u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]))
    }

    /// The name at `start` and the offset just past it there. Compression pointers must point
    /// strictly before every place already read, so there are no loops; at most 255 bytes.
    pub fn read_name(msg: &[u8], start: usize) -> Option<(Name, usize)> {
        let mut labels = Vec::new();
        let mut pos = start;
        let mut limit = start;
        let mut end = None;
        let mut wire_len = 1usize;
        loop {
            let len = usize::from(*msg.get(pos)?);
            match len & 0xC0 {
                0x00 if len == 0 => return Some((Name(labels), end.unwrap_or(pos + 1))),
                0x00 => {
                    wire_len += len + 1;
                    if wire_len > 255 {
                        return None;
                    }
                    labels.push(msg.get(pos + 1..pos + 1 + len)?.to_vec());
                    pos += 1 + len;
                }
                0xC0 => {
                    let target = ((len & 0x3F) << 8) | usize::from(*msg.get(pos + 1)?);
                    if target >= limit {
                        return None;
                    }
                    end.get_or_insert(pos + 2);
                    limit = target;
                    pos = target;
                }
                _ => return None,
            }
        }
    }

    /// The name that is the whole data of `record` (a CNAME's target).
    pub fn read_rdata_name(msg: &[u8], record: &Record) -> Option<Name> {
        let (name, end) = read_name(msg, record.rdata)?;
        (end == record.rdata + record.rdlen).then_some(name)
    }

    pub fn parse_query(msg: &[u8]) -> Result<Query, QueryError> {
        let formerr = QueryError::Reply(RCODE_FORMERR);
        if msg.len() < HEADER_LEN {
            return Err(QueryError::Drop);
        }
        let mut r = Reader { msg, pos: 0 };
        let id = r.u16().ok_or(QueryError::Drop)?;
        let flags = r.u16().ok_or(QueryError::Drop)?;
        if flags & FLAG_QR != 0 {
            return Err(QueryError::Drop);
        }
        if flags & MASK_OPCODE != 0 {
            return Err(QueryError::Reply(RCODE_NOTIMP));
        }
        let counts = [r.u16(), r.u16(), r.u16(), r.u16()];
        let [Some(qd), Some(an), Some(ns), Some(ar)] = counts else {
            return Err(QueryError::Drop);
        };
        if qd != 1 || an != 0 || ns != 0 {
            return Err(formerr);
        }
        let name = r.name().ok_or(formerr)?;
        let qtype = r.u16().ok_or(formerr)?;
        let qclass = r.u16().ok_or(formerr)?;
        if qtype == TYPE_OPT {
            return Err(formerr);
        }
        let mut edns = None;
        for _ in 0..ar {
            let record = r.record().ok_or(formerr)?;
            if record.rtype == TYPE_OPT {
                if edns.is_some() || !record.owner.is_root() {
                    return Err(formerr);
                }
                edns = Some(Edns {
                    udp_size: record.class,
                    dnssec_ok: record.ttl & EDNS_DO != 0,
                });
            }
            // Anything else there (a TSIG, say) is not forwarded, so not looked at.
        }
        if r.pos != msg.len() {
            return Err(formerr);
        }
        Ok(Query {
            id,
            rd: flags & FLAG_RD != 0,
            cd: flags & FLAG_CD != 0,
            name,
            qtype,
            qclass,
            edns,
        })
    }

    /// An answer with no question to a message whose header can be read (and is a query).
    pub fn header_reply(msg: &[u8], rcode: u8) -> Option<Vec<u8>> {
        let id = u16_at(msg, 0)?;
        let flags = u16_at(msg, 2)?;
        if msg.len() < HEADER_LEN || flags & FLAG_QR != 0 {
            return None;
        }
        let flags = FLAG_QR | (flags & (MASK_OPCODE | FLAG_RD)) | FLAG_RA | u16::from(rcode & 0x0F);
        let mut out = Vec::with_capacity(HEADER_LEN);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&[0; 8]);
        Some(out)
    }

    fn push_header(out: &mut Vec<u8>, id: u16, flags: u16, arcount: u16) {
        for v in [id, flags, 1, 0, 0, arcount] {
            out.extend_from_slice(&v.to_be_bytes());
        }
    }

    fn push_question(out: &mut Vec<u8>, q: &Query) {
        q.name.encode(out);
        out.extend_from_slice(&q.qtype.to_be_bytes());
        out.extend_from_slice(&q.qclass.to_be_bytes());
    }

    fn push_opt(out: &mut Vec<u8>, udp_size: u16, dnssec_ok: bool) {
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&udp_size.to_be_bytes());
        out.extend_from_slice(&(if dnssec_ok { EDNS_DO } else { 0 }).to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
    }

    /// The proxy's own answer to `q`: its question, no records, `rcode`, truncated or not.
    pub fn build_reply(q: &Query, rcode: u8, tc: bool) -> Vec<u8> {
        let mut flags = FLAG_QR | FLAG_RA | u16::from(rcode & 0x0F);
        if q.rd {
            flags |= FLAG_RD;
        }
        if q.cd {
            flags |= FLAG_CD;
        }
        if tc {
            flags |= FLAG_TC;
        }
        let mut out = Vec::with_capacity(64);
        push_header(&mut out, q.id, flags, u16::from(q.edns.is_some()));
        push_question(&mut out, q);
        if let Some(edns) = q.edns {
            push_opt(&mut out, super::EDNS_UDP_SIZE, edns.dnssec_ok);
        }
        out
    }

    /// `q` as the proxy asks it upstream: a fresh id, the question only, EDNS only if the box used it.
    pub fn build_upstream_query(q: &Query, id: u16, udp_size: u16) -> Vec<u8> {
        let mut flags = 0;
        if q.rd {
            flags |= FLAG_RD;
        }
        if q.cd {
            flags |= FLAG_CD;
        }
        let mut out = Vec::with_capacity(64);
        push_header(&mut out, id, flags, u16::from(q.edns.is_some()));
        push_question(&mut out, q);
        if let Some(edns) = q.edns {
            push_opt(&mut out, udp_size, edns.dnssec_ok);
        }
        out
    }

    /// `msg` as the answer to `q` asked with `id`: `None` unless it is one and well-formed. A
    /// truncated answer's records are not read.
    pub fn parse_response(msg: &[u8], id: u16, q: &Query) -> Option<Response> {
        let mut r = Reader { msg, pos: 0 };
        let got_id = r.u16()?;
        let flags = r.u16()?;
        let (qd, an, ns, ar) = (r.u16()?, r.u16()?, r.u16()?, r.u16()?);
        if got_id != id || flags & FLAG_QR == 0 || flags & MASK_OPCODE != 0 {
            return None;
        }
        let tc = flags & FLAG_TC != 0;
        let rcode = (flags & 0x0F) as u8;
        match qd {
            1 => {
                let name = r.name()?;
                let (qtype, qclass) = (r.u16()?, r.u16()?);
                if !name.eq_ignore_case(&q.name) || qtype != q.qtype || qclass != q.qclass {
                    return None;
                }
            }
            // Some servers leave the question out of an error.
            0 if an == 0 && rcode != RCODE_NOERROR => {}
            _ => return None,
        }
        if tc {
            return Some(Response {
                tc,
                rcode,
                answers: Vec::new(),
            });
        }
        let answers = (0..an).map(|_| r.record()).collect::<Option<Vec<_>>>()?;
        for _ in 0..u32::from(ns) + u32::from(ar) {
            r.record()?;
        }
        (r.pos == msg.len()).then_some(Response { tc, rcode, answers })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    // --- patterns and policy ---

    #[test]
    fn patterns_are_checked_and_normalized() {
        assert_eq!(check_domain_pattern("Example.COM.").unwrap(), "example.com");
        assert_eq!(
            check_domain_pattern("*.example.com").unwrap(),
            "*.example.com"
        );
        assert_eq!(check_domain_pattern("a-1.b2.io").unwrap(), "a-1.b2.io");
        assert!(check_domain_pattern("123.example.com").is_ok());
        let long = format!("{}.com", vec!["a".repeat(60); 5].join("."));
        assert!(long.len() > 253);
        for bad in [
            "",
            ".",
            "*",
            "*.",
            "**.a.com",
            "a.*.com",
            "*a.com",
            "a..b",
            ".a.com",
            "-a.com",
            "a-.com",
            "1.2.3.4",
            "10",
            "::1",
            "[::1]",
            "ex ample.com",
            "a_b.com",
            "a.com..",
            "é.com",
            long.as_str(),
        ] {
            assert!(check_domain_pattern(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_domain_pattern(&format!("{}.com", "a".repeat(64))).is_err());
        let err = check_domain_pattern("a..b").unwrap_err();
        assert!(err.contains("\"a..b\""), "{err}");
    }

    #[test]
    fn policy_modes() {
        let s = |v: &[&str]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let deny_all = DomainPolicy::new(
            false,
            &s(&["pypi.org", "*.github.com"]),
            &s(&["evil.github.com"]),
        )
        .unwrap();
        assert!(deny_all.permits("pypi.org"));
        assert!(deny_all.permits("PyPI.org."));
        assert!(!deny_all.permits("files.pypi.org"));
        assert!(deny_all.permits("api.github.com"));
        assert!(deny_all.permits("a.b.github.com"));
        assert!(!deny_all.permits("github.com"));
        assert!(!deny_all.permits("xgithub.com"));
        assert!(!deny_all.permits("evil.github.com"));
        assert!(!deny_all.permits("EVIL.github.com."));
        assert!(!deny_all.permits("example.com"));

        let allow_all = DomainPolicy::new(true, &[], &s(&["*.ads.net", "tracker.io"])).unwrap();
        assert!(allow_all.permits("example.com"));
        assert!(allow_all.permits("_sip._tcp.example.com"));
        assert!(allow_all.permits("ads.net"));
        assert!(!allow_all.permits("x.ads.net"));
        assert!(!allow_all.permits("Tracker.IO"));
        // Not host names: never permitted.
        for bad in ["", ".", "a..b", "a b.com", "a/b", "ex\0.com"] {
            assert!(!allow_all.permits(bad), "{bad:?}");
        }
        assert!(DomainPolicy::new(true, &s(&["*"]), &[]).is_err());
        assert!(DomainPolicy::new(true, &[], &s(&["1.2.3.4"])).is_err());
    }

    #[test]
    fn special_names() {
        for n in [
            "localhost",
            "a.localhost",
            "4.3.2.1.in-addr.arpa",
            "in-addr.arpa",
            "b.ip6.arpa",
        ] {
            assert!(is_special(n), "{n}");
        }
        for n in ["notlocalhost", "localhost.com", "xin-addr.arpa", "arpa"] {
            assert!(!is_special(n), "{n}");
        }
    }

    // --- wire ---

    fn encode_name(name: &str, out: &mut Vec<u8>) {
        for label in name.split('.').filter(|l| !l.is_empty()) {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
    }

    /// A query as a box's stub resolver sends it (RD set), optionally with an EDNS OPT record.
    fn query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
        let mut m = Vec::new();
        for v in [id, 0x0100, 1, 0, 0, u16::from(edns)] {
            m.extend_from_slice(&v.to_be_bytes());
        }
        encode_name(name, &mut m);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        if edns {
            m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        }
        m
    }

    fn rcode(m: &[u8]) -> u8 {
        m[3] & 0x0F
    }

    fn ancount(m: &[u8]) -> u16 {
        u16::from_be_bytes([m[6], m[7]])
    }

    /// A small xorshift generator, so the fuzz tests are repeatable.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn parses_a_query_and_builds_answers() {
        let q = wire::parse_query(&query(7, "Api.Example.com", wire::TYPE_A, true)).unwrap();
        assert_eq!(q.id, 7);
        assert_eq!(q.name.to_text().as_deref(), Some("api.example.com"));
        assert_eq!(q.udp_limit(), 1232);
        let reply = wire::build_reply(&q, wire::RCODE_REFUSED, false);
        assert_eq!(&reply[..2], &7u16.to_be_bytes());
        assert_eq!(reply[2] & 0x80, 0x80);
        assert_eq!(rcode(&reply), 5);
        // The question is echoed with its case.
        assert!(reply.windows(3).any(|w| w == b"Api"));
        let up = wire::build_upstream_query(&q, 99, EDNS_UDP_SIZE);
        let back = wire::parse_query(&up).unwrap();
        assert_eq!(back.id, 99);
        assert!(back.name.eq_ignore_case(&q.name));

        assert_eq!(wire::parse_query(&[1, 2, 3]).unwrap_err(), QueryError::Drop);
        let mut two = query(1, "a.com", 1, false);
        two[5] = 2;
        assert_eq!(
            wire::parse_query(&two).unwrap_err(),
            QueryError::Reply(wire::RCODE_FORMERR)
        );
        let mut notify = query(1, "a.com", 1, false);
        notify[2] |= 4 << 3;
        assert_eq!(
            wire::parse_query(&notify).unwrap_err(),
            QueryError::Reply(wire::RCODE_NOTIMP)
        );
        let mut answer = query(1, "a.com", 1, false);
        answer[2] |= 0x80;
        assert_eq!(wire::parse_query(&answer).unwrap_err(), QueryError::Drop);
        let mut trailing = query(1, "a.com", 1, false);
        trailing.push(0);
        assert_eq!(
            wire::parse_query(&trailing).unwrap_err(),
            QueryError::Reply(wire::RCODE_FORMERR)
        );
    }

    #[test]
    fn compression_pointers_cannot_loop() {
        let mut m = vec![0u8; 12];
        // A pointer to itself, one to the future, and a two-step loop.
        m.extend_from_slice(&[0xC0, 12]);
        assert!(wire::read_name(&m, 12).is_none());
        let m2 = [0u8, 0, 0xC0, 4, 1, b'a', 0xC0, 2];
        assert!(wire::read_name(&m2, 2).is_none());
        assert!(wire::read_name(&m2, 4).is_none());
        let ok = [1u8, b'a', 0, 1, b'b', 0xC0, 0];
        let (name, end) = wire::read_name(&ok, 3).unwrap();
        assert_eq!(name.display(), "b.a");
        assert_eq!(end, 7);
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let q = wire::parse_query(&query(1, "a.example.com", 1, true)).unwrap();
        let response = fake_answer(
            &query(1, "a.example.com", 1, true),
            &[
                Rr::Cname("a.example.com", "b.example.com"),
                Rr::A("b.example.com", [1, 2, 3, 4]),
            ],
            false,
        );
        let policy = DomainPolicy::new(true, &[], &[]).unwrap();
        let seeds = [query(5, "a.example.com", 1, true), response.clone()];
        for i in 0..20_000 {
            let mut m: Vec<u8> = if i % 3 == 0 {
                (0..rng.below(80)).map(|_| rng.next() as u8).collect()
            } else {
                seeds[i % 2].clone()
            };
            if i % 3 != 0 {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(m.len());
                    m[at] = rng.next() as u8;
                }
                if rng.below(3) == 0 {
                    m.truncate(rng.below(m.len() + 1));
                }
            }
            let _ = wire::parse_query(&m);
            let _ = wire::header_reply(&m, wire::RCODE_FORMERR);
            if let Some(r) = wire::parse_response(&m, 1, &q) {
                let _ = follow_chain(&m, &r, &q.name, &policy);
            }
            for start in 0..m.len().min(20) {
                let _ = wire::read_name(&m, start);
            }
        }
    }

    // --- a fake upstream, and the proxy over real sockets ---

    enum Rr {
        A(&'static str, [u8; 4]),
        Cname(&'static str, &'static str),
    }

    /// An answer to `q` (copied: id, question) with `rrs`; the owner of a record for the question
    /// name is written as a compression pointer to it.
    fn fake_answer(q: &[u8], rrs: &[Rr], tc: bool) -> Vec<u8> {
        let qname_end = 12 + q[12..].iter().position(|&b| b == 0).unwrap() + 1;
        let qname = String::from_utf8_lossy(&q[12..qname_end]).to_string();
        let mut m = q[..2].to_vec();
        let flags: u16 = 0x8180 | if tc { 0x0200 } else { 0 };
        m.extend_from_slice(&flags.to_be_bytes());
        let an = if tc { 0 } else { rrs.len() as u16 };
        for v in [1, an, 0, 0] {
            m.extend_from_slice(&v.to_be_bytes());
        }
        m.extend_from_slice(&q[12..qname_end + 4]);
        if tc {
            return m;
        }
        let owner = |m: &mut Vec<u8>, name: &str| {
            let mut wire = Vec::new();
            encode_name(name, &mut wire);
            if wire.eq_ignore_ascii_case(qname.as_bytes()) {
                m.extend_from_slice(&[0xC0, 12]);
            } else {
                m.extend_from_slice(&wire);
            }
        };
        for rr in rrs {
            match rr {
                Rr::A(name, ip) => {
                    owner(&mut m, name);
                    m.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                    m.extend_from_slice(ip);
                }
                Rr::Cname(name, target) => {
                    owner(&mut m, name);
                    let mut t = Vec::new();
                    encode_name(target, &mut t);
                    m.extend_from_slice(&[0, 5, 0, 1, 0, 0, 1, 44]);
                    m.extend_from_slice(&(t.len() as u16).to_be_bytes());
                    m.extend_from_slice(&t);
                }
            }
        }
        m
    }

    fn fake_records(name: &str) -> Vec<Rr> {
        match name {
            "allowed.test" => vec![
                Rr::A("allowed.test", [10, 0, 0, 1]),
                Rr::A("allowed.test", [10, 0, 0, 2]),
            ],
            "alias.test" => vec![
                Rr::Cname("alias.test", "allowed.test"),
                Rr::A("allowed.test", [10, 0, 0, 1]),
                // Not reached from the question: not learned.
                Rr::A("other.test", [10, 7, 7, 7]),
            ],
            "badalias.test" => vec![
                Rr::Cname("badalias.test", "denied.test"),
                Rr::A("denied.test", [10, 9, 9, 9]),
            ],
            "tc.test" => vec![Rr::A("tc.test", [10, 0, 0, 3])],
            "slow.test" => vec![Rr::A("slow.test", [10, 0, 0, 4])],
            _ => vec![],
        }
    }

    #[derive(Default)]
    struct Upstream {
        udp: AtomicUsize,
        tcp: AtomicUsize,
        names: Mutex<Vec<String>>,
    }

    impl Upstream {
        fn asked(&self, name: &str) -> bool {
            self.names.lock().unwrap().iter().any(|n| n == name)
        }
    }

    fn question_name(q: &[u8]) -> String {
        let (name, _) = wire::read_name(q, 12).unwrap();
        name.to_text().unwrap()
    }

    async fn answer_for(q: &[u8], tcp: bool) -> Vec<u8> {
        let name = question_name(q);
        if name == "slow.test" {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        fake_answer(q, &fake_records(&name), name == "tc.test" && !tcp)
    }

    /// UDP and TCP on one 127.0.0.1 port, answering from [`fake_records`] (`tc.test` truncated over UDP).
    async fn fake_upstream() -> (SocketAddr, Arc<Upstream>) {
        let (udp, tcp) = bind_pair("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = udp.local_addr().unwrap();
        let state = Arc::new(Upstream::default());
        let udp = Arc::new(udp);
        let st = state.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let (n, from) = udp.recv_from(&mut buf).await.unwrap();
                let q = buf[..n].to_vec();
                st.udp.fetch_add(1, Ordering::SeqCst);
                st.names.lock().unwrap().push(question_name(&q));
                let udp = udp.clone();
                tokio::spawn(async move {
                    let answer = answer_for(&q, false).await;
                    udp.send_to(&answer, from).await.unwrap();
                });
            }
        });
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = tcp.accept().await.unwrap();
                let st = st.clone();
                tokio::spawn(async move {
                    let mut len = [0u8; 2];
                    while s.read_exact(&mut len).await.is_ok() {
                        let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        s.read_exact(&mut q).await.unwrap();
                        st.tcp.fetch_add(1, Ordering::SeqCst);
                        st.names.lock().unwrap().push(question_name(&q));
                        let a = answer_for(&q, true).await;
                        s.write_all(&(a.len() as u16).to_be_bytes()).await.unwrap();
                        s.write_all(&a).await.unwrap();
                    }
                });
            }
        });
        (addr, state)
    }

    type Learned = (Ipv4Addr, String, Vec<(Ipv4Addr, u32)>);

    /// Knows 127.0.0.1 (or nobody); records `learned` calls, which take 50 ms to finish.
    struct Boxes {
        policy: Option<Arc<DomainPolicy>>,
        learned: Arc<Mutex<Vec<Learned>>>,
    }

    impl BoxResolver for Boxes {
        fn policy(&self, source: Ipv4Addr) -> Option<Arc<DomainPolicy>> {
            self.policy
                .clone()
                .filter(|_| source == Ipv4Addr::LOCALHOST)
        }

        fn learned(
            &self,
            source: Ipv4Addr,
            name: &str,
            addrs: &[(Ipv4Addr, u32)],
        ) -> BoxFuture<'static, ()> {
            let entry = (source, name.to_string(), addrs.to_vec());
            let learned = self.learned.clone();
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                learned.lock().unwrap().push(entry);
            })
        }
    }

    struct Setup {
        proxy: Arc<DnsProxy>,
        upstream: Arc<Upstream>,
        learned: Arc<Mutex<Vec<Learned>>>,
    }

    async fn setup(known: bool) -> Setup {
        let (upstream_addr, upstream) = fake_upstream().await;
        let allow: Vec<String> = [
            "allowed.test",
            "alias.test",
            "badalias.test",
            "tc.test",
            "slow.test",
            "*.wild.test",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let policy = DomainPolicy::new(false, &allow, &["bad.wild.test".to_string()]).unwrap();
        let learned = Arc::new(Mutex::new(Vec::new()));
        let boxes = Boxes {
            policy: known.then(|| Arc::new(policy)),
            learned: learned.clone(),
        };
        let proxy = DnsProxy::start(
            "127.0.0.1:0".parse().unwrap(),
            upstream_addr,
            Arc::new(boxes),
        )
        .await
        .unwrap();
        Setup {
            proxy,
            upstream,
            learned,
        }
    }

    async fn client(s: &Setup) -> UdpSocket {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.connect(("127.0.0.1", s.proxy.port())).await.unwrap();
        sock
    }

    async fn ask_udp(s: &Setup, msg: &[u8]) -> Option<Vec<u8>> {
        let sock = client(s).await;
        sock.send(msg).await.unwrap();
        let mut buf = vec![0u8; 65535];
        let n = timeout(Duration::from_millis(3000), sock.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        buf.truncate(n);
        Some(buf)
    }

    async fn ask_tcp(stream: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
        stream
            .write_all(&(msg.len() as u16).to_be_bytes())
            .await
            .unwrap();
        stream.write_all(msg).await.unwrap();
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.unwrap();
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    }

    fn answer_addrs(m: &[u8]) -> Vec<Ipv4Addr> {
        let q = wire::parse_query(&{
            // Re-read our own answer with the response parser: rebuild the query it answers.
            let mut qm = m[..12].to_vec();
            qm[2] &= 0x7F;
            qm[6..12].fill(0);
            let end = 12 + m[12..].iter().position(|&b| b == 0).unwrap() + 5;
            qm.extend_from_slice(&m[12..end]);
            qm
        })
        .unwrap();
        let r = wire::parse_response(m, q.id, &q).unwrap();
        r.answers
            .iter()
            .filter(|r| r.rtype == wire::TYPE_A)
            .map(|r| Ipv4Addr::new(m[r.rdata], m[r.rdata + 1], m[r.rdata + 2], m[r.rdata + 3]))
            .collect()
    }

    #[tokio::test]
    async fn allowed_a_query_is_relayed_after_learning() {
        let s = setup(true).await;
        let reply = ask_udp(&s, &query(0x1234, "Allowed.Test", wire::TYPE_A, false))
            .await
            .unwrap();
        assert_eq!(&reply[..2], &[0x12, 0x34]);
        assert_eq!(rcode(&reply), 0);
        assert_eq!(
            answer_addrs(&reply),
            [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]
        );
        // `learned` had finished (its 50 ms included) when the answer arrived.
        let learned = s.learned.lock().unwrap().clone();
        assert_eq!(
            learned,
            [(
                Ipv4Addr::LOCALHOST,
                "allowed.test".to_string(),
                vec![
                    (Ipv4Addr::new(10, 0, 0, 1), 60),
                    (Ipv4Addr::new(10, 0, 0, 2), 60)
                ]
            )]
        );
        assert_eq!(s.upstream.udp.load(Ordering::SeqCst), 1);
        // With EDNS too.
        let reply = ask_udp(&s, &query(9, "x.wild.test", wire::TYPE_A, true))
            .await
            .unwrap();
        assert_eq!(rcode(&reply), 0);
        assert_eq!(ancount(&reply), 0);
    }

    #[tokio::test]
    async fn denied_names_are_refused_without_asking_upstream() {
        let s = setup(true).await;
        for (i, name) in [
            "denied.test",
            "bad.wild.test",
            "wild.test",
            "localhost",
            "4.3.2.1.in-addr.arpa",
            "a.ip6.arpa",
        ]
        .iter()
        .enumerate()
        {
            let reply = ask_udp(&s, &query(i as u16, name, wire::TYPE_A, false))
                .await
                .unwrap();
            assert_eq!(&reply[..2], &(i as u16).to_be_bytes());
            assert_eq!(rcode(&reply), wire::RCODE_REFUSED, "{name}");
        }
        // Other types and a zone transfer of an allowed name.
        let reply = ask_udp(&s, &query(1, "allowed.test", wire::TYPE_AXFR, false))
            .await
            .unwrap();
        assert_eq!(rcode(&reply), wire::RCODE_REFUSED);
        assert_eq!(
            s.upstream.udp.load(Ordering::SeqCst) + s.upstream.tcp.load(Ordering::SeqCst),
            0
        );
        assert!(s.learned.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn aaaa_is_answered_empty_locally() {
        let s = setup(true).await;
        let reply = ask_udp(&s, &query(3, "allowed.test", wire::TYPE_AAAA, true))
            .await
            .unwrap();
        assert_eq!(&reply[..2], &[0, 3]);
        assert_eq!(rcode(&reply), 0);
        assert_eq!(ancount(&reply), 0);
        assert_eq!(s.upstream.udp.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn cname_chains() {
        let s = setup(true).await;
        let reply = ask_udp(&s, &query(4, "alias.test", wire::TYPE_A, false))
            .await
            .unwrap();
        assert_eq!(rcode(&reply), 0);
        assert_eq!(
            s.learned.lock().unwrap().clone(),
            [(
                Ipv4Addr::LOCALHOST,
                "alias.test".to_string(),
                vec![(Ipv4Addr::new(10, 0, 0, 1), 60)]
            )]
        );
        let reply = ask_udp(&s, &query(5, "badalias.test", wire::TYPE_A, false))
            .await
            .unwrap();
        assert_eq!(&reply[..2], &[0, 5]);
        assert_eq!(rcode(&reply), wire::RCODE_REFUSED);
        assert_eq!(ancount(&reply), 0);
        assert!(s.upstream.asked("badalias.test"));
        assert_eq!(s.learned.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn truncated_upstream_answer_is_asked_again_over_tcp() {
        let s = setup(true).await;
        let reply = ask_udp(&s, &query(6, "tc.test", wire::TYPE_A, false))
            .await
            .unwrap();
        assert_eq!(rcode(&reply), 0);
        assert_eq!(reply[2] & 0x02, 0, "relayed answer is not truncated");
        assert_eq!(answer_addrs(&reply), [Ipv4Addr::new(10, 0, 0, 3)]);
        assert_eq!(s.upstream.udp.load(Ordering::SeqCst), 1);
        assert_eq!(s.upstream.tcp.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn tcp_queries_several_per_connection() {
        let s = setup(true).await;
        let mut stream = TcpStream::connect(("127.0.0.1", s.proxy.port()))
            .await
            .unwrap();
        let reply = ask_tcp(&mut stream, &query(7, "allowed.test", wire::TYPE_A, false)).await;
        assert_eq!(&reply[..2], &[0, 7]);
        assert_eq!(answer_addrs(&reply).len(), 2);
        // The box asked over TCP, so upstream was asked over TCP.
        assert_eq!(s.upstream.tcp.load(Ordering::SeqCst), 1);
        assert_eq!(s.upstream.udp.load(Ordering::SeqCst), 0);
        let reply = ask_tcp(&mut stream, &query(8, "denied.test", wire::TYPE_A, false)).await;
        assert_eq!(rcode(&reply), wire::RCODE_REFUSED);
        let mut bad = query(9, "allowed.test", wire::TYPE_A, false);
        bad[5] = 0;
        let reply = ask_tcp(&mut stream, &bad).await;
        assert_eq!(&reply[..2], &[0, 9]);
        assert_eq!(rcode(&reply), wire::RCODE_FORMERR);
        // A message over the limit closes the connection.
        stream.write_all(&5000u16.to_be_bytes()).await.unwrap();
        let mut b = [0u8; 1];
        assert_eq!(
            timeout(Duration::from_secs(2), stream.read(&mut b))
                .await
                .unwrap()
                .unwrap(),
            0
        );
    }

    #[tokio::test]
    async fn unknown_sources_get_no_answer() {
        let s = setup(false).await;
        let sock = client(&s).await;
        sock.send(&query(1, "allowed.test", wire::TYPE_A, false))
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        assert!(timeout(Duration::from_millis(300), sock.recv(&mut buf))
            .await
            .is_err());
        let mut stream = TcpStream::connect(("127.0.0.1", s.proxy.port()))
            .await
            .unwrap();
        let mut b = [0u8; 1];
        assert_eq!(
            timeout(Duration::from_secs(2), stream.read(&mut b))
                .await
                .unwrap()
                .unwrap_or(0),
            0
        );
        assert_eq!(s.upstream.udp.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn garbage_is_survived() {
        let s = setup(true).await;
        let sock = client(&s).await;
        let mut rng = Rng(42);
        let valid = query(1, "allowed.test", wire::TYPE_A, true);
        for i in 0..500 {
            let m: Vec<u8> = match i % 3 {
                0 => (0..rng.below(100)).map(|_| rng.next() as u8).collect(),
                1 => valid[..rng.below(valid.len())].to_vec(),
                _ => {
                    let mut m = valid.clone();
                    let at = 12 + rng.below(m.len() - 12);
                    m[at] = rng.next() as u8;
                    m
                }
            };
            sock.send(&m).await.unwrap();
        }
        // Over 4096 bytes: dropped.
        sock.send(&vec![0u8; 5000]).await.unwrap();
        // A malformed query with a readable header gets FORMERR.
        let mut two = query(0x0A0B, "allowed.test", 1, false);
        two[5] = 2;
        let reply = ask_udp(&s, &two).await.unwrap();
        assert_eq!(&reply[..2], &[0x0A, 0x0B]);
        assert_eq!(rcode(&reply), wire::RCODE_FORMERR);
        let reply = ask_udp(&s, &query(0x4242, "allowed.test", wire::TYPE_A, false))
            .await
            .unwrap();
        assert_eq!(&reply[..2], &[0x42, 0x42]);
        assert_eq!(answer_addrs(&reply).len(), 2);
    }

    #[tokio::test]
    async fn in_flight_queries_are_capped_per_box() {
        let s = setup(true).await;
        let sock = client(&s).await;
        for id in 0..(MAX_IN_FLIGHT as u16 + 6) {
            sock.send(&query(id, "slow.test", wire::TYPE_A, false))
                .await
                .unwrap();
        }
        let mut buf = vec![0u8; 4096];
        let (mut ok, mut servfail) = (0, 0);
        while ok + servfail < MAX_IN_FLIGHT + 6 {
            let n = timeout(Duration::from_secs(5), sock.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            match rcode(&buf[..n]) {
                0 => ok += 1,
                2 => servfail += 1,
                r => panic!("rcode {r}"),
            }
        }
        assert_eq!((ok, servfail), (MAX_IN_FLIGHT, 6));
    }

    #[tokio::test]
    async fn shutdown_stops_answering() {
        let s = setup(true).await;
        assert!(ask_udp(&s, &query(1, "denied.test", wire::TYPE_A, false))
            .await
            .is_some());
        s.proxy.shutdown();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sock = client(&s).await;
        sock.send(&query(2, "denied.test", wire::TYPE_A, false))
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let got = timeout(Duration::from_millis(300), sock.recv(&mut buf)).await;
        assert!(!matches!(got, Ok(Ok(_))));
    }
}
