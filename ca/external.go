package ca

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	cfsslsigner "github.com/cloudflare/cfssl/signer"

	"github.com/flotilla/flotilla/api"
)

const (
	// CFSSLSignPath is the sign endpoint of the cfssl API; an external CA
	// URL with no path gets it.
	CFSSLSignPath = "/api/v1/cfssl/sign"
	// DefaultExternalCATimeout bounds one request to an external CA.
	DefaultExternalCATimeout = 30 * time.Second

	maxExternalCAResponse = 1 << 20
)

// ExternalSigner has node certificates signed by an external CA through the
// cfssl API (POST /api/v1/cfssl/sign). The request overrides the subject
// (CN/OU/O) and the SANs, so the external CA's signing profile must not
// restrict them, and must allow the "server auth" and "client auth" usages.
//
// The cfssl API has no field for a certificate's validity: the external CA's
// profile decides it, and the expiry argument of Sign is not sent.
//
// Every certificate it returns is checked before use: it must chain to Root
// (the cluster's root CA, which must be the external CA's signing
// certificate), carry the requested names and the CSR's key.
type ExternalSigner struct {
	// URL of the sign endpoint, e.g. https://ca.example:8888/api/v1/cfssl/sign.
	URL string
	// Profile is the cfssl signing profile to ask for; empty means the
	// server's default.
	Profile string
	// Root is the cluster's root CA.
	Root RootCA
	// Client sends the requests; nil means a client whose TLS trusts the
	// system roots.
	Client *http.Client
	// Timeout bounds each request; zero means DefaultExternalCATimeout.
	Timeout time.Duration
}

// ExternalCAError is the refusal of an external CA, with cfssl's messages
// verbatim.
type ExternalCAError struct {
	URL        string
	StatusCode int
	Messages   []string
}

func (e *ExternalCAError) Error() string {
	msg := strings.Join(e.Messages, "; ")
	if msg == "" {
		msg = "no error message"
	}
	return fmt.Sprintf("external CA %s refused to sign (HTTP %d): %s", e.URL, e.StatusCode, msg)
}

// NewExternalSigner makes an ExternalSigner from the cluster's configuration
// of an external CA. ext.CACert, if set, is the CA that signed the external
// CA's HTTPS certificate; ext.Options["profile"] picks the signing profile.
func NewExternalSigner(ext api.ExternalCA, root RootCA) (*ExternalSigner, error) {
	if ext.Protocol != api.ExternalCAProtocolCFSSL {
		return nil, fmt.Errorf("external CA %s: protocol %s is not supported, only CFSSL", ext.URL, ext.Protocol)
	}
	if root.cert == nil {
		return nil, errors.New("external CA: the cluster's root CA certificate is missing")
	}
	u, err := url.Parse(ext.URL)
	if err != nil {
		return nil, fmt.Errorf("external CA URL %q: %w", ext.URL, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("external CA URL %q: want http(s)://host[:port][%s]", ext.URL, CFSSLSignPath)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = CFSSLSignPath
	}
	s := &ExternalSigner{URL: u.String(), Profile: ext.Options["profile"], Root: root}
	if len(ext.CACert) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(ext.CACert) {
			return nil, fmt.Errorf("external CA %s: no certificate in its CA certificate PEM", ext.URL)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
		s.Client = &http.Client{Transport: tr}
	}
	return s, nil
}

// cfsslSignRequest is the body of a cfssl sign request.
type cfsslSignRequest struct {
	Hosts   []string             `json:"hosts"`
	Request string               `json:"certificate_request"`
	Subject *cfsslsigner.Subject `json:"subject,omitempty"`
	Profile string               `json:"profile,omitempty"`
}

type cfsslResponse struct {
	Success bool            `json:"success"`
	Result  json.RawMessage `json:"result"`
	Errors  []struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
}

// Sign asks the external CA for a certificate of nodeID (see ExternalSigner
// for what it checks). expiry is not sent: the CA's profile decides it.
func (s *ExternalSigner) Sign(ctx context.Context, csrPEM []byte, nodeID string, role api.NodeRole, clusterID string, expiry time.Duration) ([]byte, error) {
	if s.Root.cert == nil {
		return nil, errors.New("external CA: the cluster's root CA certificate is missing")
	}
	csr, err := ParseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	req, err := nodeSignRequest(csrPEM, nodeID, role, clusterID)
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(cfsslSignRequest{Hosts: req.Hosts, Request: req.Request, Subject: req.Subject, Profile: s.Profile})
	if err != nil {
		return nil, err
	}
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = DefaultExternalCATimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("external CA %s: %w", s.URL, err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	client := s.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(hreq)
	if err != nil {
		return nil, fmt.Errorf("external CA %s: %w", s.URL, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxExternalCAResponse))
	if err != nil {
		return nil, fmt.Errorf("external CA %s: read response: %w", s.URL, err)
	}
	var cr cfsslResponse
	if err := json.Unmarshal(raw, &cr); err != nil {
		return nil, &ExternalCAError{URL: s.URL, StatusCode: resp.StatusCode, Messages: []string{"response is not cfssl JSON: " + snippet(raw)}}
	}
	if !cr.Success || resp.StatusCode != http.StatusOK {
		e := &ExternalCAError{URL: s.URL, StatusCode: resp.StatusCode}
		for _, m := range cr.Errors {
			e.Messages = append(e.Messages, m.Message)
		}
		return nil, e
	}
	var result struct {
		Certificate string `json:"certificate"`
	}
	if err := json.Unmarshal(cr.Result, &result); err != nil || result.Certificate == "" {
		return nil, fmt.Errorf("external CA %s: response has no result.certificate", s.URL)
	}
	cert, err := parseOneCertPEM([]byte(result.Certificate))
	if err != nil {
		return nil, fmt.Errorf("external CA %s returned no usable certificate: %w", s.URL, err)
	}
	if err := s.checkIssued(cert, csr, req.Subject, req.Hosts); err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), nil
}

func (s *ExternalSigner) checkIssued(cert *x509.Certificate, csr *x509.CertificateRequest, want *cfsslsigner.Subject, hosts []string) error {
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: s.Root.pool, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			return fmt.Errorf("the certificate from external CA %s is not usable with this cluster's root CA %q (is the external CA signing with that root?): %w",
				s.URL, s.Root.cert.Subject.CommonName, err)
		}
	}
	if !publicKeysEqual(cert.PublicKey, csr.PublicKey) {
		return fmt.Errorf("the certificate from external CA %s is not for the requested key", s.URL)
	}
	name := want.Name()
	got := cert.Subject
	if got.CommonName != name.CommonName || !slices.Equal(got.OrganizationalUnit, name.OrganizationalUnit) || !slices.Equal(got.Organization, name.Organization) {
		return fmt.Errorf("external CA %s did not set the requested subject (got CN=%s OU=%v O=%v, want CN=%s OU=%v O=%v): allow subject overrides in its signing profile",
			s.URL, got.CommonName, got.OrganizationalUnit, got.Organization, name.CommonName, name.OrganizationalUnit, name.Organization)
	}
	for _, h := range hosts {
		if !slices.Contains(cert.DNSNames, h) {
			return fmt.Errorf("the certificate from external CA %s lacks the DNS name %q", s.URL, h)
		}
	}
	return nil
}

func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
