//! Every metric of the service, defined once. Each field's doc comment is its help text.
//! One registry per [`Metrics`] so that several apps in one test process do not collide.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

const PREFIX: &str = "messages_broker";

pub struct Metrics {
    registry: Registry,
    /// 1 while the AMQP connection is open, 0 otherwise.
    pub amqp_connected: IntGauge,
    /// AMQP connections lost and re-established since start.
    pub amqp_reconnects_total: IntCounter,
    /// 1 once the topology is declared (or verified) on the current connection.
    pub topology_applied: IntGauge,
    /// Publishes through the API, by exchange and outcome.
    pub published_total: IntCounterVec,
    /// Time from request to broker confirm, seconds.
    pub publish_duration_seconds: Histogram,
    /// Messages in the queue (ready + unacked).
    pub queue_messages: IntGaugeVec,
    /// Messages delivered and not yet acknowledged.
    pub queue_messages_unacked: IntGaugeVec,
    /// Consumers of the queue.
    pub queue_consumers: IntGaugeVec,
    /// Capacity of the queue from the topology (x-max-length).
    pub queue_max_length: IntGaugeVec,
    /// Failed messages in the database, by status.
    pub failed_messages: IntGaugeVec,
    /// Dead letters stored in failed_messages, by dead-letter queue.
    pub dead_letters_ingested_total: IntCounterVec,
    /// Retries of failed messages, by outcome.
    pub retries_total: IntCounterVec,
    /// Publishes refused by a rate limit, by client.
    pub rate_limited_total: IntCounterVec,
    /// Role restarts after a failure, by role.
    pub role_restarts_total: IntCounterVec,
    /// Audit rows waiting to be written to message_logs.
    pub audit_backlog: IntGauge,
    /// Audit rows dropped because the writer fell too far behind (database slow or down).
    pub audit_dropped_total: IntCounter,
    /// Audit rows written to message_logs.
    pub audit_written_total: IntCounter,
    /// Messages per second delivered to consumers (or fetched), from the management API.
    pub queue_deliver_rate: GaugeVec,
    /// Ready messages of a queue whose deliveries have stalled (deliver rate ~0), else 0.
    pub queue_consumer_lag: IntGaugeVec,
    /// Unresolved failed messages (pending, retrying, failed) in the database, by queue.
    pub queue_failed_messages: IntGaugeVec,
    /// 1 when the last stats poll could read the RabbitMQ management API, 0 when it fell back.
    /// Label-less vector: absent from processes without the stats role, instead of a false 0.
    pub management_api_up: IntGaugeVec,
    /// Memory limit of this process's cgroup (container limit), bytes; absent without a limit.
    pub memory_limit_bytes: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace(PREFIX);
        let m = Self {
            amqp_connected: IntGauge::with_opts(opts(
                "amqp_connected",
                "1 while the AMQP connection is open, 0 otherwise.",
            ))
            .unwrap(),
            amqp_reconnects_total: IntCounter::with_opts(opts(
                "amqp_reconnects_total",
                "AMQP connections lost and re-established since start.",
            ))
            .unwrap(),
            topology_applied: IntGauge::with_opts(opts(
                "topology_applied",
                "1 once the topology is declared (or verified) on the current connection.",
            ))
            .unwrap(),
            published_total: IntCounterVec::new(
                opts("published_total", "Publishes through the API, by exchange and outcome."),
                &["exchange", "outcome"],
            )
            .unwrap(),
            publish_duration_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "publish_duration_seconds",
                    "Time from request to broker confirm, seconds.",
                )
                .namespace(PREFIX)
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )
            .unwrap(),
            queue_messages: IntGaugeVec::new(
                opts("queue_messages", "Messages in the queue (ready + unacked)."),
                &["queue"],
            )
            .unwrap(),
            queue_messages_unacked: IntGaugeVec::new(
                opts("queue_messages_unacked", "Messages delivered and not yet acknowledged."),
                &["queue"],
            )
            .unwrap(),
            queue_consumers: IntGaugeVec::new(opts("queue_consumers", "Consumers of the queue."), &["queue"]).unwrap(),
            queue_max_length: IntGaugeVec::new(
                opts(
                    "queue_max_length",
                    "Capacity of the queue from the topology (x-max-length).",
                ),
                &["queue"],
            )
            .unwrap(),
            failed_messages: IntGaugeVec::new(
                opts("failed_messages", "Failed messages in the database, by status."),
                &["status"],
            )
            .unwrap(),
            dead_letters_ingested_total: IntCounterVec::new(
                opts(
                    "dead_letters_ingested_total",
                    "Dead letters stored in failed_messages, by dead-letter queue.",
                ),
                &["queue"],
            )
            .unwrap(),
            retries_total: IntCounterVec::new(
                opts("retries_total", "Retries of failed messages, by outcome."),
                &["outcome"],
            )
            .unwrap(),
            rate_limited_total: IntCounterVec::new(
                opts("rate_limited_total", "Publishes refused by a rate limit, by client."),
                &["client"],
            )
            .unwrap(),
            role_restarts_total: IntCounterVec::new(
                opts("role_restarts_total", "Role restarts after a failure, by role."),
                &["role"],
            )
            .unwrap(),
            audit_backlog: IntGauge::with_opts(opts(
                "audit_backlog",
                "Audit rows waiting to be written to message_logs.",
            ))
            .unwrap(),
            audit_dropped_total: IntCounter::with_opts(opts(
                "audit_dropped_total",
                "Audit rows dropped because the writer fell too far behind (database slow or down).",
            ))
            .unwrap(),
            audit_written_total: IntCounter::with_opts(opts(
                "audit_written_total",
                "Audit rows written to message_logs.",
            ))
            .unwrap(),
            queue_deliver_rate: GaugeVec::new(
                opts(
                    "queue_deliver_rate",
                    "Messages per second delivered to consumers (or fetched), from the management API.",
                ),
                &["queue"],
            )
            .unwrap(),
            queue_consumer_lag: IntGaugeVec::new(
                opts(
                    "queue_consumer_lag",
                    "Ready messages of a queue whose deliveries have stalled (deliver rate ~0), else 0.",
                ),
                &["queue"],
            )
            .unwrap(),
            queue_failed_messages: IntGaugeVec::new(
                opts(
                    "queue_failed_messages",
                    "Unresolved failed messages (pending, retrying, failed) in the database, by queue.",
                ),
                &["queue"],
            )
            .unwrap(),
            management_api_up: IntGaugeVec::new(
                opts(
                    "management_api_up",
                    "1 when the last stats poll could read the RabbitMQ management API, 0 when it fell back.",
                ),
                &[],
            )
            .unwrap(),
            memory_limit_bytes: IntGauge::with_opts(opts(
                "memory_limit_bytes",
                "Memory limit of this process's cgroup (container limit), bytes; absent without a limit.",
            ))
            .unwrap(),
            registry,
        };
        m.register_all();
        m
    }

    fn register_all(&self) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.amqp_connected.clone()),
            Box::new(self.amqp_reconnects_total.clone()),
            Box::new(self.topology_applied.clone()),
            Box::new(self.published_total.clone()),
            Box::new(self.publish_duration_seconds.clone()),
            Box::new(self.queue_messages.clone()),
            Box::new(self.queue_messages_unacked.clone()),
            Box::new(self.queue_consumers.clone()),
            Box::new(self.queue_max_length.clone()),
            Box::new(self.failed_messages.clone()),
            Box::new(self.dead_letters_ingested_total.clone()),
            Box::new(self.retries_total.clone()),
            Box::new(self.rate_limited_total.clone()),
            Box::new(self.role_restarts_total.clone()),
            Box::new(self.audit_backlog.clone()),
            Box::new(self.audit_dropped_total.clone()),
            Box::new(self.audit_written_total.clone()),
            Box::new(self.queue_deliver_rate.clone()),
            Box::new(self.queue_consumer_lag.clone()),
            Box::new(self.queue_failed_messages.clone()),
            Box::new(self.management_api_up.clone()),
        ];
        for collector in collectors {
            // Names are constants defined above: a clash is a programming error caught by tests.
            self.registry.register(collector).expect("metric registered twice");
        }
        // Only with a limit: a made-up value would mislead the memory-pressure alert, which falls
        // back to the seed's 512 MiB on its own (compose/prometheus/alerts.yml).
        if let Some(limit) = cgroup_memory_limit().and_then(|l| i64::try_from(l).ok()) {
            self.memory_limit_bytes.set(limit);
            self.registry
                .register(Box::new(self.memory_limit_bytes.clone()))
                .expect("metric registered twice");
        }
        // process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total...: the
        // standard names, unprefixed, so the usual dashboards and alerts apply.
        #[cfg(target_os = "linux")]
        self.registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("metric registered twice");
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
