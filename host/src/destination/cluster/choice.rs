//! Which endpoint an attempt goes to: admissions by health, breaker and
//! refusals under the eligibility guard rails, then the balancer's pick.

use super::Cluster;
use super::endpoint::{Endpoint, lock};
use crate::balance::{Balancer, EndpointView, Standing};
use crate::destination::plugin_balancer::HotPluginBalancer;
use crate::message::Message;
use crate::resilience::{Admission, BreakerPermit, Eligibility, EndpointCondition, HealthState};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::time::Instant;

/// How often entering panic mode is logged at most, per destination.
const PANIC_TOLD_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Cluster {
    /// Which endpoints may take traffic now, and whether the destination
    /// panics: health, breakers and the eligibility guard rails decide; an
    /// endpoint whose last connection was refused within the refusal window,
    /// or that asked for a pause not over yet, is left out whatever they say
    /// (panic mode and the ejection cap included): it cannot take the message.
    pub(super) fn admissions(&self, now: Instant) -> Eligibility {
        let conditions: Vec<EndpointCondition> = self
            .endpoints
            .iter()
            .map(|endpoint| match self.refusing(endpoint, now) {
                true => EndpointCondition::Refusing,
                false => {
                    let breaker = endpoint.state.breaker.state(now);
                    EndpointCondition::of(endpoint.health_state().unwrap_or(HealthState::Up), breaker)
                }
            })
            .collect();
        let eligibility = self.policy.admit(&conditions);
        if self.panicking.swap(eligibility.panic, Relaxed) != eligibility.panic {
            self.tell_panic(eligibility.panic, now);
        }
        eligibility
    }

    /// Log that panic mode began (at most once in [`PANIC_TOLD_EVERY`]) or ended.
    fn tell_panic(&self, panic: bool, now: Instant) {
        if !panic {
            tracing::debug!(destination = %self.name, "panic mode over: enough healthy endpoints");
            return;
        }
        let mut told = self.panic_told.lock().unwrap_or_else(|poison| poison.into_inner());
        if told.is_none_or(|told| now.saturating_duration_since(told) >= PANIC_TOLD_EVERY) {
            *told = Some(now);
            tracing::warn!(destination = %self.name, "too few healthy endpoints: panic mode, every endpoint gets traffic");
        }
    }

    /// Whether `endpoint` is left out now: it refused its last connection within the refusal
    /// window, or its last answer asked for a pause (`Retry-After`) not over yet.
    pub(super) fn refusing(&self, endpoint: &Endpoint, now: Instant) -> bool {
        endpoint.refusing_until().is_some_and(|until| now < until)
    }

    /// Pick an endpoint not tried yet (one tried before when no untried one
    /// is admitted) that is admitted now (see [`Cluster::admissions`]) and
    /// has room under its limit; when every one admitted is at its limit,
    /// one of them (the attempt then waits for room there, as for a free
    /// connection: see `Cluster::enter`). `None`
    /// when no endpoint is admitted.
    pub(super) async fn choose(
        &self,
        tried: &mut [bool],
        message: &Message,
        key: Option<&str>,
    ) -> Option<(usize, BreakerPermit)> {
        let now = Instant::now();
        let eligibility = self.admissions(now);
        let admitted = |(admission, tried): (&Admission, &bool)| admission.is_eligible() && !tried;
        if !eligibility.admissions.iter().zip(tried.iter()).any(admitted) {
            tried.fill(false);
        }
        let mut views: Vec<EndpointView> = self
            .endpoints
            .iter()
            .zip(tried.iter().zip(&eligibility.admissions))
            .map(|(endpoint, (tried, admission))| EndpointView {
                id: endpoint.id,
                weight: endpoint.weight(now),
                configured_weight: endpoint.configured_weight,
                in_flight: endpoint.state.in_flight.load(Relaxed),
                latency: lock(&endpoint.state.latency).estimate(now.into_std()),
                eligible: !tried && admission.is_eligible(),
                // Only the stream table reads it, and it has views of its own.
                standing: Standing::Serving,
            })
            .collect();
        let has_room = |view: &EndpointView| view.in_flight < self.endpoint_limit;
        if views.iter().any(|view| view.eligible && has_room(view)) {
            views.iter_mut().for_each(|view| view.eligible &= has_room(view));
        }
        while let Some(index) = self.balancer.pick(&views, key, message).await {
            tried[index] = true;
            views[index].eligible = false;
            let breaker = &self.endpoints[index].state.breaker;
            let permit = match eligibility.admissions[index] {
                Admission::Forced => Some(breaker.acquire_forced(now)),
                _ => breaker.try_acquire(now),
            };
            // Claimed only with the breaker's permit, as a stream's pick is (see
            // `Cluster::choose_stream`): a claim for an attempt that does not go would leave the
            // endpoint out until that attempt's deadline. Without the claim, the permit is dropped
            // (a probe's slot freed).
            let claim = |_: &BreakerPermit| self.endpoints[index].claim(Instant::now(), self.timeout);
            let Some(permit) = permit.filter(claim) else {
                // Its probe, or another attempt, finds out whether it takes traffic again.
                continue;
            };
            if permit.is_probe() {
                self.endpoints[index].count_breaker(|metrics| &metrics.half_opened);
            }
            return Some((index, permit));
        }
        None
    }
}

