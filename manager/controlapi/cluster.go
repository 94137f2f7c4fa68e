package controlapi

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/validation"
	"github.com/flotilla/flotilla/ca"
	"github.com/flotilla/flotilla/manager/store"
)

func redactCluster(c *api.Cluster) *api.Cluster { return api.Redacted(c).(*api.Cluster) }

func (s *Server) GetCluster(ctx context.Context, req *api.GetClusterRequest) (*api.GetClusterResponse, error) {
	c, err := get[*api.Cluster](s, req.ClusterID)
	if err != nil {
		return nil, err
	}
	return &api.GetClusterResponse{Cluster: redactCluster(c)}, nil
}

func (s *Server) ListClusters(ctx context.Context, req *api.ListClustersRequest) (*api.ListClustersResponse, error) {
	var f *api.ListFilters
	if req.Filters != nil {
		f = &req.Filters.ListFilters
	}
	cs, err := list(s, func(c *api.Cluster) bool { return matchCommon(c, f) })
	if err != nil {
		return nil, err
	}
	for i := range cs {
		cs[i] = redactCluster(cs[i])
	}
	return &api.ListClustersResponse{Clusters: cs}, nil
}

// UpdateCluster changes cluster-wide settings.
func (s *Server) UpdateCluster(ctx context.Context, req *api.UpdateClusterRequest) (*api.UpdateClusterResponse, error) {
	if req.ClusterVersion == 0 {
		return nil, status.Error(codes.InvalidArgument, "cluster version is required: send the meta.version you read")
	}
	if err := validation.ClusterSpec(req.Spec); err != nil {
		return nil, invalid(err)
	}
	var id string
	err := s.store.Update(ctx, func(tx store.Tx) error {
		cur, err := resolve[*api.Cluster](tx, req.ClusterID)
		if err != nil {
			return err
		}
		id = cur.ID
		if cur.Meta.Version != req.ClusterVersion {
			return status.Errorf(codes.FailedPrecondition,
				"the cluster was changed by someone else since you read it (version %d, now %d): read it again and retry",
				req.ClusterVersion, cur.Meta.Version)
		}
		if req.Spec.Annotations.Name != cur.Spec.Annotations.Name {
			return status.Errorf(codes.InvalidArgument, "renaming the cluster is not supported")
		}
		cur.Spec = *req.Spec.Copy()
		if err := rotateJoinTokens(cur, req.Rotation); err != nil {
			return err
		}
		if err := updateUnlockKey(cur, req.Rotation); err != nil {
			return err
		}
		return tx.Update(cur)
	})
	if err != nil {
		return nil, s.writeError(api.KindCluster, "", err)
	}
	c, err := get[*api.Cluster](s, id)
	if err != nil {
		return nil, err
	}
	return &api.UpdateClusterResponse{Cluster: redactCluster(c)}, nil
}

// rotateJoinTokens replaces the join tokens asked for; the old ones stop
// working as soon as the update is committed.
func rotateJoinTokens(c *api.Cluster, r api.KeyRotation) error {
	if !r.WorkerJoinToken && !r.ManagerJoinToken {
		return nil
	}
	rca, err := ca.ParseRootCA(c.RootCA.CACert, nil)
	if err != nil {
		return status.Errorf(codes.FailedPrecondition, "the cluster has no usable root CA: %v", err)
	}
	for _, x := range []struct {
		want bool
		dst  *string
	}{{r.WorkerJoinToken, &c.RootCA.JoinTokens.Worker}, {r.ManagerJoinToken, &c.RootCA.JoinTokens.Manager}} {
		if !x.want {
			continue
		}
		tok, err := ca.GenerateJoinToken(rca)
		if err != nil {
			return status.Errorf(codes.Internal, "generate a join token: %v", err)
		}
		*x.dst = tok
	}
	return nil
}
