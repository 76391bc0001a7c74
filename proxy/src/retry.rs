//! [`RetryPolicy`]: which failed attempts go to the next target, how many tries in all, and
//! the budget that caps retries. A route puts one in the request's extensions; without one
//! the proxy uses [`RetryPolicy::default`].

use std::sync::Arc;

use balancer::RetryBudget;
use http::{Method, StatusCode};

/// Statuses a policy can retry on.
const STATUSES: [StatusCode; 3] = [
    StatusCode::BAD_GATEWAY,
    StatusCode::SERVICE_UNAVAILABLE,
    StatusCode::GATEWAY_TIMEOUT,
];

/// When a request goes to the next target (see the [crate docs](crate)).
///
/// A request that never reached the upstream (connect failure, a new connection closed
/// before the request was written) may always go again; a request that did reach it goes
/// again only for the failures listed, for the methods listed, and only when it has no
/// body (its head is kept to be sent again; a body is streamed once).
///
/// ```
/// use std::sync::Arc;
/// use http::{Method, StatusCode};
/// use proxy::RetryPolicy;
/// use balancer::RetryBudget;
///
/// let policy = RetryPolicy::new(3)
///     .on_status(StatusCode::SERVICE_UNAVAILABLE)
///     .unwrap()
///     .on_timeout(true)
///     .budget(Arc::new(RetryBudget::new(20, 3)));
/// assert!(policy.resends(&Method::GET));
/// assert!(!policy.resends(&Method::POST));
/// ```
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    tries: u32,
    methods: Vec<Method>,
    reset: bool,
    timeout: bool,
    statuses: [bool; 3],
    budget: Option<Arc<RetryBudget>>,
}

impl Default for RetryPolicy {
    /// Every target once at most, sent requests again on a reset for idempotent methods, no
    /// status or timeout retries, no budget: the proxy's behaviour without a policy.
    fn default() -> Self {
        RetryPolicy {
            tries: u32::MAX,
            methods: vec![
                Method::GET,
                Method::HEAD,
                Method::OPTIONS,
                Method::TRACE,
                Method::PUT,
                Method::DELETE,
            ],
            reset: true,
            timeout: false,
            statuses: [false; 3],
            budget: None,
        }
    }
}

impl RetryPolicy {
    /// `tries` attempts in all, the first included (at least 1), with the default's methods
    /// and failures.
    pub fn new(tries: u32) -> Self {
        RetryPolicy {
            tries: tries.max(1),
            ..RetryPolicy::default()
        }
    }

    /// The methods sent again once they reached the upstream (default: the idempotent ones,
    /// RFC 9110 9.2.2).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Whether an exchange reset before any response byte is retried (default true).
    pub fn on_reset(mut self, on: bool) -> Self {
        self.reset = on;
        self
    }

    /// Whether an attempt without a response head within the response timeout is retried
    /// (default false: the request may still be running there).
    pub fn on_timeout(mut self, on: bool) -> Self {
        self.timeout = on;
        self
    }

    /// Retries when the upstream answers `status`: 502, 503 or 504; `Err` for others.
    pub fn on_status(mut self, status: StatusCode) -> Result<Self, StatusCode> {
        let i = STATUSES.iter().position(|s| *s == status).ok_or(status)?;
        self.statuses[i] = true;
        Ok(self)
    }

    /// Caps retries with `budget` (shared by the requests of a route).
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Tries in all.
    pub fn tries(&self) -> u32 {
        self.tries
    }

    /// Whether a request with `method` may be sent again after it reached the upstream.
    pub fn resends(&self, method: &Method) -> bool {
        self.methods.contains(method)
    }

    pub(crate) fn retries_reset(&self) -> bool {
        self.reset
    }

    pub(crate) fn retries_timeout(&self) -> bool {
        self.timeout
    }

    pub(crate) fn retries_status(&self, status: StatusCode) -> bool {
        STATUSES
            .iter()
            .position(|s| *s == status)
            .is_some_and(|i| self.statuses[i])
    }

    /// Records a request against the budget.
    pub(crate) fn record_request(&self) {
        if let Some(b) = &self.budget {
            b.request();
        }
    }

    /// Whether attempt number `made + 1` may be made: tries left and, for a retry, room in
    /// the budget (which it then takes).
    pub(crate) fn may_retry(&self, made: u32) -> bool {
        made < self.tries && self.budget.as_ref().is_none_or(|b| b.try_retry())
    }
}
