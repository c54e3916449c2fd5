//! `[schemas]`: what the API does with events that `[[schemas]]` of the topology does not know.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaSettings {
    /// An event without any schema: published as is (`allow`, the default, so that schemas can
    /// be added one event at a time) or refused with 422 `unknown_event` (`reject`).
    pub unknown_events: UnknownEvents,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownEvents {
    #[default]
    Allow,
    Reject,
}
