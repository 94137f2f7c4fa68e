// Package caserver serves the NodeCA API: the root certificate for joining
// nodes, and node certificates, issued against a join token (new nodes) or
// the caller's current certificate (renewal). The CA, not the CSR, decides
// the certificate's node ID, role and cluster.
package caserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/gogo/protobuf/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/defaults"
	"github.com/flotilla/flotilla/api/identity"
	"github.com/flotilla/flotilla/ca"
	"github.com/flotilla/flotilla/manager/store"
)

// Server is the NodeCA service of one manager.
type Server struct {
	api.UnimplementedNodeCAServer
	store *store.MemoryStore
	log   *slog.Logger
	// signExternal signs through an external CA; replaceable in tests.
	signExternal func(ctx context.Context, ext *api.ExternalCA, root ca.RootCA, csr []byte, nodeID string, role api.NodeRole, clusterID string, expiry time.Duration) ([]byte, error)
}

// New makes a NodeCA server over the store.
func New(s *store.MemoryStore, log *slog.Logger) *Server {
	return &Server{store: s, log: log.With("module", "ca"), signExternal: signExternal}
}

func signExternal(ctx context.Context, ext *api.ExternalCA, root ca.RootCA, csr []byte, nodeID string, role api.NodeRole, clusterID string, expiry time.Duration) ([]byte, error) {
	signer, err := ca.NewExternalSigner(*ext, root)
	if err != nil {
		return nil, err
	}
	return signer.Sign(ctx, csr, nodeID, role, clusterID, expiry)
}

func (s *Server) cluster() (*api.Cluster, error) {
	var c *api.Cluster
	s.store.View(func(tx store.ReadTx) {
		if cs, _ := store.Find[*api.Cluster](tx, store.All()); len(cs) > 0 {
			c = cs[0]
		}
	})
	if c == nil || len(c.RootCA.CACert) == 0 {
		return nil, status.Error(codes.Unavailable, "the cluster's CA is not initialised yet; retry shortly")
	}
	return c, nil
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return "unknown"
}

// GetRootCACertificate returns the root certificate; no certificate needed.
func (s *Server) GetRootCACertificate(ctx context.Context, _ *api.GetRootCACertificateRequest) (*api.GetRootCACertificateResponse, error) {
	c, err := s.cluster()
	if err != nil {
		return nil, err
	}
	return &api.GetRootCACertificateResponse{Certificate: c.RootCA.CACert}, nil
}

// IssueNodeCertificate signs a node's CSR: a join with a token, or a renewal
// with the caller's certificate.
func (s *Server) IssueNodeCertificate(ctx context.Context, req *api.IssueNodeCertificateRequest) (*api.IssueNodeCertificateResponse, error) {
	if len(req.CSR) == 0 {
		return nil, status.Error(codes.InvalidArgument, "a certificate signing request is required")
	}
	if req.Token != "" {
		return s.join(ctx, req)
	}
	id, err := ca.PeerIdentity(ctx)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, "a join token or a valid node certificate is required")
	}
	return s.renew(ctx, id, req)
}

func (s *Server) expiry(c *api.Cluster) time.Duration {
	if d, err := types.DurationFromProto(c.Spec.CAConfig.NodeCertExpiry); err == nil && d > 0 {
		return d
	}
	return defaults.NodeCertExpiry
}

// sign signs with the external CA when one is configured, else with the
// cluster's root key.
func (s *Server) sign(ctx context.Context, c *api.Cluster, csr []byte, nodeID string, role api.NodeRole) ([]byte, error) {
	if exts := c.Spec.CAConfig.ExternalCAs; len(exts) > 0 {
		root, err := ca.ParseRootCA(c.RootCA.CACert, nil)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "cluster root CA: %v", err)
		}
		var errs []error
		for _, ext := range exts {
			cert, err := s.signExternal(ctx, ext, root, csr, nodeID, role, c.ID, s.expiry(c))
			if err == nil {
				return cert, nil
			}
			errs = append(errs, fmt.Errorf("%s: %w", ext.URL, err))
		}
		return nil, status.Errorf(codes.Unavailable, "external CA could not sign: %v", errors.Join(errs...))
	}
	rca, err := ca.ParseRootCA(c.RootCA.CACert, c.RootCA.CAKey)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "cluster root CA: %v", err)
	}
	cert, err := rca.IssueNodeCertificate(csr, nodeID, role, c.ID, s.expiry(c))
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "cannot sign the certificate request: %v", err)
	}
	return cert, nil
}