/// The balancer of a cluster: a built-in one picks in place; a plugin's pick
/// is awaited, so that a slow plugin holds up only the deliveries waiting for
/// it, never the runtime thread they run on.
pub(super) enum Picker {
    Native(Arc<dyn Balancer>),
    Plugin(HotPluginBalancer),
    /// Messages with the key go through [`Cluster::choose_stream`]; those without to its fallback.
    Affinity(Box<super::StreamAffinity>),
}

impl Picker {
    /// Picks for one attempt at delivering `message`; see [`Balancer::pick`].
    pub(super) async fn pick(
        &self,
        endpoints: &[EndpointView],
        key: Option<&str>,
        message: &Message,
    ) -> Option<usize> {
        match self {
            Picker::Native(balancer) => balancer.pick_message(endpoints, key, message),
            Picker::Plugin(balancer) => balancer.pick(endpoints, key, message).await,
            Picker::Affinity(affinity) => affinity.fallback.pick(endpoints, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::endpoint::EndpointState;
    use super::super::tests::cluster_of;
    use super::*;
    use crate::resilience::{Breaker, BreakerState};
    use std::sync::Mutex;
    use std::time::Duration;

    /// Picks the first eligible endpoint, whose breaker's permit another attempt takes meanwhile
    /// (as one on another thread, a step ahead, would).
    struct TakenMeanwhile {
        state: Arc<EndpointState>,
        /// The other attempt's permit, in flight.
        taken: Mutex<Option<BreakerPermit>>,
    }

    impl Balancer for TakenMeanwhile {
        fn pick(&self, endpoints: &[EndpointView], _key: Option<&str>) -> Option<usize> {
            let index = endpoints.iter().position(|view| view.eligible)?;
            let permit = self.state.breaker.try_acquire(Instant::now()).expect("admitted as it was picked");
            *lock(&self.taken) = Some(permit);
            Some(index)
        }
    }

    /// Fails `breaker`'s attempts until it opens, then lets its ejection pass: half-open, its
    /// probe free.
    async fn half_open(breaker: &Breaker) {
        while breaker.state(Instant::now()) == BreakerState::Closed {
            let _transition = breaker.try_acquire(Instant::now()).unwrap().failed(Instant::now());
        }
        while !matches!(breaker.state(Instant::now()), BreakerState::HalfOpen { probing: false, .. }) {
            tokio::time::advance(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pick_its_breaker_refuses_leaves_its_endpoint_as_it_found_it() {
        // The endpoint is half-open, its probe free, and a window that left it out (a refused
        // connection, a Retry-After) ended: admitted. While the balancer picked it, another attempt
        // took its probe, not yet its claim. The pick claimed the endpoint's trial before its
        // breaker refused it a permit: the endpoint was left out for an attempt's deadline by a
        // pick that went nowhere (and the other attempt, finding it claimed, went nowhere too).
        let mut cluster = cluster_of("endpoints = [\"127.0.0.1:1\"]\n", Arc::new(|_| {}));
        let state = cluster.endpoints[0].state.clone();
        half_open(&state.breaker).await;
        let ended = cluster.endpoints[0].stamp(Instant::now());
        state.refusing_until.store(ended, Relaxed);
        let meanwhile = Arc::new(TakenMeanwhile { state: state.clone(), taken: Mutex::default() });
        cluster.balancer = Picker::Native(meanwhile.clone());
        let chosen = cluster.choose(&mut [false], &Message::new("jobs", "m"), None).await;
        assert!(chosen.is_none(), "its probe is out");
        assert!(lock(&meanwhile.taken).as_ref().is_some_and(BreakerPermit::is_probe));
        assert_eq!(state.refusing_until.load(Relaxed), ended, "left out for a pick that went nowhere");
    }
}
