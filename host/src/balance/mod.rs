//! Load balancing: choosing the endpoint of a destination a message goes to.
//!
//! The destination core keeps each endpoint's state (weight, requests in flight, a [`PeakEwma`] latency
//! estimate, health and breaker verdicts) and, once per dispatch attempt, hands a [`Balancer`] a snapshot
//! of it as a slice of [`EndpointView`]s. The balancer answers with a position in that slice, always one
//! whose view is `eligible`, or `None` when no endpoint is. Balancers are pure: they never sleep, never
//! read a clock and never block on I/O, so the same views (and seed) give the same answers. The exception
//! is [`PluginBalancer`], which waits, within the plugin's deadline, for a plugin running on a thread of
//! its own; the destination core builds it, as it holds the plugins, and awaits its picks
//! ([`PluginBalancer::pick_async`]) rather than block a runtime thread on them.
//!
//! | config string      | balancer           | picks                                                    |
//! |--------------------|--------------------|----------------------------------------------------------|
//! | `round-robin`      | [`RoundRobin`]     | each eligible endpoint in turn                           |
//! | `weighted`         | [`Weighted`]       | smooth weighted round-robin (nginx)                      |
//! | `least-inflight`   | [`LeastInFlight`]  | fewest requests in flight, ties in turn                  |
//! | `p2c-ewma`         | [`P2cPeakEwma`]    | the cheaper of two random endpoints (tower, linkerd)     |
//! | `hash:header:KEY`  | [`ConsistentHash`] | the ketama ring's owner of the header's value            |
//! | `affinity:header:KEY` | [`StreamTable`] | the endpoint the key's stream is on, bounded loads     |
//! | `plugin:NAME`      | [`PluginBalancer`] | a WASM `balancer` plugin's checked answer, else p2c      |
//!
//! ```
//! use std::time::Duration;
//! use switchyard::balance::{Balancer, BalancerConfig, EndpointView};
//!
//! let balancer = "round-robin".parse::<BalancerConfig>().unwrap().build().unwrap();
//! let mut endpoints = [EndpointView::new(1, Duration::from_millis(5)); 3];
//! endpoints[1].eligible = false;
//! let picks: Vec<_> = (0..4).map(|_| balancer.pick(&endpoints, None)).collect();
//! assert_eq!(picks, [Some(0), Some(2), Some(0), Some(2)]);
//! ```

mod hash;
mod rng;
mod view;

mod peak_ewma;

mod least_in_flight;
mod p2c;
mod round_robin;
mod weighted;

mod affinity;
mod ketama;

mod plugin;

mod config;

#[cfg(test)]
mod sim;

pub use affinity::{
    AffinityPolicy, AffinityStats, ConsistencyCheck, ConsistencyReport, DEFAULT_BALANCE_FACTOR, Migration,
    MigrationReason, Misplaced, OverCapacity, RecentStream, Stream, StreamTable,
};
pub use config::{BalancerConfig, ParseBalancerError};
pub use hash::endpoint_id;
pub use ketama::ConsistentHash;
pub use least_in_flight::LeastInFlight;
pub use p2c::P2cPeakEwma;
pub use peak_ewma::{DEFAULT_DECAY, DEFAULT_RTT, PeakEwma};
pub use plugin::{
    ANSWER_MARGIN, FallbackReason, OnFallback, PICK_QUEUE, PluginBalancer, PluginBalancerError,
};
pub use round_robin::RoundRobin;
pub use view::{EndpointView, Standing};
pub use weighted::Weighted;

/// Chooses one endpoint of a destination for one message.
///
/// One balancer serves one destination and is shared by every worker thread, so `pick` takes `&self`:
/// the state an algorithm keeps between picks (a turn counter, a random generator, a hash ring) lives
/// behind atomics, an `ArcSwap` or, for [`Weighted`] only, a short mutex.
pub trait Balancer: Send + Sync {
    /// Picks the endpoint for one dispatch attempt: called once per attempt (a retry calls it again).
    ///
    /// Returns a position in `endpoints` whose view is `eligible`, or `None` when none is. `key` is the
    /// value the destination hashes on (the configured header of the message, see
    /// [`BalancerConfig::hash_header`]); balancers that do not hash ignore it.
    fn pick(&self, endpoints: &[EndpointView], key: Option<&str>) -> Option<usize>;

    /// [`pick`](Self::pick) for `message`, which the destination core calls: balancers that look at
    /// more of the message than its key (a WASM `balancer` plugin sees its head) override it.
    fn pick_message(
        &self,
        endpoints: &[EndpointView],
        key: Option<&str>,
        _message: &crate::message::Message,
    ) -> Option<usize> {
        self.pick(endpoints, key)
    }
}

impl<B: Balancer + ?Sized> Balancer for std::sync::Arc<B> {
    fn pick_message(
        &self,
        endpoints: &[EndpointView],
        key: Option<&str>,
        message: &crate::message::Message,
    ) -> Option<usize> {
        (**self).pick_message(endpoints, key, message)
    }

    fn pick(&self, endpoints: &[EndpointView], key: Option<&str>) -> Option<usize> {
        (**self).pick(endpoints, key)
    }
}

impl<B: Balancer + ?Sized> Balancer for Box<B> {
    fn pick_message(
        &self,
        endpoints: &[EndpointView],
        key: Option<&str>,
        message: &crate::message::Message,
    ) -> Option<usize> {
        (**self).pick_message(endpoints, key, message)
    }

    fn pick(&self, endpoints: &[EndpointView], key: Option<&str>) -> Option<usize> {
        (**self).pick(endpoints, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    /// Picks position 1 for a message, 0 without one.
    struct SeesMessages;

    impl Balancer for SeesMessages {
        fn pick(&self, _endpoints: &[EndpointView], _key: Option<&str>) -> Option<usize> {
            Some(0)
        }

        fn pick_message(
            &self,
            _endpoints: &[EndpointView],
            _key: Option<&str>,
            _: &Message,
        ) -> Option<usize> {
            Some(1)
        }
    }

    /// `balancer`'s picks without and with a message, through `B`'s own impl of the trait.
    fn picks<B: Balancer>(balancer: &B) -> (Option<usize>, Option<usize>) {
        (balancer.pick(&[], None), balancer.pick_message(&[], None, &Message::new("orders", "{}")))
    }

    #[test]
    fn boxed_and_shared_balancers_forward_the_message_to_the_balancer_inside() {
        assert_eq!(picks(&Box::new(SeesMessages)), (Some(0), Some(1)));
        assert_eq!(picks(&std::sync::Arc::new(SeesMessages)), (Some(0), Some(1)));
        let boxed: Box<dyn Balancer> = Box::new(SeesMessages);
        assert_eq!(picks(&boxed), (Some(0), Some(1)));
    }
}
