//! Egress for boxes that ask for a network (`network: "internet"` or rules).
//!
//! A networked box gets a veth pair: `eth0` in its network namespace, with the second address
//! of its own /30 of the sandbox subnet and a default route to the first, which the host end
//! (`fx<tag><n>`) holds. Its traffic is masqueraded out of the egress interface. Everything
//! that decides what a box reaches is on the host, in one nftables table of this deployment
//! (`inet faas_<tag>`, see [`nft`]), where the box cannot change it:
//!
//! - the host itself (every local address, so also loopback and the API port), other boxes,
//!   link-local and metadata addresses, multicast and the sandbox subnet are always denied;
//!   the private ranges too, unless an admin allowed them for the tenant;
//! - DNS (any port 53 the box sends to) is redirected to the platform's [`dns`] proxy, which
//!   answers only names the box's rules permit and, for a box that may reach only some
//!   domains, adds the addresses it answered to that box's allowed set before the box gets
//!   them: connecting to an address the box was not given is dropped;
//! - new connections per box and the box's egress rate are limited.
//!
//! A box's rules go with it (`BoxNet::release`); the veth goes with its network namespace.
//! At start, the table and every `fx<tag>*` link a killed earlier run left are removed.

pub mod dns;
mod nft;
mod policy;

pub use policy::{Cidr, EgressPolicy, MAX_RULES, PRIVATE};

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use futures::future::BoxFuture;

use crate::error::{Error, Result};

/// How the platform's networking is set up.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Identifies this deployment in link, table and chain names (a few hex digits).
    pub tag: String,
    /// Boxes' addresses come from here, a /30 each (the first /30 is the platform's).
    pub subnet: Cidr,
    /// Where boxes' traffic leaves the host; the default route's interface when `None`.
    pub egress_interface: Option<String>,
    /// The resolver the DNS proxy asks; the host's first `nameserver` when `None`.
    pub dns_upstream: Option<SocketAddr>,
    /// New connections a box may have open at once.
    pub max_connections: u32,
    /// A box's egress rate, KiB/s (0: unlimited).
    pub rate_kib: u32,
    /// Where the platform keeps its network files (the boxes' `resolv.conf`).
    pub dir: PathBuf,
}

/// The platform's networking: one per server, shared by the backends.
pub struct Net {
    cfg: NetConfig,
    egress: String,
    table: String,
    /// Host ends of the veths are `<prefix><n>`.
    prefix: String,
    boxes: Arc<Registry>,
    alloc: Mutex<Alloc>,
    dns: Arc<dns::DnsProxy>,
    resolv: PathBuf,
}

/// The boxes the DNS proxy answers, by address.
struct Registry {
    table: String,
    boxes: RwLock<HashMap<Ipv4Addr, Arc<Entry>>>,
}

struct Entry {
    n: u32,
    domains: Arc<dns::DomainPolicy>,
    /// Only a box that may reach nothing but what it lists learns addresses.
    learns: bool,
}

struct Alloc {
    used: HashSet<u32>,
    next: u32,
    capacity: u32,
}

impl Net {
    /// Removes what a killed earlier run left, installs the table and starts the DNS proxy.
    pub async fn start(cfg: NetConfig) -> Result<Arc<Net>> {
        if cfg.subnet.prefix > 28 || cfg.subnet.prefix < 8 {
            return Err(Error::InvalidRequest(format!(
                "the sandbox subnet {} must be a /8 to /28",
                cfg.subnet
            )));
        }
        let egress = match &cfg.egress_interface {
            Some(i) => i.clone(),
            None => default_route_interface().ok_or_else(|| {
                Error::Unsupported("no default route: give --egress-interface".into())
            })?,
        };
        if !Path::new("/sys/class/net").join(&egress).exists() {
            return Err(Error::Unsupported(format!(
                "the egress interface {egress:?} does not exist"
            )));
        }
        let upstream = match cfg.dns_upstream {
            Some(u) => u,
            None => host_resolver().ok_or_else(|| {
                Error::Unsupported("no nameserver in /etc/resolv.conf: give --dns-upstream".into())
            })?,
        };
        let table = format!("faas_{}", cfg.tag);
        let prefix = format!("fx{}", cfg.tag);
        remove_leftovers(&table, &prefix).await;
        if let Some((dev, net)) = overlapping_route(&cfg.subnet) {
            return Err(Error::Conflict(format!(
                "the sandbox subnet {} overlaps the route to {net} on {dev} (another server or network uses it): give --sandbox-subnet",
                cfg.subnet
            )));
        }
        std::fs::create_dir_all(&cfg.dir).map_err(|e| Error::io("create the network dir", e))?;
        let dns_ip = host_ip(&cfg.subnet, 0);
        let resolv = cfg.dir.join("resolv.conf");
        std::fs::write(&resolv, format!("nameserver {dns_ip}\noptions ndots:0\n"))
            .map_err(|e| Error::io("write resolv.conf", e))?;
        // Forwarding is what routing the boxes' traffic is; Docker turns it on too.
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
        let boxes = Arc::new(Registry {
            table: table.clone(),
            boxes: RwLock::new(HashMap::new()),
        });
        let dns = dns::DnsProxy::start(
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            upstream,
            boxes.clone(),
        )
        .await
        .map_err(|e| Error::io("start the DNS proxy", e))?;
        let rules = nft::base(&nft::Base {
            table: &table,
            prefix: &prefix,
            egress: &egress,
            subnet: cfg.subnet,
            dns_port: dns.port(),
            max_connections: cfg.max_connections,
            rate_kib: cfg.rate_kib,
        });
        if let Err(e) = nft::apply(&rules).await {
            dns.shutdown();
            return Err(e);
        }
        let capacity = 1u32 << (32 - cfg.subnet.prefix - 2);
        let net = Net {
            egress,
            table,
            prefix,
            boxes,
            alloc: Mutex::new(Alloc {
                used: HashSet::new(),
                next: 1,
                capacity,
            }),
            dns,
            resolv,
            cfg,
        };
        net.open_foreign_forward().await;
        tracing::info!(egress = %net.egress, subnet = %net.cfg.subnet, dns = %upstream, table = %net.table, "sandbox networking ready");
        Ok(Arc::new(net))
    }

