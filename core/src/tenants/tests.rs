//! The registry on both databases: every change, its audit row, and the snapshot.

use super::*;

fn tenant_id(id: &str) -> TenantId {
    TenantId::parse(id).unwrap()
}

const FP: &str = "3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b";

async fn exercise(db: DatabaseConnection) {
    let registry = Tenants::new(db);
    let (acme, beta, ghost) = (tenant_id("acme"), tenant_id("beta"), tenant_id("ghost"));

    // Create, refuse a duplicate, find, list by id.
    let created = registry
        .create_tenant("alice", &acme, "Acme Corp", Quotas::default())
        .await
        .unwrap();
    assert_eq!(created.state, TenantState::Active);
    assert!(matches!(
        registry
            .create_tenant("alice", &acme, "Again", Quotas::default())
            .await,
        Err(TenantError::AlreadyExists(_))
    ));
    let small = Quotas {
        documents_per_second: 5,
        ..Quotas::default()
    };
    registry
        .create_tenant("alice", &beta, "Beta", small)
        .await
        .unwrap();
    assert_eq!(registry.tenant(&acme).await.unwrap(), Some(created.clone()));
    assert_eq!(registry.tenant(&ghost).await.unwrap(), None);
    let ids: Vec<_> = registry
        .list_tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, [acme.clone(), beta.clone()]);

    // Suspend, suspend again (nothing changes), resume.
    let suspended = registry
        .set_state("bob", &acme, TenantState::Suspended)
        .await
        .unwrap();
    assert_eq!(suspended.state, TenantState::Suspended);
    registry
        .set_state("bob", &acme, TenantState::Suspended)
        .await
        .unwrap();
    assert_eq!(
        registry.tenant(&acme).await.unwrap().unwrap().state,
        TenantState::Suspended
    );
    registry
        .set_state("bob", &acme, TenantState::Active)
        .await
        .unwrap();

    // Quotas: only what the update names changes; zero and unknown tenants are refused.
    let updated = registry
        .set_quotas(
            "bob",
            &acme,
            QuotaUpdate {
                max_top_k: Some(7),
                bytes_per_second: Some(1 << 40),
                ..QuotaUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        updated.quotas,
        Quotas {
            max_top_k: 7,
            bytes_per_second: 1 << 40,
            ..Quotas::default()
        }
    );
    assert_eq!(registry.tenant(&acme).await.unwrap(), Some(updated));
    let zero = QuotaUpdate {
        documents_per_second: Some(0),
        ..QuotaUpdate::default()
    };
    assert!(matches!(
        registry.set_quotas("bob", &acme, zero).await,
        Err(TenantError::Invalid(_))
    ));
    assert!(matches!(
        registry
            .set_quotas("bob", &ghost, QuotaUpdate::default())
            .await,
        Err(TenantError::NotFound(_))
    ));
    assert!(matches!(
        registry.set_state("bob", &ghost, TenantState::Active).await,
        Err(TenantError::NotFound(_))
    ));

    // Bindings: stored canonically; binding again is harmless; another tenant is refused.
    let spelled = FP
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|pair| std::str::from_utf8(pair).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    registry
        .bind_certificate("carol", &acme, Binding::Fingerprint(spelled))
        .await
        .unwrap();
    let fingerprint = Binding::Fingerprint(FP.into());
    registry
        .bind_certificate("carol", &acme, fingerprint.clone())
        .await
        .unwrap();
    let spiffe = Binding::San("uri:spiffe://sluice.local/tenant/acme".into());
    let subject = Binding::Subject("CN=acme, O=Acme".into());
    for binding in [spiffe.clone(), subject.clone()] {
        registry
            .bind_certificate("carol", &acme, binding)
            .await
            .unwrap();
    }
    assert!(matches!(
        registry
            .bind_certificate("carol", &beta, fingerprint.clone())
            .await,
        Err(TenantError::AlreadyExists(_))
    ));
    assert!(matches!(
        registry
            .bind_certificate("carol", &ghost, Binding::Subject("CN=x".into()))
            .await,
        Err(TenantError::NotFound(_))
    ));
    assert!(matches!(
        registry
            .bind_certificate("carol", &acme, Binding::Fingerprint("abc".into()))
            .await,
        Err(TenantError::Invalid(_))
    ));
    let bound: HashSet<_> = registry
        .bindings(&acme)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(
        bound,
        HashSet::from([fingerprint.clone(), spiffe.clone(), subject.clone()])
    );
    assert!(matches!(
        registry.bindings(&ghost).await,
        Err(TenantError::NotFound(_))
    ));

    // Moving a binding: unbind, then bind to the other tenant.
    registry
        .unbind_certificate("carol", &subject)
        .await
        .unwrap();
    registry
        .bind_certificate("carol", &beta, subject.clone())
        .await
        .unwrap();
    assert!(matches!(
        registry
            .unbind_certificate("carol", &Binding::San("dns:nowhere".into()))
            .await,
        Err(TenantError::NotFound(_))
    ));

    // Revocations: canonical serials, idempotent.
    registry
        .revoke("dave", Revocation::Serial("00:AB:CD".into()), "key leaked")
        .await
        .unwrap();
    registry
        .revoke("dave", Revocation::Serial("abcd".into()), "again")
        .await
        .unwrap();
    registry
        .revoke("dave", Revocation::Fingerprint(FP.into()), "rotated")
        .await
        .unwrap();

    // The snapshot holds all of it.
    let snapshot = registry.snapshot().await.unwrap();
    assert_eq!(snapshot.tenants.len(), 2);
    assert_eq!(snapshot.tenants[&acme].quotas.max_top_k, 7);
    assert_eq!(snapshot.tenant_for(&fingerprint), Some(&acme));
    assert_eq!(snapshot.tenant_for(&spiffe), Some(&acme));
    assert_eq!(snapshot.tenant_for(&subject), Some(&beta));
    assert_eq!(snapshot.tenant_for(&Binding::San("dns:x".into())), None);
    assert!(snapshot.is_revoked(&Revocation::Serial("abcd".into())));
    assert!(snapshot.is_revoked(&Revocation::Fingerprint(FP.into())));
    assert!(!snapshot.is_revoked(&Revocation::Serial("ab".into())));

    // One audit row per change (none for refusals or no-ops), newest first, with the actor.
    let audit = registry.audit(100).await.unwrap();
    let actions: Vec<_> = audit
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str(), e.tenant.as_ref()))
        .collect();
    assert_eq!(
        actions,
        [
            ("dave", "certificate.revoke", Some(&acme)),
            ("dave", "certificate.revoke", None),
            ("carol", "certificate.bind", Some(&beta)),
            ("carol", "certificate.unbind", Some(&acme)),
            ("carol", "certificate.bind", Some(&acme)),
            ("carol", "certificate.bind", Some(&acme)),
            ("carol", "certificate.bind", Some(&acme)),
            ("bob", "tenant.quotas", Some(&acme)),
            ("bob", "tenant.resume", Some(&acme)),
            ("bob", "tenant.suspend", Some(&acme)),
            ("alice", "tenant.create", Some(&beta)),
            ("alice", "tenant.create", Some(&acme)),
        ]
    );
    assert_eq!(audit[0].detail["reason"], "rotated");
    assert_eq!(audit[1].detail["value"], "abcd");
    assert_eq!(audit[6].detail["value"], FP);
    assert_eq!(audit[7].detail["to"]["max_top_k"], 7);
    assert_eq!(audit[7].detail["from"]["max_top_k"], 100);
    assert_eq!(audit[11].detail["name"], "Acme Corp");
    assert_eq!(registry.audit(2).await.unwrap(), audit[..2]);

    // A serial is revoked for its issuer only; a serial revoked from every issuer covers all.
    let issued_by = |issuer: &str, serial: &str| Revocation::IssuerSerial {
        issuer: issuer.into(),
        serial: serial.into(),
    };
    registry
        .revoke("dave", issued_by(" CN=CA One ", "00:12"), "lost")
        .await
        .unwrap();
    let snapshot = registry.snapshot().await.unwrap();
    assert!(snapshot.is_revoked(&issued_by("CN=CA One", "12")));
    assert!(!snapshot.is_revoked(&issued_by("CN=CA Two", "12")));
    assert!(!snapshot.is_revoked(&Revocation::Serial("12".into())));
    assert!(snapshot.is_revoked(&issued_by("CN=CA Two", "abcd")));
    assert_eq!(
        registry.audit(1).await.unwrap()[0].detail["value"],
        "12 CN=CA One"
    );

    assert!(matches!(
        registry
            .create_tenant(" ", &ghost, "Ghost", Quotas::default())
            .await,
        Err(TenantError::Invalid(_))
    ));
}

#[test]
fn canonical_forms() {
    let serial = |s: &str| {
        Revocation::Serial(s.into())
            .canonical()
            .map(|r| r.value().into_owned())
    };
    assert_eq!(serial("00:0A:BC").unwrap(), "0abc");
    assert_eq!(serial("abc").unwrap(), "0abc");
    assert_eq!(serial("0000").unwrap(), "00");
    assert!(serial("xyz").is_err());
    assert!(serial("").is_err());
    let san = |s: &str| {
        Binding::San(s.into())
            .canonical()
            .map(|b| b.value().to_owned())
    };
    assert_eq!(san("DNS:example.com").unwrap(), "dns:example.com");
    assert!(san("example.com").is_err());
    assert!(san("uri:").is_err());
    assert_eq!(
        "suspended".parse::<TenantState>().unwrap(),
        TenantState::Suspended
    );
    assert!("paused".parse::<TenantState>().is_err());
}

#[tokio::test]
async fn registry_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
    exercise(crate::db::connect(&url).await.unwrap()).await;
}

#[tokio::test]
async fn registry_on_postgres() {
    let url = crate::db::testing::fresh_postgres_database().await;
    exercise(crate::db::connect(&url).await.unwrap()).await;
}