func (s *Server) join(ctx context.Context, req *api.IssueNodeCertificateRequest) (*api.IssueNodeCertificateResponse, error) {
	c, err := s.cluster()
	if err != nil {
		return nil, err
	}
	if _, err := ca.ParseJoinToken(req.Token); err != nil {
		s.log.Warn("join refused: malformed token", "peer", peerAddr(ctx))
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	var role api.NodeRole
	switch {
	case ca.MatchToken(req.Token, c.RootCA.JoinTokens.Worker):
		role = api.NodeRoleWorker
	case ca.MatchToken(req.Token, c.RootCA.JoinTokens.Manager):
		// The new manager then asks the leader to add it to raft
		// (Raft.Join), which checks this role.
		role = api.NodeRoleManager
	default:
		s.log.Warn("join refused: invalid token", "peer", peerAddr(ctx))
		return nil, status.Error(codes.PermissionDenied,
			"the join token is not valid for this cluster (it may have been rotated): get a current one with `swarmctl cluster join-token worker`")
	}
	nodeID := identity.NewID()
	cert, err := s.sign(ctx, c, req.CSR, nodeID, role)
	if err != nil {
		s.log.Warn("join refused: signing failed", "peer", peerAddr(ctx), "err", err)
		return nil, err
	}
	node := &api.Node{
		ID:   nodeID,
		Role: role,
		Spec: api.NodeSpec{DesiredRole: role, Availability: req.Availability},
		Certificate: api.Certificate{
			Role: role, CN: nodeID, Status: api.IssuanceStateIssued, Certificate: cert,
		},
		Status: api.NodeStatus{State: api.NodeStatusUnknown, Message: "joined; waiting for its first session"},
	}
	if err := s.store.Update(ctx, func(tx store.Tx) error { return tx.Create(node) }); err != nil {
		return nil, status.Errorf(codes.Unavailable, "record the new node: %v", err)
	}
	s.log.Info("node joined", "node.id", nodeID, "role", role.String(), "peer", peerAddr(ctx))
	return &api.IssueNodeCertificateResponse{NodeID: nodeID, Role: role, Certificate: cert, ClusterID: c.ID}, nil
}

func (s *Server) renew(ctx context.Context, id ca.NodeIdentity, req *api.IssueNodeCertificateRequest) (*api.IssueNodeCertificateResponse, error) {
	c, err := s.cluster()
	if err != nil {
		return nil, err
	}
	var node *api.Node
	s.store.View(func(tx store.ReadTx) { node = store.Get[*api.Node](tx, id.NodeID) })
	if node == nil {
		s.log.Warn("renewal refused: node is not a member", "node.id", id.NodeID, "peer", peerAddr(ctx))
		return nil, status.Errorf(codes.PermissionDenied, "node %s is not a member of this cluster (it was removed): it cannot renew its certificate", id.NodeID)
	}
	cert, err := s.sign(ctx, c, req.CSR, node.ID, node.Role)
	if err != nil {
		return nil, err
	}
	// The dispatcher writes the same node; a lost race is simply retried.
	for attempt := 0; ; attempt++ {
		err = s.store.Update(ctx, func(tx store.Tx) error {
			n := store.Get[*api.Node](tx, node.ID)
			if n == nil {
				return status.Errorf(codes.PermissionDenied, "node %s was removed", node.ID)
			}
			n.Certificate = api.Certificate{Role: n.Role, CN: n.ID, Status: api.IssuanceStateIssued, Certificate: cert}
			return tx.Update(n)
		})
		if !errors.Is(err, store.ErrSequenceConflict) || attempt == 4 {
			break
		}
	}
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		return nil, status.Errorf(codes.Unavailable, "record the renewed certificate: %v", err)
	}
	s.log.Info("node certificate renewed", "node.id", node.ID, "peer", peerAddr(ctx))
	return &api.IssueNodeCertificateResponse{NodeID: node.ID, Role: node.Role, Certificate: cert, ClusterID: c.ID}, nil
}
