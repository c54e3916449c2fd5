//! Every metric of the service, declared once in [`metrics!`]: each field's doc comment is its
//! help text.
//! One registry per [`Metrics`] so that several apps in one test process do not collide.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

const PREFIX: &str = "messages_broker";

/// Declares [`Metrics`] from one list, so that each metric is written once: its field name is its
/// name (under [`PREFIX`]), its doc comment is its help text, its labels follow in brackets. Why-
/// comments that must not reach the help text are plain `//` comments. Modelled on crates.io's
/// `metrics!` (src/metrics/macros.rs).
macro_rules! metrics {
    ($(
        $(#[doc = $doc:literal])+
        $field:ident: $kind:ident $([$($label:literal),* $(,)?])? $(buckets = $buckets:expr)?,
    )*) => {
        pub struct Metrics {
            registry: Registry,
            $(
                $(#[doc = $doc])+
                pub $field: $kind,
            )*
        }

        impl Metrics {
            /// Every declared metric, built and registered.
            fn declared() -> Self {
                let registry = Registry::new();
                $(
                    let $field = <$kind as Declared>::build(
                        Opts::new(stringify!($field), help(&[$($doc),+])).namespace(PREFIX),
                        &[$($($label),*)?],
                        None $(.or(Some($buckets)))?,
                    );
                    // Names come from field names, which cannot clash: a failure is a bug.
                    registry.register(Box::new($field.clone())).expect("metric registered twice");
                )*
                Self { registry, $($field),* }
            }
        }
    };
}

metrics! {
    /// 1 while the AMQP connection is open, 0 otherwise.
    amqp_connected: IntGauge,
    /// AMQP connections lost and re-established since start.
    amqp_reconnects_total: IntCounter,
    /// 1 once the topology is declared (or verified) on the current connection.
    topology_applied: IntGauge,
    /// Users of the topology file not in place after the last apply: password source missing or
    /// refused by the broker (does not affect readiness).
    topology_users_unapplied: IntGauge,
    /// Publishes through the API, by exchange and outcome.
    published_total: IntCounterVec["exchange", "outcome"],
    /// Time from request to broker confirm, seconds.
    publish_duration_seconds: Histogram buckets = vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ],
    /// Event schema checks of published messages, by outcome: valid, invalid, unknown_version,
    /// unknown_event_allowed, unknown_event_rejected.
    schema_checks_total: IntCounterVec["outcome"],
    /// Requests through POST /api/messages/request, by exchange and outcome.
    requests_total: IntCounterVec["exchange", "outcome"],
    /// Time from request to reply (or to the error answer), seconds.
    request_duration_seconds: Histogram buckets = vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ],
    /// Replies that arrived when no request waited for them any more (past their timeout), dropped.
    late_replies_total: IntCounter,
    /// Messages in the queue (ready + unacked).
    queue_messages: IntGaugeVec["queue"],
    /// Messages delivered and not yet acknowledged.
    queue_messages_unacked: IntGaugeVec["queue"],
    /// Consumers of the queue.
    queue_consumers: IntGaugeVec["queue"],
    /// Capacity of the queue from the topology (x-max-length).
    queue_max_length: IntGaugeVec["queue"],
    /// Failed messages in the database, by status.
    failed_messages: IntGaugeVec["status"],
    /// Dead letters stored in failed_messages, by dead-letter queue.
    dead_letters_ingested_total: IntCounterVec["queue"],
    /// Retries of failed messages, by outcome.
    retries_total: IntCounterVec["outcome"],
    /// Rows deleted by retention, by table (message_logs, failed_messages).
    retention_deleted_total: IntCounterVec["table"],
    /// Delayed messages waiting for their time (the scheduler role's last count).
    scheduled_messages: IntGauge,
    /// How late the most overdue delayed message is, seconds (0 when none is due).
    scheduled_due_lag_seconds: Gauge,
    /// Delayed messages the scheduler role handled, by outcome (sent, failed, retry).
    scheduled_released_total: IntCounterVec["outcome"],
    /// Copies published by replays of the audit trail, by outcome: published (confirmed), failed
    /// (given up: unroutable, exchange not in the topology, or refused on every attempt), retry
    /// (not confirmed this time, tried again).
    replayed_total: IntCounterVec["outcome"],
    /// Publishes refused by a rate limit, by client.
    rate_limited_total: IntCounterVec["client"],
    /// Times the HTTP server reached app.max_connections and stopped accepting until a connection
    /// closed.
    http_connection_limit_reached_total: IntCounter,
    /// Role restarts after a failure, by role.
    role_restarts_total: IntCounterVec["role"],
    /// Audit rows waiting to be written to message_logs.
    audit_backlog: IntGauge,
    /// Audit rows dropped because the writer fell too far behind (database slow or down).
    audit_dropped_total: IntCounter,
    /// Audit rows written to message_logs.
    audit_written_total: IntCounter,
    /// Messages per second delivered to consumers (or fetched), from the management API.
    queue_deliver_rate: GaugeVec["queue"],
    /// Ready messages of a queue whose deliveries have stalled (deliver rate ~0), else 0.
    queue_consumer_lag: IntGaugeVec["queue"],
    /// Unresolved failed messages (pending, retrying, failed) in the database, by queue.
    queue_failed_messages: IntGaugeVec["queue"],
    // Label-less vector: absent from processes without the stats role, instead of a false 0.
    /// 1 when the last stats poll could read the RabbitMQ management API, 0 when it fell back.
    management_api_up: IntGaugeVec[],
    // Label-less vector, set only when there is a limit: a made-up value would mislead the
    // memory-pressure alert, which falls back to the seed's 512 MiB on its own
    // (compose/prometheus/alerts.yml).
    /// Memory limit of this process's cgroup (container limit), bytes; absent without a limit.
    memory_limit_bytes: IntGaugeVec[],
}

