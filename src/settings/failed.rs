//! `[failed]`: what operators may do with failed messages beyond retrying and deleting them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailedSettings {
    /// `POST /api/messages/failed/{id}/edit-retry`: publish an edited copy in place of a failed
    /// message. Off by default: it lets an operator put a body of their own on any exchange
    /// that had a failure, which each environment decides to allow.
    pub edit_enabled: bool,
}
