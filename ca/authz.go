package ca

import (
	"context"
	"errors"
	"log/slog"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

// Rule says who may call one gRPC method.
type Rule struct {
	// Roles that may call the method. Empty means none, unless
	// AllowAnonymous is set: then any role.
	Roles []api.NodeRole
	// AllowAnonymous lets callers without a certificate through (joining
	// nodes). A caller that does present a certificate is still checked:
	// cluster ID, the check function, and Roles if not empty.
	AllowAnonymous bool
	// SkipCheck leaves out the authorizer's check function (the
	// membership check) for this method: its service decides membership
	// itself (raft).
	SkipCheck bool
}

// Policy maps full gRPC method names ("/flotilla.api.NodeCA/IssueNodeCertificate")
// to their rule. A method without an entry is refused.
type Policy map[string]Rule

// CheckFunc lets the server refuse an otherwise valid identity, for example a
// removed node. A gRPC status error it returns reaches the caller as is; any
// other error becomes PermissionDenied.
type CheckFunc func(ctx context.Context, id NodeIdentity) error

// Authorizer authorizes gRPC calls by the role in the caller's certificate.
type Authorizer struct {
	policy    Policy
	clusterID func() string
	check     CheckFunc
	log       *slog.Logger
}

// NewAuthorizer returns an Authorizer enforcing policy. clusterID returns the
// cluster ID that callers' certificates must carry (O); check may be nil; log
// nil means slog.Default().
func NewAuthorizer(policy Policy, clusterID func() string, check CheckFunc, log *slog.Logger) *Authorizer {
	if clusterID == nil {
		panic("ca.NewAuthorizer: clusterID is nil")
	}
	return &Authorizer{policy: policy, clusterID: clusterID, check: check, log: moduleLogger(log)}
}

// UnaryAuthorizer is NewAuthorizer(...).Unary().
func UnaryAuthorizer(policy Policy, clusterID func() string, check CheckFunc, log *slog.Logger) grpc.UnaryServerInterceptor {
	return NewAuthorizer(policy, clusterID, check, log).Unary()
}

// StreamAuthorizer is NewAuthorizer(...).Stream().
func StreamAuthorizer(policy Policy, clusterID func() string, check CheckFunc, log *slog.Logger) grpc.StreamServerInterceptor {
	return NewAuthorizer(policy, clusterID, check, log).Stream()
}

// Unary returns the interceptor for unary methods.
func (a *Authorizer) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := a.Authorize(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// Stream returns the interceptor for streaming methods.
func (a *Authorizer) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := a.Authorize(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, &identityStream{ServerStream: ss, ctx: ctx})
	}
}

type identityStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *identityStream) Context() context.Context { return s.ctx }

// Authorize decides whether the caller in ctx may call method. On success it
// returns ctx carrying the caller's identity (none for anonymous callers);
// otherwise a gRPC status error, logged at warn.
func (a *Authorizer) Authorize(ctx context.Context, method string) (context.Context, error) {
	rule, ok := a.policy[method]
	if !ok {
		return nil, a.refuse(ctx, method, nil, codes.PermissionDenied, "method not allowed")
	}
	id, err := PeerIdentity(ctx)
	switch {
	case errors.Is(err, ErrNoPeerCertificate):
		if rule.AllowAnonymous {
			return ctx, nil
		}
		return nil, a.refuse(ctx, method, nil, codes.Unauthenticated,
			"%s needs a node certificate: join the cluster first", method)
	case err != nil:
		// Signed by our root, but not a node certificate.
		return nil, a.refuse(ctx, method, nil, codes.PermissionDenied, "invalid node certificate: %v", err)
	}
	if want := a.clusterID(); id.ClusterID != want {
		return nil, a.refuse(ctx, method, &id, codes.PermissionDenied,
			"the certificate of node %s belongs to cluster %s, not to this cluster %s", id.NodeID, id.ClusterID, want)
	}
	if !slices.Contains(rule.Roles, id.Role) && !(rule.AllowAnonymous && len(rule.Roles) == 0) {
		return nil, a.refuse(ctx, method, &id, codes.PermissionDenied, "%s", roleMessage(id.Role, method, rule.Roles))
	}
	if a.check != nil && !rule.SkipCheck {
		if err := a.check(ctx, id); err != nil {
			if _, isStatus := status.FromError(err); !isStatus {
				err = status.Errorf(codes.PermissionDenied, "node %s may not call %s: %v", id.NodeID, method, err)
			}
			a.logRefusal(ctx, method, &id, err)
			return nil, err
		}
	}
	return WithIdentity(ctx, id), nil
}

func roleMessage(role api.NodeRole, method string, allowed []api.NodeRole) string {
	name := map[api.NodeRole]string{api.NodeRoleWorker: "worker", api.NodeRoleManager: "manager"}
	switch {
	case len(allowed) == 1:
		return name[role] + " nodes may not call " + method + ": it needs a " + name[allowed[0]] + " certificate"
	case len(allowed) == 0:
		return "no node may call " + method
	}
	return name[role] + " nodes may not call " + method
}

func (a *Authorizer) refuse(ctx context.Context, method string, id *NodeIdentity, code codes.Code, format string, args ...any) error {
	err := status.Errorf(code, format, args...)
	a.logRefusal(ctx, method, id, err)
	return err
}

func (a *Authorizer) logRefusal(ctx context.Context, method string, id *NodeIdentity, err error) {
	attrs := []any{"method", method, "error", err}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		attrs = append(attrs, "peer.addr", p.Addr.String())
	}
	if id != nil {
		attrs = append(attrs, "node.id", id.NodeID, "node.role", id.Role.String(), "cluster.id", id.ClusterID)
	}
	a.log.WarnContext(ctx, "refused RPC", attrs...)
}

func moduleLogger(l *slog.Logger) *slog.Logger {
	if l == nil {
		l = slog.Default()
	}
	return l.With("module", "ca")
}
