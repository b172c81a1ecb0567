//! The nftables rules of the boxes' egress, as `nft` scripts, and running them.
//!
//! One table per deployment, `inet faas_<tag>`:
//!
//! - `prerouting` (nat): a box's DNS, to any address, goes to the platform's proxy;
//! - `input`: from a box, only that redirected DNS reaches the host (not its addresses, not
//!   loopback, not the API); the proxy's port is for boxes only;
//! - `forward`: to a box, only replies; from a box, `from_box`: out of the egress interface
//!   only, never to the always-denied ranges, within its rate and connection limits, then its
//!   own chain (`custom` maps its address to `b<N>`), or, for plain internet, the shared rule:
//!   anything but the private ranges;
//! - `postrouting` (nat): masquerade out of the egress interface.
//!
//! A box with rules of its own has a chain `b<N>` and sets `a<N>` (addresses its DNS answers
//! allowed, with their time to live) and `d<N>`; each `nft -f` script is one transaction.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::policy::{Cidr, EgressPolicy, PRIVATE};
use crate::error::{Error, Result};

/// Always denied: "this network", loopback, link-local and metadata, multicast and reserved
/// (with broadcast); the sandbox subnet is added.
const ALWAYS_DENIED: &[&str] = &["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3"];

/// How long a resolved address stays allowed at least, and at most (seconds).
const LEARN_MIN_S: u32 = 600;
const LEARN_MAX_S: u32 = 86_400;

pub(super) struct Base<'a> {
    pub table: &'a str,
    pub prefix: &'a str,
    pub egress: &'a str,
    pub subnet: Cidr,
    pub dns_port: u16,
    pub max_connections: u32,
    pub rate_kib: u32,
}

/// The whole table, replacing any earlier one.
pub(super) fn base(b: &Base<'_>) -> String {
    let Base {
        table,
        prefix,
        egress,
        subnet,
        dns_port,
        ..
    } = b;
    let denied = ALWAYS_DENIED
        .iter()
        .map(|s| s.to_string())
        .chain([subnet.to_string()])
        .collect::<Vec<_>>()
        .join(", ");
    let private = PRIVATE.join(", ");
    let rate = match b.rate_kib {
        0 => String::new(),
        r => format!(
            "    update @bw {{ ip saddr limit rate over {r} kbytes/second burst {} kbytes }} drop\n",
            (r / 4).max(64)
        ),
    };
    let conns = match b.max_connections {
        0 => String::new(),
        c => format!("    ct state new add @conns {{ ip saddr ct count over {c} }} reject\n"),
    };
    format!(
        "table inet {table} {{}}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \x20 set always_denied {{ type ipv4_addr; flags interval; elements = {{ {denied} }}; }}\n\
         \x20 set private {{ type ipv4_addr; flags interval; elements = {{ {private} }}; }}\n\
         \x20 set internet {{ type ipv4_addr; }}\n\
         \x20 map custom {{ type ipv4_addr : verdict; }}\n\
         \x20 set conns {{ type ipv4_addr; size 65535; flags dynamic; }}\n\
         \x20 set bw {{ type ipv4_addr; size 65535; flags dynamic,timeout; timeout 60s; }}\n\
         \x20 chain prerouting {{\n\
         \x20   type nat hook prerouting priority dstnat; policy accept;\n\
         \x20   iifname \"{prefix}*\" meta l4proto {{ tcp, udp }} th dport 53 redirect to :{dns_port}\n\
         \x20 }}\n\
         \x20 chain input {{\n\
         \x20   type filter hook input priority filter; policy accept;\n\
         \x20   iifname \"{prefix}*\" ct status dnat meta l4proto {{ tcp, udp }} th dport {dns_port} accept\n\
         \x20   iifname \"{prefix}*\" drop\n\
         \x20   meta l4proto {{ tcp, udp }} th dport {dns_port} drop\n\
         \x20 }}\n\
         \x20 chain forward {{\n\
         \x20   type filter hook forward priority filter; policy accept;\n\
         \x20   oifname \"{prefix}*\" ct state established,related accept\n\
         \x20   oifname \"{prefix}*\" drop\n\
         \x20   iifname \"{prefix}*\" jump from_box\n\
         \x20 }}\n\
         \x20 chain from_box {{\n\
         \x20   oifname != \"{egress}\" drop\n\
         \x20   meta nfproto ipv6 drop\n\
         \x20   ip daddr @always_denied drop\n\
         {rate}\
         \x20   ct state established,related accept\n\
         {conns}\
         \x20   ip saddr vmap @custom\n\
         \x20   ip saddr != @internet drop\n\
         \x20   ip daddr @private drop\n\
         \x20   accept\n\
         \x20 }}\n\
         \x20 chain postrouting {{\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   ip saddr {subnet} oifname \"{egress}\" masquerade\n\
         \x20 }}\n\
         }}\n"
    )
}