    /// For `/health`.
    pub fn describe(&self) -> String {
        format!(
            "egress via {}, boxes in {}, table inet {}",
            self.egress, self.cfg.subnet, self.table
        )
    }

    /// The file every networked box has at `/etc/resolv.conf` (read-only).
    pub fn resolv_conf(&self) -> &Path {
        &self.resolv
    }

    /// Gives the network namespace at `ns` (a namespace file, or `/proc/<pid>/ns/net`) its
    /// veth, addresses and route, and the box its rules. The box may use the network once
    /// this returns.
    pub async fn attach(self: &Arc<Self>, ns: &Path, policy: Arc<EgressPolicy>) -> Result<BoxNet> {
        let domains = Arc::new(policy.domains().map_err(Error::InvalidRequest)?);
        let n = self.allocate()?;
        let b = BoxNet {
            net: self.clone(),
            n,
            ip: box_ip(&self.cfg.subnet, n),
            link: format!("{}{n}", self.prefix),
            custom: !policy.is_plain(),
            released: std::sync::atomic::AtomicBool::new(false),
        };
        let made = async {
            plumb(ns, &b.link, host_ip(&self.cfg.subnet, n), b.ip).await?;
            self.boxes
                .boxes
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    b.ip,
                    Arc::new(Entry {
                        n,
                        learns: !policy.default_allow,
                        domains,
                    }),
                );
            nft::apply(&nft::classify(&self.table, n, b.ip, &policy)).await
        }
        .await;
        if let Err(e) = made {
            b.release().await;
            return Err(e);
        }
        Ok(b)
    }

    fn allocate(&self) -> Result<u32> {
        let mut a = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        if a.used.len() as u32 + 1 >= a.capacity {
            return Err(Error::BackendUnavailable(format!(
                "the sandbox subnet {} has no address left",
                self.cfg.subnet
            )));
        }
        // Round robin: an address is not given again at once (its old connections' state
        // in conntrack goes first).
        loop {
            let n = a.next;
            a.next = if n + 1 >= a.capacity { 1 } else { n + 1 };
            if a.used.insert(n) {
                return Ok(n);
            }
        }
    }

    fn free(&self, n: u32) {
        self.alloc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .used
            .remove(&n);
    }

    /// Boxes with a network now.
    pub fn attached(&self) -> usize {
        self.alloc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .used
            .len()
    }

    /// When another table's forward chain drops by default (Docker's `ip filter FORWARD`), a
    /// packet it does not accept is dropped whatever our table says: accept the boxes' links
    /// there (our own chain still decides), and take the rules out at shutdown.
    async fn open_foreign_forward(&self) {
        let Ok(listed) = nft::run(&["list", "chain", "ip", "filter", "FORWARD"]).await else {
            return;
        };
        if !listed.contains("policy drop") {
            return;
        }
        let comment = format!("\"{}\"", self.table);
        for dir in ["iifname", "oifname"] {
            let rule = format!(
                "insert rule ip filter FORWARD {dir} \"{}*\" accept comment {comment}\n",
                self.prefix
            );
            if let Err(e) = nft::apply(&rule).await {
                tracing::warn!(error = %e.chain(), "could not accept the boxes' links in ip filter FORWARD (policy drop): boxes get no egress");
            }
        }
    }

    /// Removes the table, the links and the foreign rules; every box must be gone.
    pub async fn shutdown(&self) {
        self.dns.shutdown();
        remove_leftovers(&self.table, &self.prefix).await;
    }
}

/// A box's network: its address and rules. [`BoxNet::release`] takes them away.
pub struct BoxNet {
    net: Arc<Net>,
    n: u32,
    ip: Ipv4Addr,
    link: String,
    custom: bool,
    released: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Net({})", self.describe())
    }
}

impl std::fmt::Debug for BoxNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BoxNet({} on {})", self.ip, self.link)
    }
}

