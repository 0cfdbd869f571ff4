//! Certificates: a development certificate authority that issues server and tenant client
//! certificates (rcgen), and reading a certificate back into the identity the registry knows
//! it by (x509-parser).
//!
//! Issued certificates are ECDSA P-256 with what rustls' WebPKI verifiers require: the CA is
//! marked as one (basic constraints, `keyCertSign`), leaves carry `digitalSignature` and the
//! serverAuth or clientAuth extended key usage. A tenant's client certificate names the
//! tenant in a SPIFFE URI SAN, `spiffe://<trust domain>/tenant/<tenant id>`.
//!
//! Validity dates are taken as given, even in the past, so tests can make expired
//! certificates.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use anyhow::{bail, ensure, Context};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use sluice_core::tenant::TenantId;
use sluice_core::tenants::{Binding, Revocation};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

/// Certificates start this long before they are issued, so a client or server whose clock is
/// a little behind the issuer's accepts them straight away.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// A certificate authority: its certificate and the key that signs what it issues.
pub struct Authority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Authority {
    // Never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// A new self-signed CA that may sign leaf certificates (no intermediates).
    pub fn generate(common_name: &str, valid_for: Duration) -> anyhow::Result<Self> {
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_only(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + valid_for).into();
        params.serial_number = Some(random_serial());
        let key = KeyPair::generate().context("generating the CA key")?;
        let cert = params
            .self_signed(&key)
            .context("signing the CA certificate")?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its certificate and PKCS#8 private key, as [`cert_pem`](Self::cert_pem) and
    /// [`key_pem`](Self::key_pem) wrote them.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        let der = first_certificate(cert_pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| anyhow::anyhow!("the CA certificate does not parse: {e}"))?;
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        ensure!(is_ca, "the certificate is not a CA certificate");
        let key = KeyPair::from_pem(key_pem).context("the CA key does not parse")?;
        ensure!(
            key.subject_public_key_info() == cert.public_key().raw,
            "the CA key does not belong to the CA certificate"
        );
        let issuer = Issuer::from_ca_cert_der(&der.clone().into(), key)
            .context("the CA certificate cannot issue")?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA's private key, PKCS#8 PEM. Keep it out of anything shared.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a certificate with a new key.
    pub fn issue(&self, spec: &CertSpec) -> anyhow::Result<Issued> {
        ensure!(
            spec.not_before < spec.not_after,
            "the certificate would end before it starts"
        );
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_only(&spec.common_name);
        for uri in &spec.uri_sans {
            params.subject_alt_names.push(SanType::URI(ia5(uri)?));
        }
        for name in &spec.dns_sans {
            params.subject_alt_names.push(SanType::DnsName(ia5(name)?));
        }
        for ip in &spec.ip_sans {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if spec.server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        params.use_authority_key_identifier_extension = true;
        params.not_before = OffsetDateTime::from(spec.not_before);
        params.not_after = OffsetDateTime::from(spec.not_after);
        params.serial_number = Some(random_serial());
        let key = KeyPair::generate().context("generating a key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing the certificate")?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            identity: CertificateIdentity::from_der(cert.der())?,
        })
    }
}

/// What to put in a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    pub common_name: String,
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    pub ip_sans: Vec<IpAddr>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// A server certificate (serverAuth) rather than a client one (clientAuth).
    pub server: bool,
}

impl CertSpec {
    /// A client certificate for a tenant: CN is the tenant id, and the SPIFFE URI SAN
    /// `spiffe://<trust_domain>/tenant/<tenant>` names it.
    pub fn client_for_tenant(trust_domain: &str, tenant: &TenantId, valid_for: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            common_name: tenant.to_string(),
            uri_sans: vec![spiffe_uri(trust_domain, tenant.as_str())],
            dns_sans: Vec::new(),
            ip_sans: Vec::new(),
            not_before: now - CLOCK_SKEW,
            not_after: now + valid_for,
            server: false,
        }
    }

    /// A client certificate for a worker (`sluice-worker` reading schemas through the
    /// gateway's registry API): CN `sluice-worker <name>`, and the SPIFFE URI SAN
    /// `spiffe://<trust_domain>/worker/<name>` names it. It acts for no tenant.
    pub fn client_for_worker(trust_domain: &str, name: &str, valid_for: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            common_name: format!("sluice-worker {name}"),
            uri_sans: vec![spiffe_worker_uri(trust_domain, name)],
            dns_sans: Vec::new(),
            ip_sans: Vec::new(),
            not_before: now - CLOCK_SKEW,
            not_after: now + valid_for,
            server: false,
        }
    }

    /// A server certificate for these host names and IP addresses (`localhost`,
    /// `127.0.0.1`); the first one is also the CN.
    pub fn server(names: &[&str], valid_for: Duration) -> Self {
        let now = SystemTime::now();
        let (ips, hosts): (Vec<&str>, Vec<&str>) = names
            .iter()
            .copied()
            .partition(|n| n.parse::<IpAddr>().is_ok());
        Self {
            common_name: names.first().unwrap_or(&"sluice-gateway").to_string(),
            uri_sans: Vec::new(),
            dns_sans: hosts.into_iter().map(str::to_owned).collect(),
            ip_sans: ips.into_iter().filter_map(|ip| ip.parse().ok()).collect(),
            not_before: now - CLOCK_SKEW,
            not_after: now + valid_for,
            server: true,
        }
    }
}