/// A doc comment's lines (each after `///`'s space) as one help text.
fn help(doc: &[&str]) -> String {
    doc.iter().map(|line| line.trim()).collect::<Vec<_>>().join(" ")
}

/// How each kind of metric that [`metrics!`] declares is built from its options.
trait Declared: prometheus::core::Collector + Clone + 'static {
    fn build(opts: Opts, labels: &[&str], buckets: Option<Vec<f64>>) -> Self;
}

/// Metrics without labels: declaring labels or buckets on them is a mistake in the list.
macro_rules! declared_scalar {
    ($($kind:ty),*) => {$(
        impl Declared for $kind {
            fn build(opts: Opts, labels: &[&str], buckets: Option<Vec<f64>>) -> Self {
                assert!(labels.is_empty() && buckets.is_none(), "{}: no labels or buckets", opts.name);
                <$kind>::with_opts(opts).expect("valid metric options")
            }
        }
    )*};
}

/// Vectors, one child per label values.
macro_rules! declared_vec {
    ($($kind:ty),*) => {$(
        impl Declared for $kind {
            fn build(opts: Opts, labels: &[&str], buckets: Option<Vec<f64>>) -> Self {
                assert!(buckets.is_none(), "{}: no buckets", opts.name);
                <$kind>::new(opts, labels).expect("valid metric options")
            }
        }
    )*};
}

declared_scalar!(IntGauge, IntCounter, Gauge);
declared_vec!(IntGaugeVec, IntCounterVec, GaugeVec);

impl Declared for Histogram {
    fn build(opts: Opts, labels: &[&str], buckets: Option<Vec<f64>>) -> Self {
        assert!(labels.is_empty(), "{}: no labels", opts.name);
        let mut opts = HistogramOpts::from(opts);
        if let Some(buckets) = buckets {
            opts = opts.buckets(buckets);
        }
        Histogram::with_opts(opts).expect("valid metric options")
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self::declared();
        if let Some(limit) = cgroup_memory_limit().and_then(|l| i64::try_from(l).ok()) {
            m.memory_limit_bytes.with_label_values::<&str>(&[]).set(limit);
        }
        // process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total...: the
        // standard names, unprefixed, so the usual dashboards and alerts apply.
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("metric registered twice");
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buffer).expect("prometheus text is UTF-8")
    }
}

/// Values at or above this mean "no limit" (cgroup v1 writes a page-rounded `i64::MAX`).
const UNLIMITED: u64 = 1 << 60;

/// The memory limit of this process's cgroup, v2 (`memory.max`) or v1 (`memory.limit_in_bytes`):
/// the container's limit under Docker or Kubernetes. `None` without a limit or outside Linux.
pub fn cgroup_memory_limit() -> Option<u64> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut candidates = Vec::new();
    for line in membership.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = path.trim_end_matches('/');
        if controllers.is_empty() {
            candidates.push(format!("/sys/fs/cgroup{path}/memory.max"));
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"));
        }
    }
    // Inside a container the cgroup namespace makes the container's own group the root.
    candidates.push("/sys/fs/cgroup/memory.max".into());
    candidates.push("/sys/fs/cgroup/memory/memory.limit_in_bytes".into());
    candidates.iter().find_map(|file| {
        let text = std::fs::read_to_string(file).ok()?;
        parse_memory_limit(&text)
    })
}

/// `max` (v2) and huge values (v1) mean no limit.
fn parse_memory_limit(text: &str) -> Option<u64> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|&limit| limit > 0 && limit < UNLIMITED)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_with_the_contract_prefix() {
        let metrics = super::Metrics::new();
        metrics.amqp_connected.set(1);
        let text = metrics.render();
        assert!(text.contains("messages_broker_amqp_connected 1"), "{text}");
        assert!(text.contains("# HELP messages_broker_amqp_reconnects_total"));
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        // Set by the stats role only: other processes must not claim the API is down.
        assert!(!text.contains("messages_broker_management_api_up"), "{text}");
    }

    #[test]
    fn memory_limits_read_like_the_kernel_writes_them() {
        assert_eq!(super::parse_memory_limit("536870912\n"), Some(536_870_912));
        assert_eq!(super::parse_memory_limit("max\n"), None);
        assert_eq!(super::parse_memory_limit("9223372036854771712\n"), None);
        assert_eq!(super::parse_memory_limit("0"), None);
    }
}
