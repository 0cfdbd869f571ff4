package sluice

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Credentials are the client's mTLS identity: a certificate (its tenant is the one the client
// acts for) and key, PEM, and the CA that signed the gateway's certificate. RootCAs nil trusts
// the system's CAs (a gateway with a public certificate); a development CA must be given.
type Credentials struct {
	CertificateChain []byte
	PrivateKey       []byte
	RootCAs          []byte
}

// String leaves the key out.
func (c *Credentials) String() string {
	return fmt.Sprintf("sluice.Credentials{certificate %d bytes, key hidden, CA %d bytes}", len(c.CertificateChain), len(c.RootCAs))
}

func readPEM(path, what, hint string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s %s does not exist%s: %w", what, path, hint, os.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	return data, nil
}

// CredentialsFromFiles reads PEM files: the client certificate, its private key, and the CA
// (empty: the system's CAs).
func CredentialsFromFiles(cert, key, ca string) (*Credentials, error) {
	c := &Credentials{}
	var err error
	if c.CertificateChain, err = readPEM(cert, "the client certificate", ""); err != nil {
		return nil, err
	}
	if c.PrivateKey, err = readPEM(key, "the client key", ""); err != nil {
		return nil, err
	}
	if ca != "" {
		if c.RootCAs, err = readPEM(ca, "the CA certificate", ""); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// CredentialsFromDirectory reads a directory as `sluice-admin cert client TENANT --out DIR`
// writes it: TENANT.pem and TENANT-key.pem. The CA is ca when given, else the directory's
// ca.pem when there is one (as in a CA directory, where deploy/dev/up issues the demo
// tenant's certificate), else the system's CAs. With tenant empty, the directory must hold
// exactly one such pair.
func CredentialsFromDirectory(dir, tenant, ca string) (*Credentials, error) {
	if info, err := os.Stat(dir); err != nil || !info.IsDir() {
		return nil, fmt.Errorf("%s is not a directory: %w", dir, os.ErrNotExist)
	}
	if tenant == "" {
		var err error
		if tenant, err = onlyTenant(dir); err != nil {
			return nil, err
		}
	}
	hint := fmt.Sprintf(" (sluice-admin cert client %s --out %s writes it)", tenant, dir)
	c := &Credentials{}
	var err error
	if c.CertificateChain, err = readPEM(filepath.Join(dir, tenant+".pem"), "the client certificate", hint); err != nil {
		return nil, err
	}
	if c.PrivateKey, err = readPEM(filepath.Join(dir, tenant+"-key.pem"), "the client key", hint); err != nil {
		return nil, err
	}
	caPath := ca
	if caPath == "" {
		caPath = filepath.Join(dir, "ca.pem")
		if _, err := os.Stat(caPath); err != nil {
			return c, nil
		}
	}
	if c.RootCAs, err = readPEM(caPath, "the CA certificate", ""); err != nil {
		return nil, err
	}
	return c, nil
}

// onlyTenant is the tenant whose certificate and key are the only pair in dir.
func onlyTenant(dir string) (string, error) {
	keys, err := filepath.Glob(filepath.Join(dir, "*-key.pem"))
	if err != nil {
		return "", err
	}
	var tenants []string
	for _, key := range keys {
		name := filepath.Base(key)
		if name == "ca-key.pem" || name == "server-key.pem" {
			continue
		}
		tenant := strings.TrimSuffix(name, "-key.pem")
		if _, err := os.Stat(filepath.Join(dir, tenant+".pem")); err == nil {
			tenants = append(tenants, tenant)
		}
	}
	sort.Strings(tenants)
	if len(tenants) != 1 {
		found := strings.Join(tenants, ", ")
		if found == "" {
			found = "none"
		}
		return "", fmt.Errorf("%s holds %d client certificates (%s); name the tenant", dir, len(tenants), found)
	}
	return tenants[0], nil
}

// tlsConfig is the client's TLS configuration: its certificate, and the CA to check the
// gateway's against.
func (c *Credentials) tlsConfig(serverName string) (*tls.Config, error) {
	pair, err := tls.X509KeyPair(c.CertificateChain, c.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("sluice: the client certificate and key do not make a pair: %w", err)
	}
	config := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12, ServerName: serverName}
	if c.RootCAs != nil {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(c.RootCAs) {
			return nil, errors.New("sluice: the CA file holds no PEM certificate")
		}
		config.RootCAs = pool
	}
	return config, nil
}
