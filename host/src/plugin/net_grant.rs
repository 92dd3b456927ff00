//! A plugin instance's network grant: `host:port` addresses that the host
//! resolves, never the plugin. The plugin may connect (TCP) and send (UDP) to
//! the socket addresses they resolved to, and look up their host names
//! through `wasi:sockets/ip-name-lookup`, answered from the host's own
//! resolution: any other name is refused unlooked-up, so a plugin can neither
//! reach other addresses by name nor carry data out in DNS queries.
//!
//! `allow_net` is resolved when the plugin is loaded; a transport's
//! endpoints are resolved again before each connection it opens and each
//! probe ([`NetGrant::refresh`]), so a changed DNS answer is followed.

use super::sandbox::StoreState;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::RwLock;
use std::time::Instant;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, ResourceType};
use wasmtime_wasi::p2::Network;
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddress};
use wasmtime_wasi_io::poll::{DynPollable, Pollable};

/// The `wasi:sockets/ip-name-lookup` interface as the linker names it.
const IP_NAME_LOOKUP: &str = "wasi:sockets/ip-name-lookup@0.2.12";

/// The addresses one plugin instance may reach.
#[derive(Debug, Default)]
pub struct NetGrant {
    /// Each granted `host:port`, with the socket addresses it resolved to
    /// last (none until it is resolved, or when it did not resolve).
    endpoints: RwLock<Vec<(String, Vec<SocketAddr>)>>,
}

impl NetGrant {
    /// A grant of `endpoints` (`host:port`), none resolved yet: nothing is
    /// reachable until [`refresh`](Self::refresh) resolves one.
    pub fn new(endpoints: impl IntoIterator<Item = String>) -> NetGrant {
        let endpoints = endpoints.into_iter().map(|endpoint| (endpoint, Vec::new())).collect();
        NetGrant { endpoints: RwLock::new(endpoints) }
    }

    /// A grant of `endpoints`, each resolved now (blocking); the first that
    /// does not resolve, and why.
    pub fn resolved_now(endpoints: &[String]) -> Result<NetGrant, (String, std::io::Error)> {
        let resolve = |endpoint: &String| match endpoint.to_socket_addrs() {
            Ok(resolved) => Ok((endpoint.clone(), resolved.collect())),
            Err(err) => Err((endpoint.clone(), err)),
        };
        let endpoints = endpoints.iter().map(resolve).collect::<Result<_, _>>()?;
        Ok(NetGrant { endpoints: RwLock::new(endpoints) })
    }

    /// Whether nothing is granted.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Resolve `endpoint` (a granted `host:port`) again, by `deadline`: the
    /// addresses it resolves to replace those it had. Why not, when it does
    /// not resolve in time (what it had stays granted).
    pub async fn refresh(&self, endpoint: &str, deadline: Instant) -> Result<(), String> {
        let lookup = tokio::net::lookup_host(endpoint);
        let resolved = match tokio::time::timeout_at(deadline.into(), lookup).await {
            Ok(Ok(resolved)) => resolved.collect(),
            Ok(Err(err)) => return Err(format!("resolve {endpoint}: {err}")),
            Err(_) => return Err(format!("resolve {endpoint}: no answer by the attempt's deadline")),
        };
        let mut endpoints = self.endpoints.write().unwrap_or_else(|poison| poison.into_inner());
        for (_, addresses) in endpoints.iter_mut().filter(|(granted, _)| granted == endpoint) {
            addresses.clone_from(&resolved);
        }
        Ok(())
    }

    /// Whether `addr` is one a granted endpoint resolved to.
    pub(crate) fn allows(&self, addr: SocketAddr) -> bool {
        self.read().iter().any(|(_, addresses)| addresses.contains(&addr))
    }

