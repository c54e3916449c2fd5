//! Every metric of the service, defined once. Each field's doc comment is its help text.
//! One registry per [`Metrics`] so that several apps in one test process do not collide.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
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
        ];
        for collector in collectors {
            // Names are constants defined above: a clash is a programming error caught by tests.
            self.registry.register(collector).expect("metric registered twice");
        }
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
    }
}
