package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"

	cfsslconfig "github.com/cloudflare/cfssl/config"
	cfsslcsr "github.com/cloudflare/cfssl/csr"
	cfsslsigner "github.com/cloudflare/cfssl/signer"
	"github.com/cloudflare/cfssl/signer/local"

	"github.com/flotilla/flotilla/api"
)

const (
	// DefaultRootCAName is the common name of a root CA created without one.
	DefaultRootCAName = "flotilla-root-ca"
	// RootCAExpiry is the validity of a root CA certificate.
	RootCAExpiry = 20 * 365 * 24 * time.Hour
	// DefaultNodeCertExpiry is the validity of a node certificate when the
	// caller asks for none.
	DefaultNodeCertExpiry = 90 * 24 * time.Hour
	// CertBackdate is how far NotBefore is set in the past, so that nodes
	// whose clocks are a little behind accept a fresh certificate.
	CertBackdate = 5 * time.Minute

	// ManagerRoleOU is the OU of a manager certificate, and a DNS SAN of it.
	ManagerRoleOU = "swarm-manager"
	// WorkerRoleOU is the OU of a worker certificate, and a DNS SAN of it.
	WorkerRoleOU = "swarm-worker"
	// ManagerServerName is the TLS server name clients use to dial managers.
	// Only manager certificates carry it.
	ManagerServerName = ManagerRoleOU
)

// ErrNoSigningKey is returned when a RootCA without a private key is asked to
// sign: only managers hold the root key.
var ErrNoSigningKey = errors.New("this node does not hold the root CA key")

// ErrInvalidCSR is wrapped by every error about a certificate request that
// the CA refuses.
var ErrInvalidCSR = errors.New("invalid certificate request")

// RootCA is the cluster's root certificate authority. Key is nil on nodes
// that may not sign (workers, and managers of a cluster that uses an external
// CA). A RootCA is immutable; copy it freely.
type RootCA struct {
	// Cert is the PEM-encoded root certificate.
	Cert []byte
	// Key is the PEM-encoded private key of the root, or nil.
	Key []byte

	cert   *x509.Certificate
	pool   *x509.CertPool
	digest string
	signer *local.Signer
}