/// A newly issued certificate, its private key, and what the registry will know it by.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub identity: CertificateIdentity,
}

/// A certificate as the registry sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateIdentity {
    /// Lowercase hex SHA-256 of the DER.
    pub fingerprint: String,
    /// Lowercase hex, no colons, leading zero bytes stripped.
    pub serial: String,
    /// The issuer's name, written as `subject` is.
    pub issuer: String,
    /// In x509-parser's display form, e.g. `CN=alice, O=Acme`, with the characters RFC 4514
    /// escapes (`,` `+` `"` `\` `<` `>` `;`, and a leading `#` or space) escaped in values: a
    /// value containing `, O=Acme` cannot pass for a second attribute, so a subject binding
    /// matches only the structured name it was written for.
    pub subject: String,
    /// `uri:…`, `dns:…`, `email:…`, `ip:…`, in certificate order; other kinds are left out.
    pub sans: Vec<String>,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

impl CertificateIdentity {
    pub fn from_der(der: &[u8]) -> anyhow::Result<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| anyhow::anyhow!("the certificate does not parse: {e}"))?;
        let mut sans = Vec::new();
        let alt_names = cert
            .subject_alternative_name()
            .map_err(|e| anyhow::anyhow!("the subject alternative names do not parse: {e}"))?;
        for name in alt_names.iter().flat_map(|ext| &ext.value.general_names) {
            match name {
                GeneralName::URI(uri) => sans.push(format!("uri:{uri}")),
                GeneralName::DNSName(dns) => sans.push(format!("dns:{dns}")),
                GeneralName::RFC822Name(email) => sans.push(format!("email:{email}")),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        sans.push(format!("ip:{ip}"));
                    }
                }
                _ => {}
            }
        }
        let serial = cert.raw_serial();
        let significant = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
        let serial = match lower_hex(&serial[significant..]) {
            zero if zero.is_empty() => "00".to_owned(),
            hex => hex,
        };
        Ok(Self {
            fingerprint: lower_hex(&Sha256::digest(der)),
            serial,
            subject: escaped_name(cert.subject()),
            issuer: escaped_name(cert.issuer()),
            sans,
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// The first certificate in a PEM file (the leaf, in a chain).
    pub fn from_pem(pem: &str) -> anyhow::Result<Self> {
        Self::from_der(&first_certificate(pem)?)
    }

    /// The tenant id in the SPIFFE URI SAN `spiffe://<trust_domain>/tenant/<id>`, as
    /// written: the caller validates it. `None` when there is none, or more than one (a
    /// SPIFFE identity is exactly one URI).
    pub fn spiffe_tenant(&self, trust_domain: &str) -> Option<String> {
        self.spiffe_name(&spiffe_uri(trust_domain, ""))
    }

    /// The worker name in the SPIFFE URI SAN `spiffe://<trust_domain>/worker/<name>`, as for
    /// [`Self::spiffe_tenant`].
    pub fn spiffe_worker(&self, trust_domain: &str) -> Option<String> {
        self.spiffe_name(&spiffe_worker_uri(trust_domain, ""))
    }

    /// What follows `prefix` in the certificate's one SPIFFE URI SAN.
    fn spiffe_name(&self, prefix: &str) -> Option<String> {
        let prefix = format!("uri:{prefix}");
        let mut names = self
            .sans
            .iter()
            .filter_map(|san| san.strip_prefix(&prefix))
            .filter(|id| !id.is_empty());
        match (names.next(), names.next()) {
            (Some(id), None) => Some(id.to_owned()),
            _ => None,
        }
    }

    /// Every identity a binding could name this certificate by: the fingerprint, the subject
    /// (unless empty), then each SAN.
    pub fn bindings(&self) -> Vec<Binding> {
        let mut bindings = vec![Binding::Fingerprint(self.fingerprint.clone())];
        if !self.subject.is_empty() {
            bindings.push(Binding::Subject(self.subject.clone()));
        }
        bindings.extend(self.sans.iter().cloned().map(Binding::San));
        bindings
    }

    /// The two ways this certificate is revoked: its issuer's serial, its fingerprint. (A
    /// revocation of its serial from every issuer covers it too: see
    /// `TenantSnapshot::is_revoked`.)
    pub fn revocations(&self) -> [Revocation; 2] {
        [
            Revocation::IssuerSerial {
                issuer: self.issuer.clone(),
                serial: self.serial.clone(),
            },
            Revocation::Fingerprint(self.fingerprint.clone()),
        ]
    }
}

/// A distinguished name as `CN=a, O=b` (RDNs joined by ", ", multi-valued RDNs by " + "),
/// each value escaped as RFC 4514 requires; values that are not strings as `#` and hex.
fn escaped_name(name: &x509_parser::x509::X509Name<'_>) -> String {
    use x509_parser::objects::{oid2abbrev, oid_registry};
    name.iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let kind = oid2abbrev(attr.attr_type(), oid_registry())
                        .map(str::to_owned)
                        .unwrap_or_else(|_| attr.attr_type().to_id_string());
                    let value = match attr.as_str() {
                        Ok(text) => escape_value(text),
                        Err(_) => format!("#{}", lower_hex(attr.attr_value().data)),
                    };
                    format!("{kind}={value}")
                })
                .collect::<Vec<_>>()
                .join(" + ")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// RFC 4514 section 2.4: a backslash before `"` `+` `,` `;` `<` `>` `\`, a leading `#` or
