//! Authentication over real TLS handshakes: which client certificates the gateway refuses, and
//! how the client learns why; registry changes (suspension, revocation, bindings) take effect
//! within seconds without a restart; the server certificate and client CA reload from disk
//! without dropping open streams.

use std::time::{Duration, SystemTime};

use sluice_core::proto::ingest_service_client::IngestServiceClient;
use sluice_core::proto::{GetIngestionRequest, IngestRequest, WatchIngestionsRequest};
use sluice_core::tenants::{Binding, Revocation, TenantState};
use sluice_gateway::tenancy::pki::{Authority, CertSpec, Issued};
use sluice_tests::{document, eventually, grpcurl, tenant_id, Database, Stack};
use tokio_stream::StreamExt;
use tonic::{Code, Status};

/// What a call with `identity` gets: OK (the ingestion is simply unknown: NOT_FOUND), a
/// refusal status, or a failed handshake (Err with the whole error chain as text).
async fn call_as(stack: &Stack, identity: Option<&Issued>) -> Result<Status, String> {
    call_trusting(stack, &stack.pki().ca.cert_pem(), identity).await
}

/// [`call_as`], trusting `ca_pem` for the gateway's own certificate.
async fn call_trusting(
    stack: &Stack,
    ca_pem: &str,
    identity: Option<&Issued>,
) -> Result<Status, String> {
    let channel = stack
        .tls_channel_with_ca(ca_pem, identity)
        .await
        .map_err(|e| error_chain(&e))?;
    let status = IngestServiceClient::new(channel)
        .get_ingestion(GetIngestionRequest {
            ingestion_id: "no-such-ingestion".into(),
        })
        .await
        .expect_err("an unknown ingestion is never OK");
    if matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    ) {
        // The handshake failed after the client had sent its part (TLS 1.3): the alert
        // arrives with the first response.
        return Err(format!("{} {}", status.message(), error_chain(&status)));
    }
    Ok(status)
}

/// A bare TLS handshake with the gateway, then one read. TLS 1.3 clients finish their side
/// before the server has judged their certificate, so the verdict is the first thing to read:
/// the alert naming why (Err), or the server's HTTP/2 settings when it accepted (Ok). (Through
/// a gRPC client the alert can lose the race with the connection closing.)
async fn handshake_as(stack: &Stack, identity: Option<&Issued>) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(stack.pki().ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(issued) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(stack.standalone().gateway.grpc_addr)
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buffer = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buffer)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err("closed without a word".into()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("no answer within 10 s".into()),
    }
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{error}");
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn accepted(result: Result<Status, String>) -> bool {
    matches!(result, Ok(status) if status.code() == Code::NotFound)
}