fn elements(c: &[Cidr]) -> String {
    c.iter().map(Cidr::to_string).collect::<Vec<_>>().join(", ")
}

/// Puts box `n` (address `ip`) under its rules: the shared internet rule, or a chain of its own.
pub(super) fn classify(table: &str, n: u32, ip: Ipv4Addr, p: &EgressPolicy) -> String {
    if p.is_plain() {
        return format!("add element inet {table} internet {{ {ip} }}\n");
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "add set inet {table} a{n} {{ type ipv4_addr; flags timeout; }}"
    );
    let _ = writeln!(s, "add chain inet {table} b{n}");
    let rule = |s: &mut String, r: &str| {
        let _ = writeln!(s, "add rule inet {table} b{n} {r}");
    };
    if !p.deny_cidrs.is_empty() {
        rule(
            &mut s,
            &format!("ip daddr {{ {} }} drop", elements(&p.deny_cidrs)),
        );
    }
    if !p.private {
        rule(&mut s, "ip daddr @private drop");
    }
    if p.default_allow {
        rule(&mut s, "accept");
    } else {
        if !p.allow_cidrs.is_empty() {
            rule(
                &mut s,
                &format!("ip daddr {{ {} }} accept", elements(&p.allow_cidrs)),
            );
        }
        rule(&mut s, &format!("ip daddr @a{n} accept"));
        rule(&mut s, "drop");
    }
    let _ = writeln!(s, "add element inet {table} custom {{ {ip} : jump b{n} }}");
    s
}

/// Takes box `n`'s rules out.
pub(super) fn declassify(table: &str, n: u32, ip: Ipv4Addr, custom: bool) -> String {
    if !custom {
        return format!("delete element inet {table} internet {{ {ip} }}\n");
    }
    format!(
        "delete element inet {table} custom {{ {ip} }}\n\
         delete chain inet {table} b{n}\n\
         delete set inet {table} a{n}\n"
    )
}

/// Allows box `n` the addresses its DNS answer gave, for their time to live (within bounds).
pub(super) fn learn(table: &str, n: u32, addrs: &[(Ipv4Addr, u32)]) -> String {
    let list = addrs
        .iter()
        .map(|(a, ttl)| format!("{a} timeout {}s", (*ttl).clamp(LEARN_MIN_S, LEARN_MAX_S)))
        .collect::<Vec<_>>()
        .join(", ");
    // An address already there keeps its own timeout (at least LEARN_MIN_S from when it was
    // added); once expired, the next answer adds it again.
    format!("add element inet {table} a{n} {{ {list} }}\n")
}

/// Runs an `nft` script as one transaction.
pub(super) async fn apply(script: &str) -> Result<()> {
    command("nft", &["-f", "-"], Some(script)).await.map(drop)
}

/// Runs `nft ARGS`; its output.
pub(super) async fn run(args: &[&str]) -> Result<String> {
    command("nft", args, None).await
}

/// Runs a host tool (through the reaper's registry), with `input` on its stdin; its stdout,
/// or an error with its stderr.
pub(super) async fn command(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let what = format!("{program} {}", args.join(" "));
    let out = tokio::time::timeout(Duration::from_secs(10), async {
        let (mut child, _guard) = crate::sandbox::reaper::spawn(&mut cmd)?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(text.as_bytes()).await?;
        }
        child.wait_with_output().await
    })
    .await
    .map_err(|_| Error::Internal(format!("{what}: no answer in 10 s")))?
    .map_err(|e| Error::io(format!("run {program}"), e))?;
    if !out.status.success() {
        return Err(Error::Internal(format!(
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            input
                .map(|i| format!(" (input: {})", i.trim()))
                .unwrap_or_default()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
