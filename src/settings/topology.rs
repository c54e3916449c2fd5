//! `[topology]`: how the topology file's `[[users]]` are enforced on the broker.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopologySettings {
    /// Delete broker users that `[[users]]` does not list (never `guest` nor the user this
    /// service signs in with). Off by default: an operator's own accounts live on the same
    /// broker, and a deleted user cannot be undone. Only acts when the file lists users at all.
    pub delete_unknown_users: bool,
}
