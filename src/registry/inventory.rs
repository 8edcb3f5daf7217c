//! What the registry holds, counted for the metrics.

use super::{Registry, RegistryResult};
use crate::meta::keys;
use crate::telemetry::metrics::Inventory;

impl Registry {
    /// Counts templates, versions, their bytes and the open upload sessions from the
    /// listing summaries (one read of each summary, no template record).
    pub async fn inventory(&self) -> RegistryResult<Inventory> {
        let templates = self.list().await?;
        let sessions = self.meta().members(keys::SESSIONS).await?;
        Ok(Inventory {
            templates: templates.len() as u64,
            versions: templates
                .iter()
                .map(|t| u64::from(t.summary.versions))
                .sum(),
            bytes: templates.iter().map(|t| t.summary.size).sum(),
            upload_sessions: sessions.len() as u64,
        })
    }
}