fn refused_with(result: Result<Status, String>, code: Code, words: &str) -> bool {
    matches!(result, Ok(status) if status.code() == code && status.message().contains(words))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_refused_and_the_client_is_told_why() {
    let stack = Stack::start_tls(Database::Sqlite, &["acme", "initech"]).await;
    let pki = stack.pki();
    let tenants = stack.tenants().await;

    let acme = pki.client("acme");
    assert!(
        accepted(call_as(&stack, Some(&acme)).await),
        "a valid certificate"
    );

    // The real grpcurl, with the files a tenant developer is given; and without them.
    let files = stack.data_dir.path().join("acme-client");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("acme.pem"), &acme.cert_pem).unwrap();
    std::fs::write(files.join("acme-key.pem"), &acme.key_pem).unwrap();
    let ca = pki.dir.join("ca.pem");
    let address = stack.standalone().gateway.grpc_addr.to_string();
    let search = r#"{"query": "anything", "topK": 1}"#;
    let with_certificate = tokio::process::Command::new(grpcurl())
        .arg("-cacert")
        .arg(&ca)
        .arg("-cert")
        .arg(files.join("acme.pem"))
        .arg("-key")
        .arg(files.join("acme-key.pem"))
        .args(["-d", search, &address, "sluice.v1.SearchService/Search"])
        .output()
        .await
        .unwrap();
    assert!(
        with_certificate.status.success(),
        "{}",
        String::from_utf8_lossy(&with_certificate.stderr)
    );
    let without = tokio::process::Command::new(grpcurl())
        .arg("-cacert")
        .arg(&ca)
        .args(["-d", search, &address, "sluice.v1.SearchService/Search"])
        .output()
        .await
        .unwrap();
    assert!(
        !without.status.success(),
        "grpcurl without a certificate got through"
    );

    // No certificate: the handshake fails, and the alert says why.
    call_as(&stack, None).await.expect_err("no certificate");
    let none = handshake_as(&stack, None)
        .await
        .expect_err("no certificate");
    assert!(none.contains("CertificateRequired"), "{none}");
    assert_eq!(handshake_as(&stack, Some(&acme)).await, Ok(()));

    // A certificate from a CA the gateway does not trust.
    let stranger_ca = Authority::generate("Someone else's CA", Duration::from_secs(3600)).unwrap();
    let foreign = stranger_ca
        .issue(&CertSpec::client_for_tenant(
            &pki.trust_domain,
            &tenant_id("acme"),
            Duration::from_secs(3600),
        ))
        .unwrap();
    call_as(&stack, Some(&foreign))
        .await
        .expect_err("unknown CA");
    let refused = handshake_as(&stack, Some(&foreign))
        .await
        .expect_err("unknown CA");
    assert!(
        refused.contains("UnknownCA") || refused.contains("BadCertificate"),
        "{refused}"
    );

    // An expired certificate.
    let mut spec = CertSpec::client_for_tenant(
        &pki.trust_domain,
        &tenant_id("acme"),
        Duration::from_secs(3600),
    );
    spec.not_before = SystemTime::now() - Duration::from_secs(2 * 86_400);
    spec.not_after = SystemTime::now() - Duration::from_secs(86_400);
    let expired = pki.ca.issue(&spec).unwrap();
    call_as(&stack, Some(&expired)).await.expect_err("expired");
    let refused = handshake_as(&stack, Some(&expired))
        .await
        .expect_err("expired");
    assert!(
        refused.contains("CertificateExpired") || refused.contains("BadCertificate"),
        "{refused}"
    );

    // A certificate bound to no tenant (no SPIFFE id, no binding) → PERMISSION_DENIED; bound
    // in the registry, it then acts for its tenant.
    let mut spec = CertSpec::client_for_tenant(
        &pki.trust_domain,
        &tenant_id("acme"),
        Duration::from_secs(3600),
    );
    spec.uri_sans.clear();
    spec.common_name = "build-bot".into();
    let unbound = pki.ca.issue(&spec).unwrap();
    assert!(refused_with(
        call_as(&stack, Some(&unbound)).await,
        Code::PermissionDenied,
        "bound to no tenant"
    ));
    tenants
        .bind_certificate(
            "tests",
            &tenant_id("initech"),
            Binding::Fingerprint(unbound.identity.fingerprint.clone()),
        )
        .await
        .unwrap();
    eventually(
        "the binding to take effect",
        Duration::from_secs(10),
        || async { accepted(call_as(&stack, Some(&unbound)).await).then_some(()) },
    )
    .await;

    // A SPIFFE id naming a tenant that is not registered.
    let ghost = pki.client("ghost");
    assert!(refused_with(
        call_as(&stack, Some(&ghost)).await,
        Code::PermissionDenied,
        "not registered"
    ));

    // Revoked: that certificate is refused, another of the same tenant still works (rotation).
    // Its serial revoked for another issuer first changes nothing: serials are per issuer.
    let rotated = pki.client("acme");
    tenants
        .revoke(
            "tests",
            Revocation::IssuerSerial {
                issuer: "CN=Another CA".into(),
                serial: acme.identity.serial.clone(),
            },
            "another CA's certificate",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(accepted(call_as(&stack, Some(&acme)).await));
    tenants
        .revoke(
            "tests",
            acme.identity.revocations()[0].clone(),
            "laptop stolen",
        )
        .await
        .unwrap();
    eventually(
        "the revocation to take effect",
        Duration::from_secs(10),
        || async {
            refused_with(
                call_as(&stack, Some(&acme)).await,
                Code::Unauthenticated,
                "revoked",
            )
            .then_some(())
        },
    )
    .await;
    assert!(accepted(call_as(&stack, Some(&rotated)).await));

    // Suspended tenant → PERMISSION_DENIED; resumed, it works again. No restart in between.
    tenants
        .set_state("tests", &tenant_id("acme"), TenantState::Suspended)
        .await
        .unwrap();
    eventually(
        "the suspension to take effect",
        Duration::from_secs(10),
        || async {
            refused_with(
                call_as(&stack, Some(&rotated)).await,
                Code::PermissionDenied,
                "suspended",
            )
            .then_some(())
        },
    )
    .await;
    tenants
        .set_state("tests", &tenant_id("acme"), TenantState::Active)
        .await
        .unwrap();
    eventually(
        "the resumption to take effect",
        Duration::from_secs(10),
        || async { accepted(call_as(&stack, Some(&rotated)).await).then_some(()) },
    )
    .await;

    // Every change above is in the audit log, with who made it.
    let audit = tenants.audit(100).await.unwrap();
    for action in ["certificate.bind", "certificate.revoke", "tenant.suspend"] {
        assert!(
            audit
                .iter()
                .any(|e| e.action.starts_with(action) && e.actor == "tests"),
            "{action} missing from {audit:?}"
        );
    }
    stack.shutdown().await;
}

/// A new CA and server certificate written to disk are picked up by a running gateway: new
/// connections need the new CA, while a stream opened before the swap keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_reload_without_dropping_open_streams() {
    let stack = Stack::start_tls(Database::Sqlite, &["acme"]).await;
    let pki = stack.pki();
    let old_client = pki.client("acme");
    let old_channel = stack.tls_channel(Some(&old_client)).await.unwrap();
    let mut old_ingest = IngestServiceClient::new(old_channel);
    let mut watch = old_ingest
        .watch_ingestions(WatchIngestionsRequest::default())
        .await
        .unwrap()
        .into_inner();

    // Rotate to a new CA: a new client CA bundle and a server certificate signed by it.
    let new_ca = Authority::generate("Sluice test CA 2", Duration::from_secs(86_400)).unwrap();
    pki.install(&new_ca);
    let new_client = new_ca
        .issue(&CertSpec::client_for_tenant(
            &pki.trust_domain,
            &tenant_id("acme"),
            Duration::from_secs(3600),
        ))
        .unwrap();
    let ca_pem = new_ca.cert_pem();
    eventually(
        "the new CA to be trusted",
        Duration::from_secs(10),
        || async {
            accepted(call_trusting(&stack, &ca_pem, Some(&new_client)).await).then_some(())
        },
    )
    .await;
    // A client of the old CA can no longer connect…
    let refused = call_trusting(&stack, &ca_pem, Some(&old_client)).await;
    assert!(refused.is_err(), "{refused:?}");

    // …but the connection it opened before the swap still works, and its stream still flows.
    let ingestion = old_ingest
        .ingest(IngestRequest {
            document: Some(document("after-reload", "t", "Written after the reload.")),
            ..Default::default()
        })
        .await
        .expect("the open connection survives the reload")
        .into_inner()
        .ingestion
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(60), watch.next())
        .await
        .expect("an event on the old stream")
        .expect("stream open")
        .expect("event");
    assert_eq!(
        event.ingestion.unwrap().ingestion_id,
        ingestion.ingestion_id
    );
    stack.shutdown().await;
}

