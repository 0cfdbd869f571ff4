package sluice

// Credentials from PEM files and from a directory as `sluice-admin cert client` writes it.
// (The files here are stand-ins: reading and choosing them is what is tested; the integration
// tests connect with real ones.)

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, dir string, names ...string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("PEM of "+name), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFromACADirectoryWithTheTenantsCertificate(t *testing.T) {
	dir := t.TempDir()
	// deploy/dev/up issues the client certificate into the CA directory itself.
	write(t, dir, "ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "demo.pem", "demo-key.pem")
	c, err := CredentialsFromDirectory(dir, "demo", "")
	if err != nil {
		t.Fatal(err)
	}
	if string(c.CertificateChain) != "PEM of demo.pem" || string(c.PrivateKey) != "PEM of demo-key.pem" || string(c.RootCAs) != "PEM of ca.pem" {
		t.Error(c)
	}
	// The tenant is the only client pair there: server.pem is not one.
	only, err := CredentialsFromDirectory(dir, "", "")
	if err != nil || string(only.CertificateChain) != "PEM of demo.pem" {
		t.Error(only, err)
	}
	if strings.Contains(c.String(), "PEM of demo-key") {
		t.Error("the key is printed")
	}
}

func TestFromAnOutDirectoryWithoutTheCA(t *testing.T) {
	dir := t.TempDir()
	// `sluice-admin cert client acme --out ./acme-certs` writes only acme.pem and acme-key.pem.
	write(t, filepath.Join(dir, "acme-certs"), "acme.pem", "acme-key.pem")
	write(t, filepath.Join(dir, "ca"), "ca.pem")
	c, err := CredentialsFromDirectory(filepath.Join(dir, "acme-certs"), "", "")
	if err != nil || c.RootCAs != nil { // the system's CAs
		t.Error(c, err)
	}
	given, err := CredentialsFromDirectory(filepath.Join(dir, "acme-certs"), "", filepath.Join(dir, "ca", "ca.pem"))
	if err != nil || string(given.RootCAs) != "PEM of ca.pem" {
		t.Error(given, err)
	}
}

func TestSeveralTenantsNeedAName(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "a.pem", "a-key.pem", "b.pem", "b-key.pem")
	if _, err := CredentialsFromDirectory(dir, "", ""); err == nil || !strings.Contains(err.Error(), "2 client certificates (a, b); name the tenant") {
		t.Error(err)
	}
	if c, err := CredentialsFromDirectory(dir, "b", ""); err != nil || string(c.CertificateChain) != "PEM of b.pem" {
		t.Error(c, err)
	}
}

func TestMissingFilesSayWhatWritesThem(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "ca.pem")
	if _, err := CredentialsFromDirectory(dir, "acme", ""); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "sluice-admin cert client acme --out") {
		t.Error(err)
	}
	if _, err := CredentialsFromDirectory(filepath.Join(dir, "nope"), "acme", ""); err == nil || !strings.Contains(err.Error(), "is not a directory") {
		t.Error(err)
	}
	if _, err := CredentialsFromFiles(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "key.pem"), ""); err == nil || !strings.Contains(err.Error(), "the client key") {
		t.Error(err)
	}
	// Stand-ins are not a certificate: connecting says so before any call.
	if _, err := FromFiles("127.0.0.1:1", filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.pem"), ""); err == nil || !strings.Contains(err.Error(), "do not make a pair") {
		t.Error(err)
	}
}

func TestFromFiles(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "c.pem", "k.pem", "ca.pem")
	c, err := CredentialsFromFiles(filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem"), filepath.Join(dir, "ca.pem"))
	if err != nil || string(c.CertificateChain) != "PEM of c.pem" || string(c.PrivateKey) != "PEM of k.pem" || string(c.RootCAs) != "PEM of ca.pem" {
		t.Error(c, err)
	}
}