/// space and a trailing space.
fn escape_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn spiffe_uri(trust_domain: &str, tenant: &str) -> String {
    format!("spiffe://{trust_domain}/tenant/{tenant}")
}

fn spiffe_worker_uri(trust_domain: &str, name: &str) -> String {
    format!("spiffe://{trust_domain}/worker/{name}")
}

fn common_name_only(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn ia5(value: &str) -> anyhow::Result<Ia5String> {
    Ia5String::try_from(value).with_context(|| format!("{value:?} is not ASCII"))
}

/// 16 bytes, over 100 of their bits random (RFC 5280 wants serials unique, positive and at
/// most 20 bytes; CA/Browser Forum rules want 64 unpredictable bits). The first byte is
/// 0x40-0x7f, so the serial is positive and never starts with a zero byte.
fn random_serial() -> SerialNumber {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[0] = 0x40 | (bytes[0] & 0x3f);
    SerialNumber::from_slice(&bytes)
}

fn first_certificate(pem: &str) -> anyhow::Result<Vec<u8>> {
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.context("the PEM does not parse")?;
        if block.label == "CERTIFICATE" {
            return Ok(block.contents);
        }
    }
    bail!("no CERTIFICATE block in the PEM")
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).ok()?,
        ))),
        _ => None,
    }
}

