//! `sluice-admin` as an operator runs it: the built binary against a fresh SQLite data dir.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use sluice_core::tenants::{Revocation, Tenants};
use sluice_pki::CertificateIdentity;

/// The binary, in `dir` (so no stray ./sluice.toml is read), with its database in `dir/data`
/// and none of the caller's SLUICE_* settings.
fn admin(dir: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice-admin"));
    for (name, _) in std::env::vars() {
        if name.starts_with("SLUICE_") {
            command.env_remove(name);
        }
    }
    command
        .current_dir(dir)
        .env("SLUICE_ADMIN_ACTOR", "ops@test")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .output()
        .expect("runs sluice-admin")
}

/// Stdout of a command that must succeed.
fn ok(dir: &Path, args: &[&str]) -> String {
    let output = admin(dir, args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "{args:?} failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    stdout.into_owned()
}

/// Stderr of a command that must fail.
fn fails(dir: &Path, args: &[&str]) -> String {
    let output = admin(dir, args);
    assert!(
        !output.status.success(),
        "{args:?} succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn operator_session() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // Tenants: create, refuse a duplicate or a bad id, list, suspend, resume, quotas.
    ok(
        dir,
        &[
            "tenant",
            "create",
            "acme",
            "--name",
            "Acme Corp",
            "--max-top-k",
            "7",
        ],
    );
    assert!(fails(dir, &["tenant", "create", "acme"]).contains("already exists"));
    assert!(fails(dir, &["tenant", "create", "Not Valid"]).contains("invalid"));
    let list = ok(dir, &["tenant", "list"]);
    let acme_row = list.lines().find(|l| l.starts_with("acme ")).unwrap();
    assert!(
        acme_row.contains("Acme Corp") && acme_row.contains("active"),
        "{list}"
    );

    assert!(ok(dir, &["tenant", "suspend", "acme"]).contains("suspended"));
    let list = ok(dir, &["tenant", "list"]);
    assert!(list
        .lines()
        .any(|l| l.starts_with("acme ") && l.contains("suspended")));
    ok(
        dir,
        &["tenant", "resume", "acme", "--actor", "someone-else"],
    );
    let quotas = ok(
        dir,
        &["tenant", "quotas", "acme", "--documents-per-second", "5"],
    );
    assert!(quotas.contains("documents_per_second  5"), "{quotas}");
    assert!(quotas.contains("max_top_k             7"), "{quotas}");
    assert!(fails(dir, &["tenant", "suspend", "ghost"]).contains("ghost"));

    // A CA, refused a second time without --force; its key is private.
    ok(dir, &["cert", "init-ca", "--out", "ca"]);
    let key_mode = std::fs::metadata(dir.join("ca/ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    assert!(fails(dir, &["cert", "init-ca", "--out", "ca"]).contains("--force"));
    ok(dir, &["cert", "init-ca", "--out", "ca", "--force"]);

    // A client certificate: files that parse, the tenant in its SPIFFE URI, fingerprint bound.
    let client = ok(
        dir,
        &[
            "cert", "client", "acme", "--ca-dir", "ca", "--out", "certs", "--days", "30",
        ],
    );
    let pem = std::fs::read_to_string(dir.join("certs/acme.pem")).unwrap();
    assert!(dir.join("certs/acme-key.pem").exists());
    let identity = CertificateIdentity::from_pem(&pem).unwrap();
    assert_eq!(
        identity.spiffe_tenant("sluice.local").as_deref(),
        Some("acme")
    );
    assert!(client.contains(&identity.fingerprint), "{client}");
    assert!(client.contains(&identity.serial), "{client}");
    assert!(ok(dir, &["tenant", "show", "acme"]).contains(&identity.fingerprint));
    let unknown = fails(
        dir,
        &[
            "cert", "client", "ghost", "--ca-dir", "ca", "--out", "certs",
        ],
    );
    assert!(unknown.contains("does not exist"), "{unknown}");
    assert!(!dir.join("certs/ghost.pem").exists());

    // A server certificate.
    ok(dir, &["cert", "server", "--ca-dir", "ca", "--out", "certs"]);
    let server = CertificateIdentity::from_pem(
        &std::fs::read_to_string(dir.join("certs/server.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(server.sans, ["dns:localhost", "ip:127.0.0.1"]);

    // Binding a subject; revoking the client certificate by file.
    ok(
        dir,
        &["cert", "bind", "acme", "--subject", "CN=acme-legacy"],
    );
    let revoked = ok(
        dir,
        &[
            "cert",
            "revoke",
            "--cert",
            "certs/acme.pem",
            "--reason",
            "key lost",
        ],
    );
    assert!(revoked.contains(&identity.serial), "{revoked}");

    // The registry holds what the commands said.
    let url = format!("sqlite://{}?mode=rwc", dir.join("data/sluice.db").display());
    let registry = Tenants::new(sluice_core::db::connect(&url).await.unwrap());
    let snapshot = registry.snapshot().await.unwrap();
    for revocation in identity.revocations() {
        assert!(snapshot.is_revoked(&revocation), "{revocation:?}");
    }
    assert!(!snapshot.is_revoked(&Revocation::Serial(server.serial.clone())));
    assert_eq!(snapshot.tenants.len(), 1);

    // The audit trail names every change and who made it, newest first.
    let audit = ok(dir, &["audit"]);
    let actions: Vec<(&str, &str)> = audit
        .lines()
        .skip(1)
        .map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            (columns[1], columns[2])
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("ops@test", "certificate.revoke"),
            ("ops@test", "certificate.revoke"),
            ("ops@test", "certificate.bind"),
            ("ops@test", "certificate.bind"),
            ("ops@test", "tenant.quotas"),
            ("someone-else", "tenant.resume"),
            ("ops@test", "tenant.suspend"),
            ("ops@test", "tenant.create"),
        ],
        "{audit}"
    );

    // Values are printed and stored in canonical form, however they were typed.
    // A serial names a certificate only together with its issuer.
    let no_issuer = fails(dir, &["cert", "revoke", "--serial", "00:AB:CD"]);
    assert!(no_issuer.contains("--issuer"), "{no_issuer}");
    let by_serial = ok(
        dir,
        &["cert", "revoke", "--serial", "00:AB:CD", "--any-issuer"],
    );
    assert!(
        by_serial.contains("revoked serial abcd of every issuer"),
        "{by_serial}"
    );
    let latest = ok(dir, &["audit", "--limit", "1"]);
    assert_eq!(latest.lines().count(), 2, "{latest}");
    assert!(latest.contains(r#""value":"abcd""#), "{latest}");
    // The server certificate's serial, revoked for another CA, leaves it valid.
    let other_ca = ok(
        dir,
        &[
            "cert",
            "revoke",
            "--serial",
            &server.serial,
            "--issuer",
            "CN=Some other CA",
        ],
    );
    assert!(
        other_ca.contains("of issuer CN=Some other CA"),
        "{other_ca}"
    );
    let snapshot = registry.snapshot().await.unwrap();
    assert!(!snapshot.is_revoked(&server.revocations()[0]));
    assert!(snapshot.is_revoked(&Revocation::IssuerSerial {
        issuer: "CN=Some other CA".into(),
        serial: server.serial.clone(),
    }));

    // An ingestion's Kafka position is the operator's to see, per tenant.
    use sea_orm::EntityTrait;
    use sluice_core::db::ingestion;
    let db = sluice_core::db::connect(&url).await.unwrap();
    ingestion::Entity::insert(ingestion::ActiveModel::from(ingestion::Model {
        ingestion_id: "ing-1".into(),
        tenant: "acme".into(),
        document_id: "doc-1".into(),
        operation: "upsert".into(),
        state: "indexed".into(),
        kafka_topic: "sluice.documents".into(),
        kafka_partition: 3,
        kafka_offset: 42,
        chunk_count: 2,
        failure_reason: None,
        idempotency_key: None,
        accepted_at_ms: 1_700_000_000_000,
        completed_at_ms: Some(1_700_000_001_000),
        content_hash: None,
    }))
    .exec_without_returning(&db)
    .await
    .unwrap();
    let shown = ok(dir, &["ingestion", "show", "acme", "ing-1"]);
    assert!(
        shown.contains("sluice.documents partition 3 offset 42"),
        "{shown}"
    );
    let elsewhere = fails(dir, &["ingestion", "show", "globex", "ing-1"]);
    assert!(elsewhere.contains("has no ingestion"), "{elsewhere}");
}
