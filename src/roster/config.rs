//! The `[roster]` section: how the connection registry lives in the store.

use serde::{Deserialize, Serialize};

use crate::config::KeyError;
use crate::human_duration::HumanDuration;

/// The `[roster]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RosterConfig {
    /// How long a node's entries outlive its last heartbeat (it heartbeats every third of this):
    /// a node that dies vanishes from the registry within it.
    pub node_ttl: HumanDuration,
}

impl Default for RosterConfig {
    fn default() -> Self {
        Self {
            node_ttl: HumanDuration::from_secs(15),
        }
    }
}

impl RosterConfig {
    /// Problems with the section, by key.
    pub fn problems(&self) -> Vec<KeyError> {
        let mut problems = Vec::new();
        if self.node_ttl < HumanDuration::from_millis(300) {
            problems.push(KeyError::new("roster.node_ttl", "must be at least 300ms"));
        }
        problems
    }
}
