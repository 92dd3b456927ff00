//! How one dispatch attempt ended, classified for retries, breakers and health.

/// How one attempt to deliver a message to an endpoint ended.
///
/// The transport (or the plugin that stands in for one) classifies; the destination core then asks
/// [`is_retryable`](Outcome::is_retryable) before retrying and hands the outcome to the endpoint's
/// breaker permit ([`BreakerPermit::report`](super::BreakerPermit::report)), which counts
/// [`is_endpoint_failure`](Outcome::is_endpoint_failure) outcomes against the endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Delivered.
    Ok,
    /// Not delivered, and another attempt (preferably on another endpoint) may succeed.
    Retryable(RetryReason),
    /// Not delivered, and no attempt will succeed: dead-letter it.
    Fatal(FatalReason),
    /// Refused by this host before it reached the endpoint: a full queue, an exhausted limit, fail-fast.
    ///
    /// Never retried: retrying work we shed ourselves turns an overload into a retry storm (Envoy never
    /// retries `x-envoy-overloaded`; linkerd's load-shed errors are not retryable).
    Shed,
    /// Delivered, but its reply is refused: the endpoint took the message (an HTTP 2xx, a reply frame,
    /// an answer) and what it answered cannot be used (larger than the host reads, malformed, cut off
    /// or not read in time). Never retried (the message would go twice), and an answer from a working
    /// endpoint, not a failure: the message counts as delivered, and a requester is told its reply was
    /// refused and why.
    ReplyRefused,
}

/// Why a retryable attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryReason {
    /// The connection could not be established: nothing was sent, so a retry is always safe.
    Connect,
    /// The connection was made but its handshake failed (TLS: a certificate not trusted, no protocol in
    /// common; WebSocket: the upgrade refused): nothing was sent, so a retry is always safe; unlike a
    /// refused connection it counts as an attempt, so its error can end in a dead letter.
    Handshake,
    /// The connection was reset or closed mid-exchange.
    Reset,
    /// No reply within the attempt's timeout.
    Timeout,
    /// The endpoint answered with this status (5xx, or 408 / 429).
    Status(u16),
    /// A plugin answered `retryable`.
    Plugin,
    /// The peer answered that it is busy or not ready (Redis `LOADING`, `TRYAGAIN`, …): it did not take
    /// the message.
    Declined,
    /// The endpoint took the request but nobody was there to answer it (a NATS request with no
    /// subscriber): nothing took the message.
    NoResponders,
    /// The peer declined the message and asked for nothing more before this long has passed (an
    /// HTTP 429, or a 503 with `Retry-After`): it did not take it, and the destination leaves the
    /// endpoint out that long (at most its queue timeout).
    RetryAfter(std::time::Duration),
}

/// Why an attempt failed for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FatalReason {
    /// The endpoint answered with this status (a 4xx other than 408 / 429).
    Status(u16),
    /// A plugin answered `rejected`.
    Rejected,
    /// The message cannot go out in the transport's protocol (an invalid request, a subject or header
    /// the protocol refuses, a payload past its limit). A reply that cannot be understood is not
    /// this: its endpoint took the message ([`Outcome::ReplyRefused`]).
    Protocol,
}

impl Outcome {
    /// Classifies an HTTP status: 1xx–2xx deliver, and 3xx too when `redirects_ok` (a redirect is
    /// otherwise not a delivery: nobody took the message, and the host does not follow it); 5xx, 408
    /// and 429 may succeed elsewhere or later; any other status is the request's fault and fatal.
    /// A 429 (too many requests) is a refusal to take the message at all, and so is a 503 that
    /// says when to come back (`retry_after`, from its `Retry-After`): [`RetryReason::RetryAfter`].
    pub fn from_status(status: u16, redirects_ok: bool, retry_after: Option<std::time::Duration>) -> Outcome {
        match (status, retry_after) {
            (100..=299, _) => Outcome::Ok,
            (300..=399, _) if redirects_ok => Outcome::Ok,
            (429, after) | (503, after @ Some(_)) => {
                Outcome::Retryable(RetryReason::RetryAfter(after.unwrap_or_default()))
            }
            (408 | 500..=599, _) => Outcome::Retryable(RetryReason::Status(status)),
            _ => Outcome::Fatal(FatalReason::Status(status)),
        }
    }

    /// Whether another attempt may succeed. `Shed` never is: see [`Outcome::Shed`].
    pub fn is_retryable(&self) -> bool {
        matches!(self, Outcome::Retryable(_))
    }

