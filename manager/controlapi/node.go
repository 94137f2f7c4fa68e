package controlapi

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/validation"
	"github.com/flotilla/flotilla/manager/store"
	"github.com/flotilla/flotilla/raft"
)

func (s *Server) GetNode(ctx context.Context, req *api.GetNodeRequest) (*api.GetNodeResponse, error) {
	n, err := get[*api.Node](s, req.NodeID)
	if err != nil {
		return nil, err
	}
	return &api.GetNodeResponse{Node: n}, nil
}

func (s *Server) ListNodes(ctx context.Context, req *api.ListNodesRequest) (*api.ListNodesResponse, error) {
	f := req.Filters
	nodes, err := list(s, func(n *api.Node) bool {
		if f == nil {
			return true
		}
		if !matchCommon(n, &f.ListFilters) {
			return false
		}
		if len(f.Roles) > 0 && !contains(f.Roles, n.Role) {
			return false
		}
		return len(f.Availabilities) == 0 || contains(f.Availabilities, n.Spec.Availability)
	})
	if err != nil {
		return nil, err
	}
	return &api.ListNodesResponse{Nodes: nodes}, nil
}

func contains[E comparable](list []E, e E) bool {
	for _, x := range list {
		if x == e {
			return true
		}
	}
	return false
}

// UpdateNode changes a node's availability, labels or desired role.
func (s *Server) UpdateNode(ctx context.Context, req *api.UpdateNodeRequest) (*api.UpdateNodeResponse, error) {
	if req.NodeVersion == 0 {
		return nil, status.Error(codes.InvalidArgument, "node version is required: send the meta.version you read")
	}
	if err := validation.NodeSpec(req.Spec); err != nil {
		return nil, invalid(err)
	}
	var id, name string
	err := s.store.Update(ctx, func(tx store.Tx) error {
		cur, err := resolve[*api.Node](tx, req.NodeID)
		if err != nil {
			return err
		}
		id, name = cur.ID, cur.GetName()
		if cur.Meta.Version != req.NodeVersion {
			return status.Errorf(codes.FailedPrecondition,
				"node %q was changed by someone else since you read it (version %d, now %d): read it again and retry",
				name, req.NodeVersion, cur.Meta.Version)
		}
		if req.Spec.DesiredRole != cur.Spec.DesiredRole {
			if err := s.checkRoleChange(tx, cur, req.Spec.DesiredRole); err != nil {
				return err
			}
		}
		cur.Spec = *req.Spec.Copy()
		return tx.Update(cur)
	})
	if err != nil {
		return nil, s.writeError(api.KindNode, name, err)
	}
	n, err := get[*api.Node](s, id)
	if err != nil {
		return nil, err
	}
	return &api.UpdateNodeResponse{Node: n}, nil
}

// checkRoleChange refuses a demotion that would break the cluster: of the
// last manager staying one, or one after which the reachable managers could
// not form a quorum. Promotions, and cancelling a change the role manager has
// not carried out yet, are always allowed. The role manager (a leader loop)
// then makes the change: it removes a demoted manager from raft before the
// node becomes a worker.
func (s *Server) checkRoleChange(tx store.ReadTx, n *api.Node, role api.NodeRole) error {
	if role != api.NodeRoleWorker || n.Role != api.NodeRoleManager {
		return nil
	}
	nodes, err := store.Find[*api.Node](tx, store.ByRole(api.NodeRoleManager))
	if err != nil {
		return status.Errorf(codes.Internal, "list the managers: %v", err)
	}
	staying := 0
	leaving := map[uint64]bool{} // raft IDs of the managers being demoted, n included
	if n.ManagerStatus != nil && n.ManagerStatus.RaftID != 0 {
		leaving[n.ManagerStatus.RaftID] = true
	}
	for _, m := range nodes {
		switch {
		case m.ID == n.ID:
		case m.Spec.DesiredRole == api.NodeRoleManager:
			staying++
		case m.ManagerStatus != nil && m.ManagerStatus.RaftID != 0:
			leaving[m.ManagerStatus.RaftID] = true
		}
	}
	if staying == 0 {
		return status.Errorf(codes.FailedPrecondition,
			"node %q is the only manager: demoting it would leave the cluster without managers; promote another node first", n.GetName())
	}
	if s.members == nil {
		return nil
	}
	if left, reachable, need, ok := QuorumAfterRemoval(s.members.Members(), leaving); !ok {
		return status.Errorf(codes.FailedPrecondition,
			"cannot demote manager %q: it would leave %d manager(s), %d of them reachable, and a quorum needs %d; bring the unreachable managers back (or remove one that is gone for good with `node rm --force`) first",
			n.GetName(), left, reachable, need)
	}
	return nil
}

