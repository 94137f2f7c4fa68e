package manager

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/store"
)

// raftService is the raft package's Raft service with the cluster's side of
// a join: only the leader takes joins (others name it, as dispatchers do, so
// the caller goes there), the caller must be a manager node of this cluster
// (it joined with the manager token), and its node records its raft ID and
// address (ManagerStatus) once raft added it.
type raftService struct {
	api.RaftServer
	m *Manager
}

func (s raftService) Join(ctx context.Context, req *api.JoinRequest) (*api.JoinResponse, error) {
	if !s.m.raft.IsLeader() {
		if addr := s.m.raft.LeaderAddr(); addr != "" {
			_ = grpc.SetTrailer(ctx, metadata.Pairs(api.LeaderTrailer, addr))
			return nil, status.Errorf(codes.Unavailable, "this manager is not the leader: join through the leader at %s", addr)
		}
		return nil, status.Error(codes.Unavailable, "no leader: the cluster has not elected one or has lost quorum; retry shortly")
	}
	nodeID, err := identifyPeer(ctx)
	if err != nil {
		return nil, err
	}
	var node *api.Node
	s.m.store.View(func(tx store.ReadTx) { node = store.Get[*api.Node](tx, nodeID) })
	switch {
	case node == nil:
		return nil, status.Errorf(codes.PermissionDenied, "node %s is not a member of this cluster", nodeID)
	case node.Role != api.NodeRoleManager:
		return nil, status.Errorf(codes.PermissionDenied, "node %s is a worker: only managers join raft (promote it first)", nodeID)
	case node.Spec.DesiredRole != api.NodeRoleManager:
		// Its certificate is renewed as a worker's shortly: retried until then.
		return nil, status.Errorf(codes.Unavailable, "node %s is being demoted to a worker: it does not join raft", nodeID)
	case node.ManagerStatus != nil && node.ManagerStatus.RaftID != 0 && node.ManagerStatus.RaftID != req.RaftID:
		return nil, status.Errorf(codes.FailedPrecondition, "node %s is already a manager with raft ID %x; a manager keeps its raft ID (its state dir was lost? remove the node and join again)",
			nodeID, node.ManagerStatus.RaftID)
	}
	// A manager whose state dir was wiped comes back with a new raft ID but
	// its old address: the old member would still count for the quorum.
	for _, mem := range s.m.raft.Members() {
		if mem.Addr == req.Addr && mem.ID != req.RaftID {
			var holder string
			s.m.store.View(func(tx store.ReadTx) {
				_ = store.Each(tx, store.ByRole(api.NodeRoleManager), func(n *api.Node) bool {
					if n.ManagerStatus != nil && n.ManagerStatus.RaftID == mem.ID {
						holder = n.ID
						return false
					}
					return true
				})
			})
			if holder == "" {
				holder = fmt.Sprintf("raft ID %x", mem.ID)
			}
			return nil, status.Errorf(codes.FailedPrecondition,
				"address %s already belongs to manager %s (its old state?): remove it with `swarmctl node rm --force %s`, then join again",
				req.Addr, holder, holder)
		}
	}
	resp, err := s.RaftServer.Join(ctx, req)
	if err != nil {
		return nil, err
	}
	s.m.log.Info("manager joined raft", "node.id", nodeID, "raft.id", fmt.Sprintf("%x", req.RaftID), "addr", req.Addr)
	// Recorded after answering, by the membership sync (a leader loop):
	// the write needs the new member's vote in the quorum, and it can vote
	// only once it knows the members from this answer.
	s.m.newManagers.Store(nodeID, &api.ManagerStatus{RaftID: req.RaftID, Addr: req.Addr, Reachability: api.ReachabilityReachable})
	return resp, nil
}

// joinRaft adds this new manager to the cluster's raft through the managers
// at addrs (the join address, then the leader any of them names), retrying
// until it is added or ctx ends. It returns the members.
func (m *Manager) joinRaft(ctx context.Context, addrs []string) (*api.JoinResponse, error) {
	wait := 100 * time.Millisecond
	next := ""
	for attempt := 0; ; attempt++ {
		addr := addrs[attempt%len(addrs)]
		if next != "" {
			addr, next = next, ""
		}
		resp, leader, err := m.tryJoin(ctx, addr)
		if err == nil {
			return resp, nil
		}
		if joinRefused(err) {
			return nil, fmt.Errorf("join raft through %s: %s", addr, status.Convert(err).Message())
		}
		if leader != "" && leader != addr {
			next = leader // the leader next, at once
			continue
		}
		m.log.Info("cannot join raft yet; retrying", "via", addr, "error", err, "in", wait)
		select {
		case <-ctx.Done():
			return nil, errors.Join(ctx.Err(), err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// joinRefused reports whether a join failed for good: this node may not
// join (not a manager, its raft ID was removed or differs). Anything else,
// such as a change that would lose quorum while another manager is still
// joining, is retried.
func joinRefused(err error) bool {
	s, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch s.Code() {
	case codes.PermissionDenied:
		return true
	case codes.FailedPrecondition:
		msg := s.Message()
		return strings.Contains(msg, "removed") || strings.Contains(msg, "already a manager") || strings.Contains(msg, "without a transport") ||
			strings.Contains(msg, "already belongs to manager")
	}
	return false
}

func (m *Manager) tryJoin(ctx context.Context, addr string) (resp *api.JoinResponse, leader string, err error) {
	conn, err := m.dialManager(ctx, addr)
	if err != nil {
		return nil, "", err
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var trailer metadata.MD
	resp, err = api.NewRaftClient(conn).Join(cctx, &api.JoinRequest{RaftID: m.cfg.RaftID, Addr: m.cfg.AdvertiseAddr}, grpc.Trailer(&trailer))
	if v := trailer.Get(api.LeaderTrailer); err != nil && len(v) > 0 && v[0] != addr {
		leader = v[0]
	}
	return resp, leader, err
}