    /// What a lookup of `name` answers: an IP address as itself; a granted
    /// endpoint's host name as the addresses it resolved to (its endpoints'
    /// together); any other name is denied.
    fn look_up(&self, name: &str) -> Result<Vec<IpAddr>, ErrorCode> {
        let literal = name.strip_prefix('[').and_then(|name| name.strip_suffix(']')).unwrap_or(name);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let endpoints = self.read();
        let mut named = endpoints.iter().filter(|(endpoint, _)| {
            endpoint.rsplit_once(':').is_some_and(|(host, _)| host.eq_ignore_ascii_case(name))
        });
        let first = named.next().ok_or(ErrorCode::AccessDenied)?;
        let mut ips = Vec::new();
        for address in std::iter::once(first).chain(named).flat_map(|(_, addresses)| addresses) {
            if !ips.contains(&address.ip()) {
                ips.push(address.ip());
            }
        }
        if ips.is_empty() {
            return Err(ErrorCode::NameUnresolvable);
        }
        Ok(ips)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<(String, Vec<SocketAddr>)>> {
        self.endpoints.read().unwrap_or_else(|poison| poison.into_inner())
    }
}

/// The answer to one lookup, handed out one address at a time.
struct LookedUp(std::vec::IntoIter<IpAddr>);

/// Ready at once: the answer is known when the lookup is made. (The
/// signature is the one `#[async_trait]` gives the trait's `async fn ready`.)
impl Pollable for LookedUp {
    fn ready<'life0, 'async_trait>(
        &'life0 mut self,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(std::future::ready(()))
    }
}

/// Shadow `wasi:sockets/ip-name-lookup` (whose own version would ask DNS
/// for any name, or refuse every one) with lookups that the instance's
/// [`NetGrant`] answers.
pub(crate) fn answer_lookups_from_grants(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut lookup = linker.instance(IP_NAME_LOOKUP)?;
    lookup.resource(
        "resolve-address-stream",
        ResourceType::host::<LookedUp>(),
        |mut store: StoreContextMut<'_, StoreState>, rep| {
            store.data_mut().table().delete(Resource::<LookedUp>::new_own(rep))?;
            Ok(())
        },
    )?;
    lookup.func_wrap(
        "resolve-addresses",
        |mut store: StoreContextMut<'_, StoreState>, (network, name): (Resource<Network>, String)| {
            let state = store.data_mut();
            state.table().get(&network)?;
            let answer = match state.net.look_up(&name) {
                Ok(ips) => Ok(state.table().push(LookedUp(ips.into_iter()))?),
                Err(code) => Err(code),
            };
            Ok((answer,))
        },
    )?;
    lookup.func_wrap(
        "[method]resolve-address-stream.resolve-next-address",
        |mut store: StoreContextMut<'_, StoreState>, (stream,): (Resource<LookedUp>,)| {
            let next = store.data_mut().table().get_mut(&stream)?.0.next();
            Ok((Ok::<_, ErrorCode>(next.map(IpAddress::from)),))
        },
    )?;
    lookup.func_wrap(
        "[method]resolve-address-stream.subscribe",
        |mut store: StoreContextMut<'_, StoreState>, (stream,): (Resource<LookedUp>,)| {
            let pollable: Resource<DynPollable> =
                wasmtime_wasi_io::poll::subscribe(store.data_mut().table(), stream)?;
            Ok((pollable,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn grant(endpoints: &[(&str, &[&str])]) -> NetGrant {
        let endpoints = endpoints.iter().map(|(endpoint, addresses)| {
            (endpoint.to_string(), addresses.iter().map(|address| address.parse().unwrap()).collect())
        });
        NetGrant { endpoints: RwLock::new(endpoints.collect()) }
    }

    #[test]
    fn a_granted_name_is_answered_with_what_its_endpoints_resolved_to_and_no_other_name_is() {
        let grant = grant(&[
            ("cache.internal:6379", &["10.0.0.7:6379", "10.0.0.8:6379"]),
            ("CACHE.internal:6380", &["10.0.0.7:6380"]),
            ("queue.internal:4222", &[]),
        ]);
        let ips = |ips: &[&str]| ips.iter().map(|ip| ip.parse().unwrap()).collect::<Vec<IpAddr>>();
        assert_eq!(grant.look_up("cache.internal"), Ok(ips(&["10.0.0.7", "10.0.0.8"])));
        assert_eq!(grant.look_up("queue.internal"), Err(ErrorCode::NameUnresolvable));
        assert_eq!(grant.look_up("secret.attacker.example"), Err(ErrorCode::AccessDenied));
        assert_eq!(grant.look_up("192.0.2.1"), Ok(ips(&["192.0.2.1"])), "an address needs no lookup");
        assert_eq!(grant.look_up("[::1]"), Ok(ips(&["::1"])));
        assert!(grant.allows("10.0.0.8:6379".parse().unwrap()));
        assert!(!grant.allows("10.0.0.8:6380".parse().unwrap()), "the port is granted with the address");
    }

    #[tokio::test]
    async fn a_refresh_replaces_what_the_endpoint_resolved_to() {
        let grant = grant(&[("localhost:7", &["192.0.2.1:7"])]);
        grant.refresh("localhost:7", Instant::now() + Duration::from_secs(5)).await.unwrap();
        assert!(grant.allows("127.0.0.1:7".parse().unwrap()));
        assert!(!grant.allows("192.0.2.1:7".parse().unwrap()), "the old answer is no longer granted");
        let unresolvable = grant.refresh("nowhere.invalid:7", Instant::now() + Duration::from_secs(5)).await;
        assert!(unresolvable.unwrap_err().starts_with("resolve nowhere.invalid:7: "));
    }
}
