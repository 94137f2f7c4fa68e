package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "flotilla-ca-test-")
	if err != nil {
		panic(err)
	}
	toolDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// toolDir holds binaries built once per test process (cfssl).
var toolDir string

func newRoot(t *testing.T) RootCA {
	t.Helper()
	rca, err := CreateRootCA("")
	if err != nil {
		t.Fatalf("CreateRootCA: %v", err)
	}
	return rca
}

// issueNode generates a node key and has rca sign it.
func issueNode(t *testing.T, rca RootCA, nodeID string, role api.NodeRole, clusterID string, expiry time.Duration) (certPEM, keyPEM []byte) {
	t.Helper()
	keyPEM, csrPEM, err := GenerateKeyAndCSR()
	if err != nil {
		t.Fatalf("GenerateKeyAndCSR: %v", err)
	}
	certPEM, err = rca.IssueNodeCertificate(csrPEM, nodeID, role, clusterID, expiry)
	if err != nil {
		t.Fatalf("IssueNodeCertificate(%s): %v", nodeID, err)
	}
	return certPEM, keyPEM
}

// csrFor builds a CSR for priv with the given template.
func csrFor(t *testing.T, priv crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, priv)
	if err != nil {
		t.Fatalf("CreateCertificateRequest: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func mustParseCert(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	cert, err := parseOneCertPEM(certPEM)
	if err != nil {
		t.Fatalf("parse certificate: %v", err)
	}
	return cert
}

func writeTemp(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// hostileSubject is what a CSR that tries to choose its own identity asks for.
var hostileSubject = pkix.Name{CommonName: "admin", OrganizationalUnit: []string{ManagerRoleOU}, Organization: []string{"other-cluster"}}
