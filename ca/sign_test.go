package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
)

func TestCreateRootCA(t *testing.T) {
	rca := newRoot(t)
	cert := rca.Certificate()
	if !cert.IsCA || cert.Subject.CommonName != DefaultRootCAName {
		t.Fatalf("root: IsCA=%v CN=%q", cert.IsCA, cert.Subject.CommonName)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Fatalf("root key is %T, want ECDSA P-256", cert.PublicKey)
	}
	if v := cert.NotAfter.Sub(cert.NotBefore); v < RootCAExpiry || v > RootCAExpiry+time.Hour {
		t.Fatalf("root validity %s, want about 20 years", v)
	}
	if !rca.CanSign() || len(rca.Key) == 0 {
		t.Fatal("a new root CA must hold its key")
	}
	if len(rca.Digest()) != digestLen {
		t.Fatalf("digest %q is not %d characters", rca.Digest(), digestLen)
	}
}

func TestParseRootCAChecksTheKey(t *testing.T) {
	a, b := newRoot(t), newRoot(t)
	if _, err := ParseRootCA(a.Cert, b.Key); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("ParseRootCA(cert A, key B) = %v, want a key mismatch error", err)
	}
	certOnly, err := ParseRootCA(a.Cert, nil)
	if err != nil {
		t.Fatal(err)
	}
	if certOnly.CanSign() || certOnly.Digest() != a.Digest() {
		t.Fatalf("cert-only root: CanSign=%v digest=%s, want false and %s", certOnly.CanSign(), certOnly.Digest(), a.Digest())
	}
	if _, err := certOnly.Signer(); !errors.Is(err, ErrNoSigningKey) {
		t.Fatalf("Signer() of a cert-only root = %v, want ErrNoSigningKey", err)
	}
	_, csr, _ := GenerateKeyAndCSR()
	if _, err := certOnly.IssueNodeCertificate(csr, "n1", api.NodeRoleWorker, "c1", time.Hour); !errors.Is(err, ErrNoSigningKey) {
		t.Fatalf("IssueNodeCertificate without the key = %v, want ErrNoSigningKey", err)
	}
	leaf, _ := issueNode(t, a, "n1", api.NodeRoleWorker, "c1", time.Hour)
	if _, err := ParseRootCA(leaf, nil); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Fatalf("ParseRootCA(node certificate) = %v, want 'not a CA'", err)
	}
	again, err := ParseRootCA(a.Cert, a.Key)
	if err != nil || !again.CanSign() || again.Digest() != a.Digest() {
		t.Fatalf("round trip: %v", err)
	}
}

