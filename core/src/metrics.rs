//! Prometheus metrics: the `metrics` facade, recorded once per process and rendered in the
//! Prometheus text format by each binary's health server at `/metrics`.
//!
//! Names start with `sluice_`, use base units (`_seconds`, `_bytes`) and end counters in
//! `_total`; durations are histograms. A standalone gateway and its worker share the process,
//! so they share one `/metrics`.
//!
//! Tenant labels are bounded: the first `metrics.max_tenant_labels` tenants a process sees are
//! labelled by name, every later one as `other`, so a thousand tenants cannot make a thousand
//! series of every metric.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};

/// The label of tenants past the limit.
pub const OTHER_TENANTS: &str = "other";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Tenants labelled by name; later ones are labelled `other`. Default 100.
    pub max_tenant_labels: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            max_tenant_labels: 100,
        }
    }
}

/// Seconds: from a millisecond (a cached lookup) to ten minutes (a large document).
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];
/// Counts per batch or transaction (records, requests, chunks).
const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

struct Recorder {
    handle: PrometheusHandle,
    max_tenant_labels: usize,
    labelled: Mutex<HashSet<String>>,
}

static RECORDER: OnceLock<Recorder> = OnceLock::new();

/// Installs the process's recorder (the first call's settings hold; later calls, as when a
/// test starts several stacks in one process, change nothing).
pub fn install(config: &MetricsConfig) {
    recorder(config);
}

fn recorder(config: &MetricsConfig) -> &'static Recorder {
    RECORDER.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Suffix(BATCH_SIZE_SUFFIX.into()), SIZE_BUCKETS)
            })
            .expect("the buckets are not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed in a Sluice process");
        Recorder {
            handle,
            max_tenant_labels: config.max_tenant_labels,
            labelled: Mutex::default(),
        }
    })
}

/// Histograms of counts end in this (`sluice_gateway_transaction_records_per_batch`…).
pub const BATCH_SIZE_SUFFIX: &str = "_per_batch";

/// Everything recorded so far, in the Prometheus text format.
pub fn render() -> String {
    let recorder = recorder(&MetricsConfig::default());
    recorder.handle.run_upkeep();
    recorder.handle.render()
}

/// The label for `tenant`: its name while fewer than the limit have been labelled, else
/// [`OTHER_TENANTS`].
pub fn tenant_label(tenant: &str) -> String {
    let recorder = recorder(&MetricsConfig::default());
    let mut labelled = recorder
        .labelled
        .lock()
        .expect("the label set is never poisoned");
    if labelled.contains(tenant) {
        return tenant.to_owned();
    }
    if labelled.len() < recorder.max_tenant_labels {
        labelled.insert(tenant.to_owned());
        return tenant.to_owned();
    }
    OTHER_TENANTS.to_owned()
}

/// Seconds since `ms` (Unix milliseconds), never negative: clocks of two machines disagree.
pub fn seconds_since_ms(ms: i64) -> f64 {
    (crate::record::now_ms() - ms).max(0) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_was_recorded_with_bounded_tenant_labels() {
        install(&MetricsConfig::default());
        let max = recorder(&MetricsConfig::default()).max_tenant_labels;
        for i in 0..max + 5 {
            let tenant = tenant_label(&format!("tenant-{i}"));
            metrics::counter!("sluice_test_documents_total", "tenant" => tenant).increment(1);
        }
        metrics::histogram!("sluice_test_duration_seconds").record(0.02);
        metrics::histogram!("sluice_test_records_per_batch").record(3.0);
        let text = render();
        assert!(text.contains(r#"sluice_test_documents_total{tenant="tenant-0"} 1"#));
        // Tenants past the limit share one series, once the labels are all taken.
        assert!(
            text.contains(r#"sluice_test_documents_total{tenant="other"}"#),
            "{text}"
        );
        assert!(text.contains(r#"sluice_test_duration_seconds_bucket{le="0.025"} 1"#));
        assert!(
            text.contains(r#"sluice_test_records_per_batch_bucket{le="4"} 1"#),
            "{text}"
        );
    }
}
