package manager

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/ca"
	"github.com/flotilla/flotilla/manager/store"
	"github.com/flotilla/flotilla/raft"
)

var (
	managers = []api.NodeRole{api.NodeRoleManager}
	anyNode  = []api.NodeRole{api.NodeRoleWorker, api.NodeRoleManager}
)

// remotePolicy says who may call what on the remote API. Methods missing
// here are refused (the authorizer fails closed); TestRemotePolicyCoversEveryMethod
// keeps it complete.
func remotePolicy() ca.Policy {
	p := ca.Policy{
		"/flotilla.api.NodeCA/GetRootCACertificate": {AllowAnonymous: true},
		// Anonymous with a join token; a certificate for renewal.
		"/flotilla.api.NodeCA/IssueNodeCertificate": {Roles: anyNode, AllowAnonymous: true},
		"/flotilla.api.Dispatcher/Session":          {Roles: anyNode},
		"/flotilla.api.Dispatcher/Heartbeat":        {Roles: anyNode},
		"/flotilla.api.Dispatcher/Assignments":      {Roles: anyNode},
		"/flotilla.api.Dispatcher/UpdateTaskStatus": {Roles: anyNode},
		// Any node; the broker also checks that a node publishes only for
		// subscriptions it was sent and only its own tasks' logs.
		"/flotilla.api.LogBroker/ListenSubscriptions": {Roles: anyNode},
		"/flotilla.api.LogBroker/PublishLogs":         {Roles: anyNode},
		"/flotilla.api.Watch/Watch":                   {Roles: managers},
		"/grpc.health.v1.Health/Check":                {AllowAnonymous: true},
		"/grpc.health.v1.Health/Watch":                {AllowAnonymous: true},
		"/grpc.health.v1.Health/List":                 {AllowAnonymous: true},
	}
	// Raft messages and membership: managers only, and raft's own
	// membership decides who may talk raft (a manager joining has an empty
	// store and must hear from members it does not know yet).
	for _, m := range []string{"ProcessRaftMessage", "ProcessRaftMessages", "StreamRaftMessage", "Join", "Leave"} {
		p["/flotilla.api.Raft/"+m] = ca.Rule{Roles: managers, SkipCheck: true}
	}
	for _, m := range api.ControlServiceMethods() {
		p["/flotilla.api.Control/"+m] = ca.Rule{Roles: managers}
	}
	for _, m := range api.LogsServiceMethods() {
		p["/flotilla.api.Logs/"+m] = ca.Rule{Roles: managers}
	}
	return p
}

// clusterID is the cluster whose certificates the remote API accepts.
func (m *Manager) clusterID() string { return m.cfg.ClusterID }

// memberCheck refuses certificates of nodes the cluster no longer knows
// (removed nodes keep a valid certificate until it expires).
func (m *Manager) memberCheck(ctx context.Context, id ca.NodeIdentity) error {
	var member bool
	m.store.View(func(tx store.ReadTx) { member = store.Exists(tx, api.KindNode, id.NodeID) })
	if !member && !m.raft.IsLeader() {
		// Only the leader's store is known to be current: a follower may
		// not have caught up with a node that just joined.
		return status.Errorf(codes.Unavailable,
			"node %s is not known to this manager yet (it is not the leader and may be behind); connect to the leader", id.NodeID)
	}
	if !member {
		// NotFound, not PermissionDenied: agents stop on it instead of retrying.
		return status.Errorf(codes.NotFound,
			"node %s is not a member of this cluster (it was removed): it cannot rejoin with its old identity; start it over with an empty state dir and a join token", id.NodeID)
	}
	return nil
}

// registerRemote registers the remote API's services on s.
func registerRemote(s *grpc.Server, m *Manager) {
	api.RegisterNodeCAServer(s, m.caServer)
	api.RegisterDispatcherServer(s, m.dispatcher)
	api.RegisterControlServer(s, m.control)
	api.RegisterWatchServer(s, m.watch)
	api.RegisterLogsServer(s, m.logs)
	api.RegisterLogBrokerServer(s, m.logs)
	api.RegisterRaftServer(s, raftService{RaftServer: raft.NewServer(m.raft), m: m})
	healthpb.RegisterHealthServer(s, m.health)
}
