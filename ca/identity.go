package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/flotilla/flotilla/api"
)

// ErrNoPeerCertificate is wrapped by PeerIdentity when the caller presented
// no (verified) client certificate.
var ErrNoPeerCertificate = errors.New("the caller presented no client certificate")

// NodeIdentity is what a node certificate says about its holder.
type NodeIdentity struct {
	NodeID    string
	Role      api.NodeRole
	ClusterID string
	NotBefore time.Time
	NotAfter  time.Time
}

// ParseNodeCertificate reads the identity in the first certificate of
// certPEM. It checks names only, not the signature: see Credentials and
// PeerIdentity for verified identities.
func ParseNodeCertificate(certPEM []byte) (NodeIdentity, error) {
	cert, err := parseOneCertPEM(certPEM)
	if err != nil {
		return NodeIdentity{}, fmt.Errorf("node certificate: %w", err)
	}
	return IdentityFromCertificate(cert)
}

// IdentityFromCertificate reads the identity of a node certificate: exactly
// one OU naming a role, exactly one O (the cluster ID) and a CN (the node ID).
func IdentityFromCertificate(cert *x509.Certificate) (NodeIdentity, error) {
	sub := cert.Subject
	if sub.CommonName == "" {
		return NodeIdentity{}, errors.New("node certificate has no CN (node ID)")
	}
	if len(sub.OrganizationalUnit) != 1 {
		return NodeIdentity{}, fmt.Errorf("node certificate of %s has %d OUs, want exactly one role", sub.CommonName, len(sub.OrganizationalUnit))
	}
	role, err := RoleFromOU(sub.OrganizationalUnit[0])
	if err != nil {
		return NodeIdentity{}, fmt.Errorf("node certificate of %s: %w", sub.CommonName, err)
	}
	if len(sub.Organization) != 1 || sub.Organization[0] == "" {
		return NodeIdentity{}, fmt.Errorf("node certificate of %s has %d Os, want exactly one cluster ID", sub.CommonName, len(sub.Organization))
	}
	return NodeIdentity{
		NodeID:    sub.CommonName,
		Role:      role,
		ClusterID: sub.Organization[0],
		NotBefore: cert.NotBefore,
		NotAfter:  cert.NotAfter,
	}, nil
}

// RoleFromOU is the inverse of RoleOU.
func RoleFromOU(ou string) (api.NodeRole, error) {
	switch ou {
	case ManagerRoleOU:
		return api.NodeRoleManager, nil
	case WorkerRoleOU:
		return api.NodeRoleWorker, nil
	}
	return 0, fmt.Errorf("OU %q names no role (want %q or %q)", ou, ManagerRoleOU, WorkerRoleOU)
}

// PeerIdentity reads the identity of a gRPC caller from its verified TLS
// client certificate. It wraps ErrNoPeerCertificate when there is none.
func PeerIdentity(ctx context.Context) (NodeIdentity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return NodeIdentity{}, fmt.Errorf("%w: no peer in context", ErrNoPeerCertificate)
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return NodeIdentity{}, fmt.Errorf("%w: connection is not TLS", ErrNoPeerCertificate)
	}
	chains := info.State.VerifiedChains
	if len(chains) == 0 || len(chains[0]) == 0 {
		return NodeIdentity{}, ErrNoPeerCertificate
	}
	return IdentityFromCertificate(chains[0][0])
}

type identityKey struct{}

// WithIdentity returns ctx carrying id, as the authorizer does for handlers.
func WithIdentity(ctx context.Context, id NodeIdentity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// IdentityFromContext returns the caller's identity put there by the
// authorizer; false for anonymous callers.
func IdentityFromContext(ctx context.Context) (NodeIdentity, bool) {
	id, ok := ctx.Value(identityKey{}).(NodeIdentity)
	return id, ok
}