    /// Whether the outcome is evidence that the endpoint is failing: a connect error, a reset, a timeout
    /// or a 5xx. A 4xx, a 408 / 429, a `Retry-After`, "no responders", a plugin's verdict and a refused
    /// reply are answers from a working endpoint (Envoy's
    /// outlier detection counts 5xx and gateway failures only); `Shed` never reached the endpoint.
    pub fn is_endpoint_failure(&self) -> bool {
        match self {
            Outcome::Retryable(reason) => match reason {
                RetryReason::Connect | RetryReason::Handshake | RetryReason::Reset | RetryReason::Timeout => {
                    true
                }
                RetryReason::Status(status) => (500..=599).contains(status),
                RetryReason::Plugin
                | RetryReason::Declined
                | RetryReason::NoResponders
                | RetryReason::RetryAfter(_) => false,
            },
            Outcome::Ok | Outcome::Fatal(_) | Outcome::Shed | Outcome::ReplyRefused => false,
        }
    }
}

impl RetryReason {
    /// Whether the endpoint certainly did not take the message, so retrying cannot duplicate work on
    /// it: nothing was sent (Pingora's `fail_to_connect`), a plugin or worker answered `retryable`,
    /// saying it did not take it, or nobody was there to take it. Other reasons are safe to retry
    /// only for idempotent work.
    pub fn is_not_taken(&self) -> bool {
        matches!(
            self,
            RetryReason::Connect
                | RetryReason::Handshake
                | RetryReason::Plugin
                | RetryReason::Declined
                | RetryReason::NoResponders
                | RetryReason::RetryAfter(_)
        )
    }

    /// Whether the request went out and no answer came back (a timeout, a reset mid-exchange): the
    /// endpoint may have taken the message although the attempt failed.
    pub fn is_unanswered(&self) -> bool {
        matches!(self, RetryReason::Timeout | RetryReason::Reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn statuses_classify_as_ok_retryable_or_fatal() {
        assert_eq!(Outcome::from_status(204, false, None), Outcome::Ok);
        assert_eq!(Outcome::from_status(302, false, None), Outcome::Fatal(FatalReason::Status(302)));
        assert_eq!(Outcome::from_status(302, true, None), Outcome::Ok);
        assert_eq!(Outcome::from_status(503, false, None), Outcome::Retryable(RetryReason::Status(503)));
        assert_eq!(Outcome::from_status(404, true, None), Outcome::Fatal(FatalReason::Status(404)));
    }

    #[test]
    fn a_429_or_a_503_saying_when_to_come_back_is_a_refusal_to_take_the_message() {
        let later = Some(Duration::from_secs(2));
        let after = |duration| Outcome::Retryable(RetryReason::RetryAfter(duration));
        assert_eq!(Outcome::from_status(429, false, None), after(Duration::ZERO));
        assert_eq!(Outcome::from_status(429, false, later), after(Duration::from_secs(2)));
        assert_eq!(Outcome::from_status(503, false, later), after(Duration::from_secs(2)));
        assert_eq!(Outcome::from_status(500, false, later), Outcome::Retryable(RetryReason::Status(500)));
        assert_eq!(Outcome::from_status(200, false, later), Outcome::Ok);
        assert!(RetryReason::RetryAfter(Duration::ZERO).is_not_taken());
        assert!(!Outcome::Retryable(RetryReason::RetryAfter(Duration::ZERO)).is_endpoint_failure());
    }

    #[test]
    fn work_shed_locally_is_never_retried() {
        assert!(!Outcome::Shed.is_retryable());
        assert!(!Outcome::Shed.is_endpoint_failure());
        assert!(!Outcome::Fatal(FatalReason::Rejected).is_retryable());
        assert!(Outcome::Retryable(RetryReason::Plugin).is_retryable());
        assert!(!Outcome::ReplyRefused.is_retryable(), "delivered: sent again, it would go twice");
    }

    #[test]
    fn only_transport_failures_and_5xx_count_against_the_endpoint() {
        let failing = [
            RetryReason::Connect,
            RetryReason::Handshake,
            RetryReason::Reset,
            RetryReason::Timeout,
            RetryReason::Status(502),
        ];
        assert!(failing.into_iter().all(|reason| Outcome::Retryable(reason).is_endpoint_failure()));
        let answering = [
            RetryReason::RetryAfter(Duration::from_secs(1)),
            RetryReason::Status(408),
            RetryReason::Plugin,
            RetryReason::NoResponders,
        ];
        assert!(answering.into_iter().all(|reason| !Outcome::Retryable(reason).is_endpoint_failure()));
        assert!(!Outcome::Fatal(FatalReason::Status(400)).is_endpoint_failure());
        assert!(!Outcome::ReplyRefused.is_endpoint_failure(), "it took the message");
    }

    #[test]
    fn only_connect_errors_and_retryable_answers_are_known_not_taken() {
        assert!(RetryReason::Connect.is_not_taken() && RetryReason::Plugin.is_not_taken());
        assert!(RetryReason::NoResponders.is_not_taken() && RetryReason::Handshake.is_not_taken());
        assert!(!RetryReason::Timeout.is_not_taken() && !RetryReason::Status(503).is_not_taken());
        assert!(RetryReason::Reset.is_unanswered() && !RetryReason::Status(503).is_unanswered());
    }
}
