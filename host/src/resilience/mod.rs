//! Resilience state machines: circuit breakers, retry budgets and backoff, endpoint health.
