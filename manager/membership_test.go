package manager

import (
	"testing"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/raft"
)

// A manager's status follows the raft membership as the leader sees it.
func TestManagerStatusFollowsMembership(t *testing.T) {
	members := map[uint64]raft.Member{
		1: {ID: 1, Addr: "10.0.0.1:4242", Reachable: true, Leader: true},
		2: {ID: 2, Addr: "10.0.0.2:4242", Reachable: false},
		3: {ID: 3, Addr: "10.0.0.3:4343", Reachable: true},
	}
	for _, tc := range []struct {
		cur, want api.ManagerStatus
	}{
		{api.ManagerStatus{RaftID: 1, Addr: "10.0.0.1:4242"},
			api.ManagerStatus{RaftID: 1, Addr: "10.0.0.1:4242", Leader: true, Reachability: api.ReachabilityReachable}},
		{api.ManagerStatus{RaftID: 2, Addr: "10.0.0.2:4242", Leader: true, Reachability: api.ReachabilityReachable},
			api.ManagerStatus{RaftID: 2, Addr: "10.0.0.2:4242", Reachability: api.ReachabilityUnreachable}},
		{api.ManagerStatus{RaftID: 3, Addr: "10.0.0.3:4242"}, // moved: the membership's address wins
			api.ManagerStatus{RaftID: 3, Addr: "10.0.0.3:4343", Reachability: api.ReachabilityReachable}},
		{api.ManagerStatus{RaftID: 9, Addr: "10.0.0.9:4242", Leader: true, Reachability: api.ReachabilityReachable}, // not a member
			api.ManagerStatus{RaftID: 9, Addr: "10.0.0.9:4242", Reachability: api.ReachabilityUnreachable}},
	} {
		cur := tc.cur
		if got := managerStatus(&cur, members); *got != tc.want {
			t.Errorf("status of %+v = %+v, want %+v", tc.cur, *got, tc.want)
		}
		if cur != tc.cur {
			t.Errorf("the current status was changed: %+v", cur)
		}
	}
}