/// A suspension ends the tenant's open watch streams, not only its new calls; and when the
/// registry cannot be read for longer than the grace period the gateway fails closed: calls
/// are refused UNAVAILABLE and `/healthz` names the registry, until it can be read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_ends_open_streams_and_an_unreadable_registry_fails_closed() {
    let stack = Stack::start_tls_configured(Database::Sqlite, &["acme", "other"], |config| {
        config.tenants.grace_period_ms = 1_500;
    })
    .await;
    let tenants = stack.tenants().await;
    let mut acme = IngestServiceClient::new(stack.client_channel("acme").await);
    let mut other = IngestServiceClient::new(stack.client_channel("other").await);
    let mut stream = acme
        .watch_ingestions(WatchIngestionsRequest::default())
        .await
        .expect("watch")
        .into_inner();

    tenants
        .set_state("tests", &tenant_id("acme"), TenantState::Suspended)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the open stream ended within 10 s of the suspension")
        .expect("an answer before the end");
    let status = ended.expect_err("the stream ends with the refusal");
    println!(
        "watch stream ended {:?} after the suspension: {status:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("suspended"), "{status:?}");

    // The registry becomes unreadable: after the grace period every call is refused.
    let db = sluice_core::db::connect(&stack.config.database_url())
        .await
        .unwrap();
    use sea_orm::ConnectionTrait;
    db.execute_unprepared("ALTER TABLE tenants RENAME TO tenants_away")
        .await
        .unwrap();
    let lookup = |code: Code| {
        let other = other.clone();
        move || {
            let mut other = other.clone();
            async move {
                let answer = other
                    .get_ingestion(GetIngestionRequest {
                        ingestion_id: "x".into(),
                    })
                    .await
                    .unwrap_err();
                (answer.code() == code).then_some(answer)
            }
        }
    };
    let refused = eventually(
        "calls refused after the grace period",
        Duration::from_secs(10),
        lookup(Code::Unavailable),
    )
    .await;
    assert!(refused.message().contains("tenant registry"), "{refused:?}");
    let health = format!("http://{}/healthz", stack.standalone().gateway.health_addr);
    let report = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "20", &health])
        .output()
        .await
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(
        report["dependencies"]["tenant_registry"]["status"], "down",
        "{report}"
    );

    db.execute_unprepared("ALTER TABLE tenants_away RENAME TO tenants")
        .await
        .unwrap();
    eventually(
        "calls served again",
        Duration::from_secs(10),
        lookup(Code::NotFound),
    )
    .await;
    let ingested = other
        .ingest(IngestRequest {
            document: Some(document("back", "back", "Served again.")),
            ..Default::default()
        })
        .await;
    assert!(ingested.is_ok(), "{ingested:?}");
    stack.shutdown().await;
}
