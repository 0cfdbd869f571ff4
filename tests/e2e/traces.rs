//! One trace per document: an in-process OTLP collector (the OpenTelemetry trace service, on
//! loopback) receives the spans of one Ingest sent by a client with its own `traceparent`, and
//! they form one trace across the gateway's call, the Kafka produce, the worker's processing
//! and the completion coming back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use sluice_core::proto::IngestRequest;
use sluice_tests::{as_tenant, document, Broker, GatewayProcess};
use tokio_stream::wrappers::TcpListenerStream;

/// Keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ingest_is_one_trace_across_gateway_and_worker() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut sluice = GatewayProcess::new(dir.path(), &broker);
    sluice.env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            format!("http://{otlp}"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ("OTEL_SERVICE_NAME".into(), "sluice-under-test".into()),
    ];
    sluice.start();

    // The client's own trace: everything Sluice does for this document joins it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let client = sluice.client();
    let started = Instant::now();
    let response = loop {
        let mut request = as_tenant(
            "traced",
            IngestRequest {
                document: Some(document("traced-1", "Traced", "Spans follow the document.")),
                wait: true,
                ..Default::default()
            },
        );
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
        match client.clone().ingest(request).await {
            Ok(response) => break response.into_inner(),
            // Still starting: the model loads, the topics are created.
            Err(_) if started.elapsed() < Duration::from_secs(120) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(status) => panic!("the gateway never answered: {status:?}"),
        }
    };
    assert_eq!(
        response.ingestion.unwrap().state,
        sluice_core::proto::IngestionState::Indexed as i32
    );

    // Every step's span, in the client's trace.
    let wanted = [
        "sluice.v1.IngestService/Ingest",
        "send sluice.documents",
        "process sluice.documents",
        "decode",
        "chunk",
        "embed",
        "upsert",
        "process sluice.completions",
        "wake watchers",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let trace: Vec<Span> = loop {
        let spans: Vec<Span> = collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| hex(&s.trace_id) == trace_id)
            .cloned()
            .collect();
        if wanted.iter().all(|w| spans.iter().any(|s| s.name == *w)) {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans of the trace so far: {:?}; all spans: {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>(),
            collector
                .spans
                .lock()
                .unwrap()
                .iter()
                .map(|s| (&s.name, hex(&s.trace_id)))
                .take(20)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    sluice.terminate(Duration::from_secs(60)).await;

    // Parents cross the process and Kafka boundaries: the worker's process span is a child
    // of the gateway's send, the completion's of the worker's process.
    let by_name: HashMap<&str, &Span> = trace.iter().map(|s| (s.name.as_str(), s)).collect();
    let parent_of = |name: &str| {
        let span = by_name[name];
        trace
            .iter()
            .find(|p| p.span_id == span.parent_span_id)
            .map(|p| p.name.as_str())
    };
    assert_eq!(
        parent_of("sluice.v1.IngestService/Ingest"),
        None,
        "the client's span is the root"
    );
    assert_eq!(
        hex(&by_name["sluice.v1.IngestService/Ingest"].parent_span_id),
        "00f067aa0ba902b7"
    );
    assert_eq!(
        parent_of("send sluice.documents"),
        Some("sluice.v1.IngestService/Ingest")
    );
    assert_eq!(
        parent_of("process sluice.documents"),
        Some("send sluice.documents")
    );
    assert_eq!(parent_of("embed"), Some("process sluice.documents"));
    assert_eq!(parent_of("upsert"), Some("process sluice.documents"));
    assert_eq!(
        parent_of("process sluice.completions"),
        Some("process sluice.documents")
    );
    assert_eq!(
        parent_of("wake watchers"),
        Some("process sluice.completions")
    );

    // The tree, for the closing note.
    fn print(trace: &[Span], parent: &[u8], depth: usize) {
        for span in trace.iter().filter(|s| s.parent_span_id == parent) {
            let ms = (span.end_time_unix_nano - span.start_time_unix_nano) as f64 / 1e6;
            println!("{}{} ({ms:.1} ms)", "  ".repeat(depth), span.name);
            print(trace, &span.span_id, depth + 1);
        }
    }
    println!("trace {trace_id}:");
    let root = by_name["sluice.v1.IngestService/Ingest"];
    println!("{} ({} spans)", root.name, trace.len());
    print(&trace, &root.span_id, 1);
    server.abort();
}
