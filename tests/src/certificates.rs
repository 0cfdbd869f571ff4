//! A test PKI: a CA, the gateway's certificate and client certificates, made with rcgen
//! (through `sluice-pki`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_gateway::tenancy::pki::{Authority, CertSpec, Issued};

use crate::stack::tenant_id;

/// A CA (written to `ca.pem`, the gateway's client CA bundle), the gateway's certificate
/// (`server.pem`, `server-key.pem`, for localhost and 127.0.0.1) and client certificates.
pub struct TestPki {
    pub dir: PathBuf,
    pub ca: Authority,
    pub trust_domain: String,
}

impl TestPki {
    pub fn create(dir: &Path) -> TestPki {
        std::fs::create_dir_all(dir).expect("tls dir");
        let pki = TestPki {
            dir: dir.to_owned(),
            ca: Authority::generate("Sluice test CA", Duration::from_secs(86_400)).expect("CA"),
            trust_domain: "sluice.local".into(),
        };
        pki.install(&pki.ca);
        pki
    }

    /// Makes `ca` the gateway's client CA and has it sign a new server certificate; the
    /// gateway picks both up on its next reload.
    pub fn install(&self, ca: &Authority) {
        let server = ca
            .issue(&CertSpec::server(
                &["localhost", "127.0.0.1"],
                Duration::from_secs(86_400),
            ))
            .expect("server certificate");
        // The key first, the bundle last: a reload seeing half of it keeps the old files.
        std::fs::write(self.dir.join("server-key.pem"), &server.key_pem).unwrap();
        std::fs::write(self.dir.join("server.pem"), &server.cert_pem).unwrap();
        std::fs::write(self.dir.join("ca.pem"), ca.cert_pem()).unwrap();
    }

    /// A client certificate for `tenant` (URI SAN spiffe://sluice.local/tenant/<tenant>).
    pub fn client(&self, tenant: &str) -> Issued {
        self.ca
            .issue(&CertSpec::client_for_tenant(
                &self.trust_domain,
                &tenant_id(tenant),
                Duration::from_secs(3600),
            ))
            .expect("client certificate")
    }

    /// A worker's client certificate (URI SAN spiffe://sluice.local/worker/<name>).
    pub fn worker(&self, name: &str) -> Issued {
        self.ca
            .issue(&CertSpec::client_for_worker(
                &self.trust_domain,
                name,
                Duration::from_secs(3600),
            ))
            .expect("worker certificate")
    }
}
