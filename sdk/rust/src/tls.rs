//! The client's mTLS identity: its certificate says which tenant it acts for.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::ConfigError;

/// A client certificate and key (PEM), and the CA that signed the gateway's certificate.
///
/// Without a CA the system's CAs are trusted (a gateway with a public certificate); a
/// development CA must be given. The key is never printed (`Debug` leaves it out).
#[derive(Clone, PartialEq, Eq)]
pub struct TlsCredentials {
    certificate_chain: Vec<u8>,
    private_key: Vec<u8>,
    root_certificates: Option<Vec<u8>>,
}

fn read(path: &Path, what: &'static str, hint: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::Read {
        what,
        path: path.to_owned(),
        hint: hint.to_owned(),
        source,
    })
}

impl TlsCredentials {
    /// From PEM bytes: the certificate (chain), its private key, and the CA to trust for the
    /// gateway's certificate (`None`: the system's CAs).
    pub fn from_pem(
        certificate_chain: impl Into<Vec<u8>>,
        private_key: impl Into<Vec<u8>>,
        root_certificates: Option<Vec<u8>>,
    ) -> Self {
        Self {
            certificate_chain: certificate_chain.into(),
            private_key: private_key.into(),
            root_certificates,
        }
    }

    /// From PEM files: the client certificate, its private key, and optionally the CA.
    pub fn from_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
        ca: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let credentials = Self::from_pem(
            read(cert.as_ref(), "the client certificate", "")?,
            read(key.as_ref(), "the client key", "")?,
            None,
        );
        match ca {
            Some(ca) => credentials.with_ca_file(ca),
            None => Ok(credentials),
        }
    }

    /// From a directory as `sluice-admin cert client TENANT --out DIRECTORY` writes it:
    /// `TENANT.pem` and `TENANT-key.pem`.
    ///
    /// The CA is the directory's `ca.pem` when there is one (as in a CA directory, where
    /// `deploy/dev/up` issues the demo tenant's certificate next to the CA), else the system's
    /// CAs; [`with_ca_file`](Self::with_ca_file) names another. Without `tenant`, the
    /// directory must hold exactly one client certificate and key pair (`ca` and `server`
    /// pairs are not client pairs).
    pub fn from_directory(
        directory: impl AsRef<Path>,
        tenant: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let root = directory.as_ref();
        if !root.is_dir() {
            return Err(ConfigError::NotADirectory(root.to_owned()));
        }
        let tenant = match tenant {
            Some(tenant) => tenant.to_owned(),
            None => only_tenant(root)?,
        };
        let hint = format!(
            " (sluice-admin cert client {tenant} --out {} writes it)",
            root.display()
        );
        let credentials = Self::from_pem(
            read(
                &root.join(format!("{tenant}.pem")),
                "the client certificate",
                &hint,
            )?,
            read(
                &root.join(format!("{tenant}-key.pem")),
                "the client key",
                &hint,
            )?,
            None,
        );
        let ca = root.join("ca.pem");
        if ca.exists() {
            return credentials.with_ca_file(&ca);
        }
        Ok(credentials)
    }

    /// Trusts the CA in this PEM file (instead of the system's CAs).
    pub fn with_ca_file(self, ca: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Ok(self.with_ca_pem(read(ca.as_ref(), "the CA certificate", "")?))
    }

    /// Trusts the CA in these PEM bytes (instead of the system's CAs).
    pub fn with_ca_pem(mut self, ca: impl Into<Vec<u8>>) -> Self {
        self.root_certificates = Some(ca.into());
        self
    }

    /// The client certificate (chain), PEM.
    pub fn certificate_chain(&self) -> &[u8] {
        &self.certificate_chain
    }

    /// The client key, PEM.
    pub fn private_key(&self) -> &[u8] {
        &self.private_key
    }

    /// The CA trusted for the gateway's certificate, PEM; `None`: the system's CAs.
    pub fn root_certificates(&self) -> Option<&[u8]> {
        self.root_certificates.as_deref()
    }

    pub(crate) fn tls_config(
        &self,
        server_name: Option<&str>,
    ) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut tls = ClientTlsConfig::new().identity(Identity::from_pem(
            &self.certificate_chain,
            &self.private_key,
        ));
        tls = match &self.root_certificates {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
            None => tls.with_native_roots(),
        };
        match server_name {
            Some(name) => tls.domain_name(name),
            None => tls,
        }
    }
}

impl fmt::Debug for TlsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCredentials")
            .field(
                "certificate_chain",
                &format_args!("{} bytes", self.certificate_chain.len()),
            )
            .field("private_key", &format_args!("(hidden)"))
            .field(
                "root_certificates",
                &self
                    .root_certificates
                    .as_ref()
                    .map(|ca| format!("{} bytes", ca.len())),
            )
            .finish()
    }
}

