//! What a box may reach: its egress rules, parsed from a request and checked.

use std::net::Ipv4Addr;

use super::dns;

/// An IPv4 network: `a.b.c.d/n` (or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> std::result::Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 address or CIDR (IPv6 is not offered)"))?;
        let prefix = match p {
            None => 32,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= 32)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0-32"))?,
        };
        let c = Cidr { addr, prefix };
        if c.network() != addr {
            return Err(format!(
                "{s:?} has host bits set (did you mean {}/{prefix}?)",
                c.network()
            ));
        }
        Ok(c)
    }

    fn mask(&self) -> u32 {
        match self.prefix {
            0 => 0,
            p => u32::MAX << (32 - p),
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The private ranges, denied unless the tenant may reach them.
pub const PRIVATE: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
];

/// What one box may reach. `internet` is allow-all with nothing listed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EgressPolicy {
    /// `egress: "allow"`: everything but `deny`; `"deny"`: nothing but `allow`.
    pub default_allow: bool,
    pub allow_cidrs: Vec<Cidr>,
    pub deny_cidrs: Vec<Cidr>,
    /// Domain patterns (`example.com`, `*.example.com`), checked.
    pub allow_domains: Vec<String>,
    pub deny_domains: Vec<String>,
    /// The tenant may reach the private ranges.
    pub private: bool,
}

/// Most entries a box's rules may list.
pub const MAX_RULES: usize = 256;

impl EgressPolicy {
    pub fn internet() -> EgressPolicy {
        EgressPolicy {
            default_allow: true,
            allow_cidrs: Vec::new(),
            deny_cidrs: Vec::new(),
            allow_domains: Vec::new(),
            deny_domains: Vec::new(),
            private: false,
        }
    }

    /// Rules from a request: each entry a CIDR, an IPv4 address or a domain pattern.
    pub fn rules(
        default_allow: bool,
        allow: &[String],
        deny: &[String],
    ) -> std::result::Result<EgressPolicy, String> {
        if allow.len() + deny.len() > MAX_RULES {
            return Err(format!("at most {MAX_RULES} allow and deny entries"));
        }
        let mut p = EgressPolicy {
            default_allow,
            ..EgressPolicy::internet()
        };
        for (list, cidrs, domains) in [
            (allow, &mut p.allow_cidrs, &mut p.allow_domains),
            (deny, &mut p.deny_cidrs, &mut p.deny_domains),
        ] {
            for e in list {
                let e = e.trim();
                let looks_ip = e.contains(':')
                    || e.split('/')
                        .next()
                        .is_some_and(|a| a.chars().all(|c| c.is_ascii_digit() || c == '.'));
                if looks_ip {
                    cidrs.push(Cidr::parse(e)?);
                } else {
                    domains.push(dns::check_domain_pattern(e)?);
                }
            }
        }
        Ok(p)
    }

    /// The same rules for a tenant that may reach the private ranges.
    pub fn with_private(mut self, private: bool) -> EgressPolicy {
        self.private = private;
        self
    }

    /// Plain internet: served by the shared rules, with no chain of its own.
    pub fn is_plain(&self) -> bool {
        *self == EgressPolicy::internet()
    }

    pub(super) fn domains(&self) -> std::result::Result<dns::DomainPolicy, String> {
        dns::DomainPolicy::new(self.default_allow, &self.allow_domains, &self.deny_domains)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_strictly() {
        assert_eq!(
            Cidr::parse("10.1.0.0/16").unwrap().to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(Cidr::parse("1.2.3.4").unwrap().prefix, 32);
        for bad in [
            "10.1.0.1/16",
            "1.2.3.4/33",
            "1.2.3",
            "::1",
            "fe80::/10",
            "a/8",
            "1.2.3.4/",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        let c = Cidr::parse("10.211.0.0/16").unwrap();
        assert!(c.contains("10.211.255.2".parse().unwrap()));
        assert!(!c.contains("10.212.0.2".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn rules_sort_entries_and_refuse_bad_ones() {
        let p = EgressPolicy::rules(
            false,
            &[
                "example.com".into(),
                "203.0.113.0/24".into(),
                "*.test.org".into(),
            ],
            &["198.51.100.7".into()],
        )
        .unwrap();
        assert_eq!(p.allow_domains, ["example.com", "*.test.org"]);
        assert_eq!(p.allow_cidrs.len(), 1);
        assert_eq!(p.deny_cidrs[0].prefix, 32);
        assert!(!p.is_plain());
        assert!(EgressPolicy::internet().is_plain());
        assert!(!EgressPolicy::internet().with_private(true).is_plain());
        for bad in ["2001:db8::/32", "10.0.0.1/8", "exa mple.com", "*", ""] {
            assert!(
                EgressPolicy::rules(true, &[bad.into()], &[]).is_err(),
                "{bad}"
            );
        }
        let many = vec!["1.2.3.4".to_string(); MAX_RULES + 1];
        assert!(EgressPolicy::rules(true, &many, &[]).is_err());
    }
}