fn lower_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::server::danger::ClientCertVerifier;
    use rustls::server::WebPkiClientVerifier;
    use rustls::{CertificateError, RootCertStore};

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from(first_certificate(pem).unwrap())
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn client_verifier(ca: &Authority) -> Arc<dyn ClientCertVerifier> {
        let mut roots = RootCertStore::empty();
        roots.add(der(&ca.cert_pem())).unwrap();
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap()
    }

    fn verify_client(ca: &Authority, issued: &Issued) -> Result<(), rustls::Error> {
        client_verifier(ca)
            .verify_client_cert(&der(&issued.cert_pem), &[], UnixTime::now())
            .map(drop)
    }

    #[test]
    fn a_subject_value_cannot_pass_for_another_attribute() {
        let ca = Authority::generate("Sluice test CA", DAY).unwrap();
        let acme = TenantId::parse("acme").unwrap();
        let mut spec = CertSpec::client_for_tenant("sluice.local", &acme, DAY);
        spec.common_name = "evil, O=Acme".into();
        spec.uri_sans.clear();
        let issued = ca.issue(&spec).unwrap();
        let identity = CertificateIdentity::from_pem(&issued.cert_pem).unwrap();
        assert_eq!(identity.subject, r"CN=evil\, O=Acme");
        // A binding written for CN=evil, O=Acme does not match it.
        assert!(!identity
            .bindings()
            .contains(&Binding::Subject("CN=evil, O=Acme".into())));
        assert_eq!(
            escape_value(r#" #a+b;c<d>e"f\g "#),
            r#"\ #a\+b\;c\<d\>e\"f\\g\ "#
        );
    }

    #[test]
    fn client_certificate_reads_back() {
        let ca = Authority::generate("Sluice test CA", DAY).unwrap();
        let acme = TenantId::parse("acme").unwrap();
        let issued = ca
            .issue(&CertSpec::client_for_tenant("sluice.local", &acme, DAY))
            .unwrap();

        let identity = CertificateIdentity::from_pem(&issued.cert_pem).unwrap();
        assert_eq!(identity, issued.identity);
        let expected_fingerprint = lower_hex(&Sha256::digest(der(&issued.cert_pem)));
        assert_eq!(identity.fingerprint, expected_fingerprint);
        assert_eq!(identity.subject, "CN=acme");
        assert_eq!(identity.sans, ["uri:spiffe://sluice.local/tenant/acme"]);
        assert_eq!(
            identity.spiffe_tenant("sluice.local").as_deref(),
            Some("acme")
        );
        assert_eq!(identity.spiffe_tenant("other.domain"), None);
        let expected_not_after = (SystemTime::now() + DAY)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((identity.not_after - expected_not_after).abs() < 60);

        // The serial as openssl would print it, without colons or a leading zero byte.
        let cert_der = der(&issued.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
        assert_eq!(
            identity.serial,
            cert.raw_serial_as_string()
                .replace(':', "")
                .trim_start_matches("00")
        );
        assert_eq!(identity.serial.len(), 32, "{}", identity.serial);
        let again = ca
            .issue(&CertSpec::client_for_tenant("sluice.local", &acme, DAY))
            .unwrap();
        assert_ne!(again.identity.serial, identity.serial);

        assert_eq!(
            identity.bindings(),
            [
                Binding::Fingerprint(identity.fingerprint.clone()),
                Binding::Subject("CN=acme".into()),
                Binding::San("uri:spiffe://sluice.local/tenant/acme".into()),
            ]
        );
        assert_eq!(
            identity.revocations(),
            [
                Revocation::IssuerSerial {
                    issuer: "CN=Sluice test CA".into(),
                    serial: identity.serial.clone(),
                },
                Revocation::Fingerprint(identity.fingerprint.clone()),
            ]
        );
        assert_eq!(identity.issuer, "CN=Sluice test CA");
    }

    #[test]
    fn rustls_accepts_our_client_certificates_and_refuses_others() {
        let ca = Authority::generate("Sluice test CA", DAY).unwrap();
        let acme = TenantId::parse("acme").unwrap();
        let good = ca
            .issue(&CertSpec::client_for_tenant("sluice.local", &acme, DAY))
            .unwrap();
        verify_client(&ca, &good).unwrap();

        let mut expired_spec = CertSpec::client_for_tenant("sluice.local", &acme, DAY);
        expired_spec.not_before = SystemTime::now() - 2 * DAY;
        expired_spec.not_after = SystemTime::now() - DAY;
        let expired = ca.issue(&expired_spec).unwrap();
        assert!(matches!(
            verify_client(&ca, &expired),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ));

        let stranger = Authority::generate("Another CA", DAY).unwrap();
        let foreign = stranger
            .issue(&CertSpec::client_for_tenant("sluice.local", &acme, DAY))
            .unwrap();
        assert!(matches!(
            verify_client(&ca, &foreign),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        ));

        // A server certificate is not a client certificate.
        let server = ca.issue(&CertSpec::server(&["localhost"], DAY)).unwrap();
        assert!(verify_client(&ca, &server).is_err());
    }

    #[test]
    fn rustls_accepts_our_server_certificates_by_name_and_address() {
        let ca = Authority::generate("Sluice test CA", DAY).unwrap();
        let spec = CertSpec::server(&["localhost", "127.0.0.1", "::1"], DAY);
        assert_eq!(spec.dns_sans, ["localhost"]);
        assert_eq!(spec.ip_sans.len(), 2);
        let server = ca.issue(&spec).unwrap();
        assert_eq!(
            server.identity.sans,
            ["dns:localhost", "ip:127.0.0.1", "ip:::1"]
        );

        let mut roots = RootCertStore::empty();
        roots.add(der(&ca.cert_pem())).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let verify = |name: &str| {
            verifier.verify_server_cert(
                &der(&server.cert_pem),
                &[],
                &ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                UnixTime::now(),
            )
        };
        verify("localhost").unwrap();
        verify("127.0.0.1").unwrap();
        assert!(verify("example.com").is_err());
    }

    #[test]
    fn authority_round_trips_through_pem() {
        let ca = Authority::generate("Sluice test CA", DAY).unwrap();
        let loaded = Authority::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        let acme = TenantId::parse("acme").unwrap();
        let issued = loaded
            .issue(&CertSpec::client_for_tenant("sluice.local", &acme, DAY))
            .unwrap();
        verify_client(&ca, &issued).unwrap();

        let other = Authority::generate("Another CA", DAY).unwrap();
        assert!(Authority::from_pem(&ca.cert_pem(), &other.key_pem()).is_err());
        // A leaf is no CA.
        assert!(Authority::from_pem(&issued.cert_pem, &issued.key_pem).is_err());
    }
}