// CreateRootCA makes a new self-signed ECDSA P-256 root CA valid for
// RootCAExpiry. An empty name means DefaultRootCAName.
func CreateRootCA(name string) (RootCA, error) {
	if name == "" {
		name = DefaultRootCAName
	}
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return RootCA{}, fmt.Errorf("generate root CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return RootCA{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-CertBackdate).UTC(),
		NotAfter:              now.Add(RootCAExpiry).UTC(),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// One intermediate at most: room for an external CA that signs
		// with an intermediate under this root.
		MaxPathLen: 1,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		return RootCA{}, fmt.Errorf("self-sign root CA: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		return RootCA{}, fmt.Errorf("encode root CA key: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	return ParseRootCA(certPEM, keyPEM)
}

// ParseRootCA builds a RootCA from a PEM certificate and, if keyPEM is not
// empty, its PEM private key. It checks that the certificate is a CA that is
// valid now and that the key belongs to it.
func ParseRootCA(certPEM, keyPEM []byte) (RootCA, error) {
	cert, err := parseOneCertPEM(certPEM)
	if err != nil {
		return RootCA{}, fmt.Errorf("root CA certificate: %w", err)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return RootCA{}, fmt.Errorf("root CA certificate %q is not a CA certificate", cert.Subject.CommonName)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return RootCA{}, fmt.Errorf("root CA certificate %q may not sign certificates (no cert sign key usage)", cert.Subject.CommonName)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		return RootCA{}, fmt.Errorf("root CA certificate %q is not self-signed: %w", cert.Subject.CommonName, err)
	}
	if now := time.Now(); now.After(cert.NotAfter) {
		return RootCA{}, fmt.Errorf("root CA certificate %q expired at %s", cert.Subject.CommonName, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	rca := RootCA{
		Cert:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		cert:   cert,
		pool:   pool,
		digest: digestDER(cert.Raw),
	}
	if len(bytes.TrimSpace(keyPEM)) == 0 {
		return rca, nil
	}
	priv, err := parsePrivateKeyPEM(keyPEM)
	if err != nil {
		return RootCA{}, fmt.Errorf("root CA key: %w", err)
	}
	if !publicKeysEqual(priv.Public(), cert.PublicKey) {
		return RootCA{}, errors.New("root CA key does not match the root CA certificate")
	}
	s, err := local.NewSigner(priv, cert, cfsslsigner.DefaultSigAlgo(priv), signingPolicy())
	if err != nil {
		return RootCA{}, fmt.Errorf("root CA signer: %w", err)
	}
	rca.Key = append([]byte(nil), keyPEM...)
	rca.signer = s
	return rca, nil
}

// signingPolicy is the cfssl policy of the local signer. The CSR whitelist
// copies only the public key from a CSR: subject and SANs come from the
// SignRequest, that is from the CA.
func signingPolicy() *cfsslconfig.Signing {
	return &cfsslconfig.Signing{
		Profiles: map[string]*cfsslconfig.SigningProfile{},
		Default: &cfsslconfig.SigningProfile{
			Usage:    []string{"signing", "key encipherment", "server auth", "client auth"},
			Expiry:   DefaultNodeCertExpiry,
			Backdate: CertBackdate,
			CSRWhitelist: &cfsslconfig.CSRWhitelist{
				PublicKeyAlgorithm: true,
				PublicKey:          true,
				SignatureAlgorithm: true,
			},
		},
	}
}

// Certificate returns the parsed root certificate.
func (rca RootCA) Certificate() *x509.Certificate { return rca.cert }

// Digest identifies the root in join tokens: the SHA-256 of the DER
// certificate as a big-endian number in lower-case base 36, zero-padded to 50
// characters (256 bits need 50 base-36 digits). Being computed over DER, it
// does not depend on how the PEM was wrapped.
func (rca RootCA) Digest() string { return rca.digest }

// Pool returns a pool holding the root certificate alone.
func (rca RootCA) Pool() *x509.CertPool { return rca.pool }

// CanSign reports whether this RootCA holds its private key.
func (rca RootCA) CanSign() bool { return rca.signer != nil }

// Signer returns the cfssl local signer of this root, or ErrNoSigningKey.
// Most callers want IssueNodeCertificate instead.
func (rca RootCA) Signer() (cfsslsigner.Signer, error) {
	if rca.signer == nil {
		return nil, ErrNoSigningKey
	}
	return rca.signer, nil
}

// Sign is IssueNodeCertificate behind the same signature as
// ExternalSigner.Sign, so that the CA server can hold either as a NodeSigner.
func (rca RootCA) Sign(_ context.Context, csrPEM []byte, nodeID string, role api.NodeRole, clusterID string, expiry time.Duration) ([]byte, error) {
	return rca.IssueNodeCertificate(csrPEM, nodeID, role, clusterID, expiry)
}

// NodeSigner issues node certificates: RootCA with its key, or ExternalSigner.
type NodeSigner interface {
	Sign(ctx context.Context, csrPEM []byte, nodeID string, role api.NodeRole, clusterID string, expiry time.Duration) (certPEM []byte, err error)
}

var (
	_ NodeSigner = RootCA{}
	_ NodeSigner = (*ExternalSigner)(nil)
)

// IssueNodeCertificate signs csrPEM into a node certificate valid for expiry
// (DefaultNodeCertExpiry if zero, and never past the root's own expiry). The
// subject is CN=nodeID, OU=role, O=clusterID whatever the CSR asks for; the
// SANs are the role's name and the node ID. It returns the PEM leaf only.
func (rca RootCA) IssueNodeCertificate(csrPEM []byte, nodeID string, role api.NodeRole, clusterID string, expiry time.Duration) ([]byte, error) {
	now := time.Now()
	if expiry == 0 {
		expiry = DefaultNodeCertExpiry
	}
	if expiry < 0 {
		return nil, fmt.Errorf("node certificate validity must be positive, got %s", expiry)
	}
	return rca.issue(csrPEM, nodeID, role, clusterID, now.Add(-CertBackdate), now.Add(expiry))
}

func (rca RootCA) issue(csrPEM []byte, nodeID string, role api.NodeRole, clusterID string, notBefore, notAfter time.Time) ([]byte, error) {
	if rca.signer == nil {
		return nil, ErrNoSigningKey
	}
	req, err := nodeSignRequest(csrPEM, nodeID, role, clusterID)
	if err != nil {
		return nil, err
	}
	if notAfter.After(rca.cert.NotAfter) {
		notAfter = rca.cert.NotAfter
	}
	req.NotBefore = notBefore.UTC()
	req.NotAfter = notAfter.UTC()
	certPEM, err := rca.signer.Sign(req)
	if err != nil {
		return nil, fmt.Errorf("sign certificate of node %s: %w", nodeID, err)
	}
	return certPEM, nil
}

// nodeSignRequest validates the CSR and the node's names and builds the cfssl
// sign request that sets the subject and SANs. Both the local signer and the
// external CA client use it.
func nodeSignRequest(csrPEM []byte, nodeID string, role api.NodeRole, clusterID string) (cfsslsigner.SignRequest, error) {
	if _, err := ParseCSR(csrPEM); err != nil {
		return cfsslsigner.SignRequest{}, err
	}
	ou, err := RoleOU(role)
	if err != nil {
		return cfsslsigner.SignRequest{}, err
	}
	if err := validNodeID(nodeID); err != nil {
		return cfsslsigner.SignRequest{}, err
	}
	if clusterID == "" {
		return cfsslsigner.SignRequest{}, errors.New("cluster ID is empty")
	}
	return cfsslsigner.SignRequest{
		Request: string(csrPEM),
		Hosts:   []string{ou, nodeID},
		Subject: &cfsslsigner.Subject{
			CN:    nodeID,
			Names: []cfsslcsr.Name{{O: clusterID, OU: ou}},
		},
	}, nil
}

// validNodeID accepts IDs that can stand as a DNS label, since the node ID is
// a DNS SAN of its certificate.
func validNodeID(id string) error {
	if id == "" {
		return errors.New("node ID is empty")
	}
	if len(id) > 63 {
		return fmt.Errorf("node ID %q is longer than 63 characters", id)
	}
	for i, r := range id {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
		case r == '-' && i > 0 && i < len(id)-1:
		default:
			return fmt.Errorf("node ID %q may hold only lower-case letters, digits and inner hyphens", id)
		}
	}
	return nil
}

// RoleOU returns the OU (and SAN) that names role in a certificate.
func RoleOU(role api.NodeRole) (string, error) {
	switch role {
	case api.NodeRoleManager:
		return ManagerRoleOU, nil
	case api.NodeRoleWorker:
		return WorkerRoleOU, nil
	}
	return "", fmt.Errorf("unknown node role %d", role)
}

func digestDER(der []byte) string {
	sum := sha256.Sum256(der)
	return base36(sum[:], digestLen)
}

// base36 renders b as a big-endian number in lower-case base 36, left-padded
// with zeros to width.
func base36(b []byte, width int) string {
	s := new(big.Int).SetBytes(b).Text(36)
	if len(s) < width {
		s = string(bytes.Repeat([]byte{'0'}, width-len(s))) + s
	}
	return s
}

func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("random serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// parseOneCertPEM returns the first certificate of a PEM bundle.
func parseOneCertPEM(data []byte) (*x509.Certificate, error) {
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("no PEM CERTIFICATE block found")
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		return cert, nil
	}
}

// parsePrivateKeyPEM reads a SEC1 ("EC PRIVATE KEY"), PKCS#1 ("RSA PRIVATE
// KEY") or PKCS#8 ("PRIVATE KEY") key.
func parsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("no PEM private key block found")
		}
		switch block.Type {
		case "EC PRIVATE KEY":
			k, err := x509.ParseECPrivateKey(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parse EC private key: %w", err)
			}
			return k, nil
		case "RSA PRIVATE KEY":
			k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parse RSA private key: %w", err)
			}
			return k, nil
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parse PKCS#8 private key: %w", err)
			}
			s, ok := k.(crypto.Signer)
			if !ok {
				return nil, fmt.Errorf("unsupported private key type %T", k)
			}
			return s, nil
		}
	}
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}