// TestCASetsSubjectNotTheCSR: a CSR asking for CN=admin, OU=swarm-manager
// signed with the worker role gets a worker certificate for its node ID.
func TestCASetsSubjectNotTheCSR(t *testing.T) {
	rca := newRoot(t)
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.CertificateRequest{
		Subject:     hostileSubject,
		DNSNames:    []string{ManagerRoleOU, "evil.example"},
		IPAddresses: []net.IP{net.ParseIP("10.0.0.1")},
	}
	csr := csrFor(t, priv, tmpl)
	before := time.Now()
	certPEM, err := rca.IssueNodeCertificate(csr, "node1", api.NodeRoleWorker, "cluster1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(certPEM, []byte("BEGIN CERTIFICATE")); n != 1 {
		t.Fatalf("got %d certificates, want the leaf only", n)
	}
	cert := mustParseCert(t, certPEM)
	if cert.Subject.CommonName != "node1" || !slices.Equal(cert.Subject.OrganizationalUnit, []string{WorkerRoleOU}) ||
		!slices.Equal(cert.Subject.Organization, []string{"cluster1"}) {
		t.Fatalf("subject %v, want CN=node1 OU=swarm-worker O=cluster1", cert.Subject)
	}
	if len(cert.Subject.Country)+len(cert.Subject.Locality)+len(cert.Subject.ExtraNames) != 0 {
		t.Fatalf("subject %v carries names from the CSR", cert.Subject)
	}
	if !slices.Equal(cert.DNSNames, []string{WorkerRoleOU, "node1"}) || len(cert.IPAddresses) != 0 {
		t.Fatalf("SANs DNS=%v IP=%v, want [swarm-worker node1] and no IPs", cert.DNSNames, cert.IPAddresses)
	}
	if cert.VerifyHostname(ManagerServerName) == nil {
		t.Fatal("a worker certificate must not be valid for the manager server name")
	}
	if cert.IsCA {
		t.Fatal("node certificate is a CA")
	}
	if cert.KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment {
		t.Fatalf("key usage %b, want digital signature + key encipherment", cert.KeyUsage)
	}
	if !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth) || len(cert.ExtKeyUsage) != 2 {
		t.Fatalf("ext key usage %v, want server auth and client auth", cert.ExtKeyUsage)
	}
	if !cert.NotBefore.Before(before.Add(-CertBackdate + time.Minute)) {
		t.Fatalf("NotBefore %s is not backdated from %s", cert.NotBefore, before)
	}
	if v := cert.NotAfter.Sub(before); v < DefaultNodeCertExpiry-time.Minute || v > DefaultNodeCertExpiry+time.Minute {
		t.Fatalf("validity from now %s, want the default %s", v, DefaultNodeCertExpiry)
	}
	if !priv.PublicKey.Equal(cert.PublicKey) {
		t.Fatal("certificate is not for the CSR's key")
	}
	id, err := ParseNodeCertificate(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	if id.NodeID != "node1" || id.Role != api.NodeRoleWorker || id.ClusterID != "cluster1" || !id.NotAfter.Equal(cert.NotAfter) {
		t.Fatalf("identity %+v", id)
	}

	mgrPEM, err := rca.IssueNodeCertificate(csr, "node2", api.NodeRoleManager, "cluster1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	mgr := mustParseCert(t, mgrPEM)
	if err := mgr.VerifyHostname(ManagerServerName); err != nil {
		t.Fatalf("manager certificate is not valid for %q: %v", ManagerServerName, err)
	}
	if id, _ := IdentityFromCertificate(mgr); id.Role != api.NodeRoleManager {
		t.Fatalf("manager certificate identity %+v", id)
	}
}

func TestCARefusesACSRAskingForCA(t *testing.T) {
	rca := newRoot(t)
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	// A basic constraints extension saying CA:TRUE.
	bc := []byte{0x30, 0x03, 0x01, 0x01, 0xff}
	tmpl := &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bc}}}
	certPEM, err := rca.IssueNodeCertificate(csrFor(t, priv, tmpl), "node1", api.NodeRoleManager, "c", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if cert := mustParseCert(t, certPEM); cert.IsCA {
		t.Fatal("the CA issued a CA certificate because the CSR asked for one")
	}
}

