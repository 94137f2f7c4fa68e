package ca

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"
)

// cipherSuites are the TLS 1.2 suites we accept: ECDHE key exchange and AEAD
// ciphers only. TLS 1.3 suites are not configurable and all good.
var cipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

func baseTLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		MaxVersion:   tls.VersionTLS13,
		CipherSuites: slices.Clone(cipherSuites),
	}
}

// Credentials hold a node's current certificate and key. Update swaps them
// atomically: the TLS configs made by ServerTLSConfig and ClientTLSConfig read
// the current pair at every handshake, so renewal needs no restart of
// listeners, and connections already open keep their certificate.
type Credentials struct {
	root RootCA
	cur  atomic.Pointer[keyPair]
}

type keyPair struct {
	cert tls.Certificate
	id   NodeIdentity
}

// NewCredentials checks that certPEM is a node certificate signed by rca,
// valid now, and that keyPEM is its key.
func NewCredentials(rca RootCA, certPEM, keyPEM []byte) (*Credentials, error) {
	if rca.cert == nil {
		return nil, errors.New("credentials: root CA has no certificate")
	}
	c := &Credentials{root: rca}
	if err := c.Update(certPEM, keyPEM); err != nil {
		return nil, err
	}
	return c, nil
}

// Update makes certPEM/keyPEM the pair presented in new handshakes, after the
// same checks as NewCredentials. A renewed certificate must name the same
// node and cluster; its role may change (promotion, demotion).
func (c *Credentials) Update(certPEM, keyPEM []byte) error {
	kp, err := loadKeyPair(c.root, certPEM, keyPEM)
	if err != nil {
		return err
	}
	if old := c.cur.Load(); old != nil {
		if old.id.NodeID != kp.id.NodeID || old.id.ClusterID != kp.id.ClusterID {
			return fmt.Errorf("credentials: new certificate is for node %s of cluster %s, these credentials are node %s of cluster %s",
				kp.id.NodeID, kp.id.ClusterID, old.id.NodeID, old.id.ClusterID)
		}
	}
	c.cur.Store(kp)
	return nil
}

func loadKeyPair(rca RootCA, certPEM, keyPEM []byte) (*keyPair, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("credentials: node certificate and key: %w", err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("credentials: %w", err)
		}
		cert.Leaf = leaf
	}
	id, err := IdentityFromCertificate(leaf)
	if err != nil {
		return nil, fmt.Errorf("credentials: %w", err)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{
			Roots:         rca.pool,
			Intermediates: intermediates(cert.Certificate[1:]),
			KeyUsages:     []x509.ExtKeyUsage{usage},
			CurrentTime:   time.Now(),
		}); err != nil {
			return nil, fmt.Errorf("credentials: certificate of node %s does not verify against root CA %q: %w", id.NodeID, rca.cert.Subject.CommonName, err)
		}
	}
	return &keyPair{cert: cert, id: id}, nil
}

func intermediates(ders [][]byte) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, der := range ders {
		if c, err := x509.ParseCertificate(der); err == nil {
			pool.AddCert(c)
		}
	}
	return pool
}

// Identity returns the identity in the current certificate.
func (c *Credentials) Identity() NodeIdentity { return c.cur.Load().id }

// RootCA returns the root these credentials trust.
func (c *Credentials) RootCA() RootCA { return c.root }

// Certificate returns the current certificate and key.
func (c *Credentials) Certificate() tls.Certificate { return c.cur.Load().cert }

// ServerTLSConfig is the config of a node's gRPC listeners: it presents the
// current certificate and verifies a client certificate against the root
// when one is given. A client without one is let through the handshake
// because joining nodes call the CA before they have a certificate: the
// authorizer (UnaryAuthorizer) decides which methods such callers reach.
func (c *Credentials) ServerTLSConfig() *tls.Config {
	cfg := baseTLSConfig()
	cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		cert := c.cur.Load().cert
		return &cert, nil
	}
	cfg.ClientAuth = tls.VerifyClientCertIfGiven
	cfg.ClientCAs = c.root.pool
	return cfg
}

// ClientTLSConfig is the config to dial managers: it presents the current
// certificate and expects a manager certificate signed by the root.
func (c *Credentials) ClientTLSConfig() *tls.Config {
	cfg := baseTLSConfig()
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		cert := c.cur.Load().cert
		return &cert, nil
	}
	cfg.RootCAs = c.root.pool
	cfg.ServerName = ManagerServerName
	return cfg
}

// BootstrapClientTLSConfig is the config of a node that has no certificate
// yet. With rca, it verifies the manager against that root; it is the config
// to send a join token on. With nil, it verifies nothing: use it only to fetch
// the root CA certificate, check that with JoinToken.VerifyRootCA, and never
// send the token on such a connection (see the package documentation).
func BootstrapClientTLSConfig(rca *RootCA) *tls.Config {
	cfg := baseTLSConfig()
	cfg.ServerName = ManagerServerName
	if rca == nil {
		cfg.InsecureSkipVerify = true
		return cfg
	}
	cfg.RootCAs = rca.pool
	return cfg
}
