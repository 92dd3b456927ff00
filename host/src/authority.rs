//! The host a request's `Host` or `Origin` names, for the guards against a browser turned on a
//! listener: a page elsewhere can point a name of its own at 127.0.0.1 (DNS rebinding), and its
//! requests then carry that name; a name that cannot be pointed anywhere (an address, `localhost`)
//! shows that no page did.

use std::net::IpAddr;

/// The host part of `host[:port]` or `[v6][:port]`.
pub(crate) fn authority_host(authority: &str) -> &str {
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    }
}

/// `localhost`, or a loopback address.
pub(crate) fn is_loopback_name(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An address, or `localhost`: a name no page can make point at this machine.
pub(crate) fn cannot_be_rebound(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_with_and_without_ports() {
        for host in ["localhost", "localhost:7071", "127.0.0.1:7071", "127.1.2.3", "[::1]:7071", "[::1]"] {
            assert!(is_loopback_name(authority_host(host)), "{host}");
        }
        for host in
            ["attacker.example", "attacker.example:7071", "10.0.0.1:7071", "[::2]:1", "", "localhost.evil"]
        {
            assert!(!is_loopback_name(authority_host(host)), "{host}");
        }
    }

    #[test]
    fn only_addresses_and_localhost_cannot_be_rebound() {
        for host in ["localhost:7070", "127.0.0.1:7070", "10.0.0.1:7070", "[::1]:7070", "[2001:db8::1]"] {
            assert!(cannot_be_rebound(authority_host(host)), "{host}");
        }
        for host in ["attacker.example:7070", "switchyard.internal", "localhost.evil:7070", ""] {
            assert!(!cannot_be_rebound(authority_host(host)), "{host}");
        }
    }
}
