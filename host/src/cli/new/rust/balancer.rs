//! {{name}}: a Switchyard load-balancing plugin.
//!
//! Picks the healthy endpoint with the fewest requests in flight (the first
//! of equals); none when no endpoint is healthy.

use switchyard_plugin::{Balancer, Endpoint, Message, export_balancer};

struct Plugin;

/// The index of the healthy endpoint with the fewest requests in flight.
fn least_busy(endpoints: &[Endpoint]) -> Option<u32> {
    let healthy = endpoints.iter().filter(|endpoint| endpoint.healthy);
    healthy.min_by_key(|endpoint| endpoint.in_flight).map(|endpoint| endpoint.index)
}

impl Balancer for Plugin {
    fn pick(_message: &Message<'_>, endpoints: &[Endpoint]) -> Option<u32> {
        least_busy(endpoints)
    }
}

export_balancer!(Plugin);

#[cfg(test)]
mod tests {
    use super::least_busy;
    use switchyard_plugin::Endpoint;

    fn endpoint(index: u32, in_flight: u32, healthy: bool) -> Endpoint {
        let address = format!("10.0.0.{index}:9000");
        Endpoint { index, address, weight: 1, in_flight, latency_micros: 1000, healthy }
    }

    #[test]
    fn the_least_busy_healthy_endpoint_is_picked() {
        let endpoints = [endpoint(0, 5, true), endpoint(1, 0, false), endpoint(2, 2, true)];
        assert_eq!(least_busy(&endpoints), Some(2));
        assert_eq!(least_busy(&[endpoint(0, 0, false)]), None);
    }
}
