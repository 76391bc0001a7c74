//! [`Background`]: the tasks that keep a proxy's view of its upstream current, beside the
//! request path.

use std::sync::Arc;

use tokio::task::AbortHandle;

use crate::dns::{self, Resolve};
use crate::forward::{Proxy, RequestBody};

/// A proxy's background tasks: DNS re-resolution for targets named by a host name, and active
/// health checks when configured. They run until this is dropped (or the proxy is).
#[derive(Debug, Default)]
pub struct Background(Vec<AbortHandle>);

impl Background {
    /// How many tasks run.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl<B: RequestBody> Proxy<B> {
    /// Starts the upstream's background tasks (call it inside a tokio runtime): resolving
    /// named targets with `resolver`, and active health checks if the settings have them.
    pub fn start(&self, resolver: Arc<dyn Resolve>) -> Background {
        let upstream = self.upstream_arc();
        let settings = upstream.settings();
        let mut tasks = Vec::new();
        let named = upstream
            .configured_targets()
            .iter()
            .any(|(t, _)| t.name_to_resolve().is_some());
        if named {
            let task = tokio::spawn(dns::run(
                Arc::downgrade(upstream),
                self.pool().clone(),
                resolver,
                settings.resolve_interval,
            ));
            tasks.push(task.abort_handle());
        }
        if let Some(check) = &settings.health_check {
            let task = tokio::spawn(crate::checks::run(Arc::downgrade(upstream), check.clone()));
            tasks.push(task.abort_handle());
        }
        Background(tasks)
    }
}