/// The tenant whose certificate and key are the only client pair in `root`.
fn only_tenant(root: &Path) -> Result<String, ConfigError> {
    let entries = std::fs::read_dir(root).map_err(|source| ConfigError::Read {
        what: "the certificate directory",
        path: root.to_owned(),
        hint: String::new(),
        source,
    })?;
    let mut tenants: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name != "ca-key.pem" && name != "server-key.pem")
        .filter_map(|name| name.strip_suffix("-key.pem").map(str::to_owned))
        .filter(|tenant| !tenant.is_empty() && root.join(format!("{tenant}.pem")).exists())
        .collect();
    tenants.sort();
    if tenants.len() == 1 {
        return Ok(tenants.remove(0));
    }
    Err(ConfigError::AmbiguousTenant {
        directory: PathBuf::from(root),
        found: tenants,
    })
}

#[cfg(test)]
mod tests {
    //! The files here are stand-ins: reading and choosing them is what is tested; the
    //! integration tests connect with real ones.

    use super::*;

    fn write(directory: &Path, names: &[&str]) {
        std::fs::create_dir_all(directory).unwrap();
        for name in names {
            std::fs::write(directory.join(name), format!("PEM of {name}")).unwrap();
        }
    }

    #[test]
    fn from_a_ca_directory_with_the_tenants_certificate() {
        let dir = tempfile::tempdir().unwrap();
        // deploy/dev/up issues the client certificate into the CA directory itself.
        let names = [
            "ca.pem",
            "ca-key.pem",
            "server.pem",
            "server-key.pem",
            "demo.pem",
            "demo-key.pem",
        ];
        write(dir.path(), &names);
        let credentials = TlsCredentials::from_directory(dir.path(), Some("demo")).unwrap();
        assert_eq!(credentials.certificate_chain(), b"PEM of demo.pem");
        assert_eq!(credentials.private_key(), b"PEM of demo-key.pem");
        assert_eq!(credentials.root_certificates(), Some(&b"PEM of ca.pem"[..]));
        // The tenant is the only client pair there: server.pem is not one.
        assert_eq!(
            TlsCredentials::from_directory(dir.path(), None).unwrap(),
            credentials
        );
        assert!(!format!("{credentials:?}").contains("PEM of demo-key"));
    }

    #[test]
    fn from_an_out_directory_without_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        // `sluice-admin cert client acme --out ./acme-certs` writes only the pair.
        write(
            &dir.path().join("acme-certs"),
            &["acme.pem", "acme-key.pem"],
        );
        write(&dir.path().join("ca"), &["ca.pem"]);
        let system = TlsCredentials::from_directory(dir.path().join("acme-certs"), None).unwrap();
        assert_eq!(system.root_certificates(), None);
        let given = system.with_ca_file(dir.path().join("ca/ca.pem")).unwrap();
        assert_eq!(given.root_certificates(), Some(&b"PEM of ca.pem"[..]));
    }

    #[test]
    fn several_tenants_need_a_name() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &["a.pem", "a-key.pem", "b.pem", "b-key.pem"]);
        let error = TlsCredentials::from_directory(dir.path(), None).unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with("holds 2 client certificates (a, b); name the tenant"),
            "{error}"
        );
        let b = TlsCredentials::from_directory(dir.path(), Some("b")).unwrap();
        assert_eq!(b.certificate_chain(), b"PEM of b.pem");
        let empty = tempfile::tempdir().unwrap();
        let error = TlsCredentials::from_directory(empty.path(), None).unwrap_err();
        assert!(error.to_string().contains("0 client certificates (none)"));
    }

    #[test]
    fn missing_files_say_what_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &["ca.pem"]);
        let error = TlsCredentials::from_directory(dir.path(), Some("acme")).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("does not exist (sluice-admin cert client acme --out"),
            "{error}"
        );
        let error =
            TlsCredentials::from_directory(dir.path().join("nope"), Some("acme")).unwrap_err();
        assert!(error.to_string().contains("is not a directory"), "{error}");
        let error =
            TlsCredentials::from_files(dir.path().join("ca.pem"), dir.path().join("key.pem"), None)
                .unwrap_err();
        assert!(error.to_string().starts_with("the client key "), "{error}");
    }

    #[test]
    fn from_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &["c.pem", "k.pem", "ca.pem"]);
        let p = |name: &str| dir.path().join(name);
        let credentials =
            TlsCredentials::from_files(p("c.pem"), p("k.pem"), Some(&p("ca.pem"))).unwrap();
        assert_eq!(credentials.certificate_chain(), b"PEM of c.pem");
        assert_eq!(credentials.private_key(), b"PEM of k.pem");
        assert_eq!(credentials.root_certificates(), Some(&b"PEM of ca.pem"[..]));
    }
}
