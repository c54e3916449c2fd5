//! Logging: `RUST_LOG` filters (default `info`), `LOG_FORMAT` picks JSON lines or human text.
//! lapin is off by default: it logs every channel a refused declare closes at ERROR, and we log
//! the failures that matter ourselves, with what to do (`RUST_LOG=info,lapin=debug` to see it).

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::settings::LogFormat;

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=off,sqlx=warn,tokio_cron_scheduler=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().with_current_span(true).with_span_list(false))
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().with_target(false)).try_init(),
    };
}