// QuorumAfterRemoval reports whether the raft members left once the members
// in leaving are removed still hold a quorum of reachable members (as the
// leader sees them), with the figures to explain a refusal.
func QuorumAfterRemoval(members []raft.Member, leaving map[uint64]bool) (left, reachable, need int, ok bool) {
	for _, m := range members {
		if leaving[m.ID] {
			continue
		}
		left++
		if m.Reachable {
			reachable++
		}
	}
	need = left/2 + 1
	return left, reachable, need, left > 0 && reachable >= need
}

// removeManager takes a manager that RemoveNode is forced to remove out of
// raft first, so that the managers left keep a quorum (raft refuses the
// change otherwise) and its raft ID is never used again.
func (s *Server) removeManager(ctx context.Context, req *api.RemoveNodeRequest) error {
	if !req.Force || s.members == nil {
		return nil
	}
	var cur *api.Node
	var err error
	s.store.View(func(tx store.ReadTx) { cur, err = resolve[*api.Node](tx, req.NodeID) })
	if err != nil || cur.Role != api.NodeRoleManager || cur.ManagerStatus == nil || cur.ManagerStatus.RaftID == 0 {
		return nil // RemoveNode says what is wrong
	}
	if cur.ManagerStatus.Leader {
		return status.Errorf(codes.FailedPrecondition, "node %q is the leader: it cannot remove itself; remove it through another manager once it has stopped, or demote it", cur.GetName())
	}
	if err := s.members.RemoveMember(ctx, cur.ManagerStatus.RaftID); err != nil && !errors.Is(err, raft.ErrUnknownMember) {
		if errors.Is(err, raft.ErrWouldLoseQuorum) {
			return status.Errorf(codes.FailedPrecondition, "cannot remove manager %q: %v", cur.GetName(), err)
		}
		return s.writeError(api.KindNode, cur.GetName(), err)
	}
	return nil
}

// RemoveNode forgets a node. A READY node needs force; a manager must be demoted first.
func (s *Server) RemoveNode(ctx context.Context, req *api.RemoveNodeRequest) (*api.RemoveNodeResponse, error) {
	if err := s.removeManager(ctx, req); err != nil {
		return nil, err
	}
	var name string
	err := s.store.Update(ctx, func(tx store.Tx) error {
		cur, err := resolve[*api.Node](tx, req.NodeID)
		if err != nil {
			return err
		}
		name = cur.GetName()
		if cur.Role == api.NodeRoleManager && !(req.Force && s.members != nil) {
			return status.Errorf(codes.FailedPrecondition, "node %q is a manager: demote it before removing it, or, if it is gone for good, remove it with --force (it leaves raft; refused if the managers left could not form a quorum)", name)
		}
		if cur.Status.State == api.NodeStatusReady && !req.Force {
			return status.Errorf(codes.FailedPrecondition,
				"node %q is READY: stop it (or drain it) first, or remove it anyway with --force", name)
		}
		return tx.Delete(api.KindNode, cur.ID)
	})
	if err != nil {
		return nil, s.writeError(api.KindNode, name, err)
	}
	return &api.RemoveNodeResponse{}, nil
}
