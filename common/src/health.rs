//! Readiness as a registry of components, each reporting healthy with a
//! deadline: a component that stops reporting becomes unready by itself.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
pub struct Health {
    components: Arc<Mutex<BTreeMap<String, Option<Instant>>>>,
}

/// One component's handle for reporting.
#[derive(Clone)]
pub struct HealthHandle {
    name: String,
    health: Health,
}

impl Health {
    /// Registers a component, unhealthy until it first reports.
    pub fn register(&self, name: &str) -> HealthHandle {
        self.components
            .lock()
            .expect("health lock")
            .insert(name.to_string(), None);
        HealthHandle {
            name: name.to_string(),
            health: self.clone(),
        }
    }

    /// Ready when every registered component is healthy now.
    pub fn is_ready(&self) -> bool {
        let now = Instant::now();
        self.components
            .lock()
            .expect("health lock")
            .values()
            .all(|until| until.is_some_and(|until| until > now))
    }

    /// Components and whether each is healthy, for the readiness body.
    pub fn report(&self) -> Vec<(String, bool)> {
        let now = Instant::now();
        self.components
            .lock()
            .expect("health lock")
            .iter()
            .map(|(name, until)| (name.clone(), until.is_some_and(|until| until > now)))
            .collect()
    }
}

impl HealthHandle {
    /// Healthy for `valid_for` from now.
    pub fn healthy_for(&self, valid_for: Duration) {
        self.set(Some(Instant::now() + valid_for));
    }

    /// Healthy until told otherwise (components with no heartbeat of their own).
    pub fn healthy(&self) {
        self.healthy_for(Duration::from_secs(100 * 365 * 86_400));
    }

    pub fn unhealthy(&self) {
        self.set(None);
    }

    fn set(&self, until: Option<Instant>) {
        self.health
            .components
            .lock()
            .expect("health lock")
            .insert(self.name.clone(), until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_component_reports() {
        let health = Health::default();
        let a = health.register("a");
        let b = health.register("b");
        assert!(!health.is_ready());
        a.healthy();
        assert!(!health.is_ready());
        b.healthy_for(Duration::from_secs(60));
        assert!(health.is_ready());
        b.healthy_for(Duration::ZERO);
        assert!(!health.is_ready());
    }
}