func TestCARejectsWeakOrForgedCSRs(t *testing.T) {
	rca := newRoot(t)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	_, good, _ := GenerateKeyAndCSR()

	forged := tamperCSR(t, good)

	cases := []struct {
		name    string
		csr     []byte
		wantErr string // "" = accepted
	}{
		{"ECDSA P-256", good, ""},
		{"ECDSA P-384", csrFor(t, p384, &x509.CertificateRequest{}), ""},
		{"RSA 2048", csrFor(t, rsa2048, &x509.CertificateRequest{}), ""},
		{"RSA 1024", csrFor(t, rsa1024, &x509.CertificateRequest{}), "RSA key of 1024 bits"},
		{"ECDSA P-224", csrFor(t, p224, &x509.CertificateRequest{}), "curve P-224"},
		{"Ed25519", csrFor(t, ed, &x509.CertificateRequest{}), "Ed25519 keys are not accepted"},
		{"bad signature", forged, "signature does not verify"},
		{"not PEM", []byte("hello"), "no PEM block"},
		{"a certificate instead", rca.Cert, `PEM block is "CERTIFICATE"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := rca.IssueNodeCertificate(tc.csr, "node1", api.NodeRoleWorker, "c", time.Hour)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("refused a good CSR: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidCSR) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want ErrInvalidCSR saying %q", err, tc.wantErr)
			}
		})
	}
}

// tamperCSR replaces the public key of a CSR with another one, keeping the
// signature: the signature no longer verifies.
func tamperCSR(t *testing.T, csrPEM []byte) []byte {
	t.Helper()
	block, _ := pem.Decode(csrPEM)
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherPub, _ := x509.MarshalPKIXPublicKey(&other.PublicKey)
	raw := bytes.Replace(block.Bytes, csr.RawSubjectPublicKeyInfo, otherPub, 1)
	if bytes.Equal(raw, block.Bytes) {
		t.Fatal("could not tamper with the CSR")
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: raw})
}

func TestIssueValidatesNames(t *testing.T) {
	rca := newRoot(t)
	_, csr, _ := GenerateKeyAndCSR()
	cases := []struct {
		name, nodeID, clusterID string
		role                    api.NodeRole
		expiry                  time.Duration
	}{
		{"empty node ID", "", "c", api.NodeRoleWorker, time.Hour},
		{"node ID not a DNS label", "Node_1", "c", api.NodeRoleWorker, time.Hour},
		{"empty cluster ID", "n1", "", api.NodeRoleWorker, time.Hour},
		{"unknown role", "n1", "c", api.NodeRole(7), time.Hour},
		{"negative expiry", "n1", "c", api.NodeRoleWorker, -time.Hour},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := rca.IssueNodeCertificate(csr, tc.nodeID, tc.role, tc.clusterID, tc.expiry); err == nil {
				t.Fatal("issued a certificate")
			}
		})
	}
	// A validity past the root's is cut to the root's.
	certPEM, err := rca.IssueNodeCertificate(csr, "n1", api.NodeRoleWorker, "c", 2*RootCAExpiry)
	if err != nil {
		t.Fatal(err)
	}
	if cert := mustParseCert(t, certPEM); cert.NotAfter.After(rca.Certificate().NotAfter) {
		t.Fatalf("leaf outlives the root: %s > %s", cert.NotAfter, rca.Certificate().NotAfter)
	}
}

func TestOpenSSLVerifiesNodeCertificate(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl is not installed")
	}
	rca := newRoot(t)
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	certPEM, err := rca.IssueNodeCertificate(csrFor(t, priv, &x509.CertificateRequest{Subject: hostileSubject}), "node1", api.NodeRoleWorker, "cluster1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	root := writeTemp(t, dir, "root.pem", rca.Cert)
	node := writeTemp(t, dir, "node.pem", certPEM)

	out, err := exec.Command(openssl, "verify", "-CAfile", root, node).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "node.pem: OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
	out, err = exec.Command(openssl, "x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", node).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl x509: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "subject=CN=node1,OU=swarm-worker,O=cluster1" {
		t.Fatalf("openssl subject %q, want CN=node1,OU=swarm-worker,O=cluster1", got)
	}
	// A certificate from another root does not verify.
	other := newRoot(t)
	otherRoot := writeTemp(t, dir, "other.pem", other.Cert)
	if out, err := exec.Command(openssl, "verify", "-CAfile", otherRoot, node).CombinedOutput(); err == nil {
		t.Fatalf("openssl verified a certificate against the wrong root:\n%s", out)
	}
	_ = os.Remove(otherRoot)
}

func TestConcurrentIssuance(t *testing.T) {
	rca := newRoot(t)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := 0; i < cap(errs); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, csr, err := GenerateKeyAndCSR()
			if err == nil {
				_, err = rca.IssueNodeCertificate(csr, fmt.Sprintf("node%d", i), api.NodeRoleWorker, "c1", time.Hour)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}