impl BoxNet {
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Takes the box's rules out, removes its veth and frees its address. Once only.
    pub async fn release(&self) {
        if self
            .released
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let net = &self.net;
        net.boxes
            .boxes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.ip);
        if let Err(e) = nft::apply(&nft::declassify(&net.table, self.n, self.ip, self.custom)).await
        {
            tracing::warn!(box_ip = %self.ip, error = %e.chain(), "could not remove a box's rules");
        }
        // Usually gone with the box's namespace already.
        if Path::new("/sys/class/net").join(&self.link).exists() {
            let _ = nft::command("ip", &["link", "del", &self.link], None).await;
        }
        net.free(self.n);
    }
}

impl dns::BoxResolver for Registry {
    fn policy(&self, source: Ipv4Addr) -> Option<Arc<dns::DomainPolicy>> {
        self.boxes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&source)
            .map(|e| e.domains.clone())
    }

    fn learned(
        &self,
        source: Ipv4Addr,
        _name: &str,
        addrs: &[(Ipv4Addr, u32)],
    ) -> BoxFuture<'static, ()> {
        let entry = self
            .boxes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&source)
            .cloned();
        let (table, addrs) = (self.table.clone(), addrs.to_vec());
        Box::pin(async move {
            let Some(e) = entry.filter(|e| e.learns && !addrs.is_empty()) else {
                return;
            };
            if let Err(err) = nft::apply(&nft::learn(&table, e.n, &addrs)).await {
                tracing::warn!(box_ip = %source, error = %err.chain(), "could not allow a box's resolved addresses");
            }
        })
    }
}

/// The host end's address of /30 number `n`.
fn host_ip(subnet: &Cidr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 4 * n + 1)
}

fn box_ip(subnet: &Cidr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 4 * n + 2)
}

/// The veth: made inside the namespace (`eth0`, its address, `lo` up, the default route),
/// its peer sent to the host's namespace, then given its address there.
async fn plumb(ns: &Path, link: &str, host: Ipv4Addr, guest: Ipv4Addr) -> Result<()> {
    let inside = format!(
        "link add eth0 type veth peer name {link} netns {pid}\n\
         addr add {guest}/30 dev eth0\n\
         link set lo up\n\
         link set eth0 up\n\
         route add default via {host}\n",
        pid = std::process::id()
    );
    let ns_arg = format!("--net={}", ns.display());
    nft::command("nsenter", &[&ns_arg, "ip", "-batch", "-"], Some(&inside)).await?;
    // A box cannot send as another's address.
    let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{link}/rp_filter"), "1");
    let outside = format!("addr add {host}/30 dev {link}\nlink set {link} up\n");
    nft::command("ip", &["-batch", "-"], Some(&outside)).await?;
    Ok(())
}

/// The links, the foreign accept rules and the table of this deployment, whatever is left:
/// the links first, so no box is ever connected without its rules.
async fn remove_leftovers(table: &str, prefix: &str) {
    let links: Vec<String> = std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    if !links.is_empty() {
        let script: String = links.iter().map(|l| format!("link del {l}\n")).collect();
        let _ = nft::command("ip", &["-force", "-batch", "-"], Some(&script)).await;
    }
    if let Ok(listed) = nft::run(&["-a", "list", "chain", "ip", "filter", "FORWARD"]).await {
        let tag = format!("comment \"{table}\"");
        for line in listed.lines().filter(|l| l.contains(&tag)) {
            if let Some(h) = line
                .rsplit("# handle ")
                .next()
                .map(str::trim)
                .filter(|h| h.parse::<u64>().is_ok())
            {
                let _ = nft::run(&["delete", "rule", "ip", "filter", "FORWARD", "handle", h]).await;
            }
        }
    }
    let _ = nft::run(&["delete", "table", "inet", table]).await;
}

/// A route of the host (not the default one) into `subnet`'s addresses, or from a network
/// that holds them: its device and network.
fn overlapping_route(subnet: &Cidr) -> Option<(String, Cidr)> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::from_be);
        let (dst, mask) = (hex(f.get(1)?)?, hex(f.get(7)?)?);
        if mask == 0 {
            return None;
        }
        let prefix = mask.count_ones() as u8;
        let route = Cidr {
            addr: Ipv4Addr::from(dst),
            prefix,
        };
        let overlaps = route.contains(subnet.network()) || subnet.contains(route.network());
        overlaps.then(|| (f[0].to_string(), route))
    })
}

/// The interface of the host's IPv4 default route.
fn default_route_interface() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
    })
}

/// The host's first nameserver.
fn host_resolver() -> Option<SocketAddr> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    conf.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("nameserver"))
            .then(|| w.next())
            .flatten()
            .and_then(|a| a.parse::<std::net::IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_a_box() {
        let s = Cidr::parse("10.211.0.0/16").unwrap();
        assert_eq!(host_ip(&s, 0).to_string(), "10.211.0.1");
        assert_eq!(host_ip(&s, 1).to_string(), "10.211.0.5");
        assert_eq!(box_ip(&s, 1).to_string(), "10.211.0.6");
        assert_eq!(box_ip(&s, 64).to_string(), "10.211.1.2");
    }
}
