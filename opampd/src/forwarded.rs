//! The client's address behind a load balancer: `X-Forwarded-For` is
//! believed only from the peers listed in `http.trusted_proxies`, and then
//! only up to the first address that is not itself a trusted proxy, so a
//! client cannot choose its own address by sending the header.

use http::HeaderMap;
use std::net::{IpAddr, SocketAddr};

/// The addresses and ranges of `http.trusted_proxies`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    ranges: Vec<(IpAddr, u8)>,
}

impl TrustedProxies {
    /// Parses `http.trusted_proxies` entries: an address (`10.0.0.5`,
    /// `::1`) or a range (`10.0.0.0/8`, `fd00::/8`).
    pub fn parse(entries: &[String]) -> Result<TrustedProxies, String> {
        let mut ranges = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let what = format!("http.trusted_proxies[{i}] {entry:?}");
            let (address, prefix) = match entry.trim().split_once('/') {
                Some((address, prefix)) => (address, Some(prefix)),
                None => (entry.trim(), None),
            };
            let address: IpAddr = address.parse().map_err(|_| {
                format!(
                    "{what} is not an address or range: write it as 10.0.0.5, 10.0.0.0/8 or fd00::/8"
                )
            })?;
            let bits = if address.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => bits,
                Some(p) => p.parse::<u8>().ok().filter(|p| *p <= bits).ok_or_else(|| {
                    format!("{what}: the prefix length must be a number from 0 to {bits}")
                })?,
            };
            ranges.push((address, prefix));
        }
        Ok(TrustedProxies { ranges })
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    fn trusts(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.ranges
            .iter()
            .any(|(range, prefix)| contains(canonical(*range), *prefix, address))
    }

    /// The address a request comes from: `peer`, or, when `peer` is a
    /// trusted proxy, the right-most `X-Forwarded-For` address that is not
    /// one (port 0: a proxy does not say which port its client used).
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if self.is_empty() || !self.trusts(peer.ip()) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for hop in hops.iter().rev() {
            let Some(address) = parse_hop(hop) else {
                // Garbage in the chain: stop believing it here.
                return peer;
            };
            if !self.trusts(address) {
                return SocketAddr::new(address, 0);
            }
        }
        // Every hop is a trusted proxy: the left-most one is the client.
        hops.first()
            .and_then(|hop| parse_hop(hop))
            .map_or(peer, |address| SocketAddr::new(address, 0))
    }
}

/// One `X-Forwarded-For` entry: an address, `[v6]`, or either with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| h.parse().ok())
        })
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack
/// listener reports) compare as IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn contains(range: IpAddr, prefix: u8, address: IpAddr) -> bool {
    match (range, address) {
        (IpAddr::V4(r), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(r) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(r), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(r) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append("x-forwarded-for", v.parse().unwrap());
        }
        map
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        let none = TrustedProxies::default();
        let peer = addr("10.0.0.5:40000");
        assert_eq!(none.client(peer, &headers(&["203.0.113.9"])), peer);
    }

    #[test]
    fn an_untrusted_peer_cannot_choose_its_address() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let peer = addr("192.0.2.1:40000");
        assert_eq!(trusted.client(peer, &headers(&["203.0.113.9"])), peer);
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let trusted = proxies(&["10.0.0.0/8", "fd00::/8"]);
        let peer = addr("10.1.2.3:40000");
        assert_eq!(
            trusted.client(peer, &headers(&["203.0.113.9"])),
            addr("203.0.113.9:0")
        );
        // A client-sent value left of the real client is not believed.
        assert_eq!(
            trusted.client(peer, &headers(&["198.51.100.1, 203.0.113.9"])),
            addr("203.0.113.9:0")
        );
        // Chains of trusted proxies, over several header lines.
        assert_eq!(
            trusted.client(peer, &headers(&["198.51.100.1", "203.0.113.9, 10.9.9.9"])),
            addr("203.0.113.9:0")
        );
        assert_eq!(
            trusted.client(peer, &headers(&["[2001:db8::1]:1234"])),
            addr("[2001:db8::1]:0")
        );
        // No header, or garbage: the peer.
        assert_eq!(trusted.client(peer, &HeaderMap::new()), peer);
        assert_eq!(trusted.client(peer, &headers(&["unknown"])), peer);
        // A dual-stack listener's mapped address is the IPv4 one.
        let mapped = addr("[::ffff:10.1.2.3]:40000");
        assert_eq!(
            trusted.client(mapped, &headers(&["203.0.113.9"])),
            addr("203.0.113.9:0")
        );
    }

    #[test]
    fn bad_entries_are_refused_naming_them() {
        let parse = |s: &str| TrustedProxies::parse(&[s.to_string()]);
        assert!(parse("10.0.0.0/8").is_ok() && parse("::1").is_ok() && parse("0.0.0.0/0").is_ok());
        let err = parse("haproxy").unwrap_err();
        assert!(
            err.contains("http.trusted_proxies[0] \"haproxy\" is not an address"),
            "{err}"
        );
        let err = parse("10.0.0.0/33").unwrap_err();
        assert!(err.contains("from 0 to 32"), "{err}");
    }
}
