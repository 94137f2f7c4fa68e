package controlapi_test

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/controlapi"
	"github.com/flotilla/flotilla/manager/store"
	"github.com/flotilla/flotilla/manager/store/storetest"
	"github.com/flotilla/flotilla/raft"
)

type fakeMembers []raft.Member

func (f fakeMembers) RemoveMember(context.Context, uint64) error { return nil }
func (f fakeMembers) Members() []raft.Member                     { return f }

// Promotion is accepted; a demotion is refused when the managers left could
// not form a quorum among the reachable ones (saying the figures), and for the
// last manager staying one.
func TestDemotionKeepsAQuorum(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		reachable []bool // of raft members 1, 2, 3 (1 is the one demoted)
		pending   bool   // member 3 is being demoted already
		want      codes.Code
		msg       string
	}{
		{"all reachable", []bool{true, true, true}, false, codes.OK, ""},
		{"the demoted one unreachable", []bool{false, true, true}, false, codes.OK, ""},
		{"another one unreachable", []bool{true, true, false}, false, codes.FailedPrecondition, "it would leave 2 manager(s), 1 of them reachable, and a quorum needs 2"},
		{"another demotion pending", []bool{true, true, true}, true, codes.OK, ""},
		{"another demotion pending, the last one unreachable", []bool{true, false, true}, true, codes.FailedPrecondition, "it would leave 1 manager(s), 0 of them reachable, and a quorum needs 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := storetest.New()
			srv := controlapi.NewServer(s, nil)
			var members fakeMembers
			for i, r := range tc.reachable {
				members = append(members, raft.Member{ID: uint64(i + 1), Reachable: r})
			}
			srv.SetMembership(members)
			err := s.Update(ctx, func(tx store.Tx) error {
				for i, h := range []string{"m1", "m2", "m3"} {
					desired := api.NodeRoleManager
					if i == 2 && tc.pending {
						desired = api.NodeRoleWorker
					}
					if err := tx.Create(&api.Node{ID: h, Role: api.NodeRoleManager, Spec: api.NodeSpec{DesiredRole: desired},
						Description:   &api.NodeDescription{Hostname: h},
						ManagerStatus: &api.ManagerStatus{RaftID: uint64(i + 1)}}); err != nil {
						return err
					}
				}
				return tx.Create(&api.Node{ID: "w1", Description: &api.NodeDescription{Hostname: "w1"}})
			})
			if err != nil {
				t.Fatal(err)
			}
			update := func(ref string, role api.NodeRole) error {
				n, err := srv.GetNode(ctx, &api.GetNodeRequest{NodeID: ref})
				if err != nil {
					t.Fatal(err)
				}
				spec := n.Node.Spec.Copy()
				spec.DesiredRole = role
				_, err = srv.UpdateNode(ctx, &api.UpdateNodeRequest{NodeID: ref, NodeVersion: n.Node.Meta.Version, Spec: spec})
				return err
			}
			if err := update("w1", api.NodeRoleManager); err != nil {
				t.Fatalf("promote: %v", err)
			}
			err = update("m1", api.NodeRoleWorker)
			if tc.want == codes.OK {
				if err != nil {
					t.Fatalf("demote: %v", err)
				}
				// Cancelling a demotion not carried out yet is a promotion.
				if err := update("m1", api.NodeRoleManager); err != nil {
					t.Fatalf("cancel the demotion: %v", err)
				}
				return
			}
			wantCode(t, err, tc.want, tc.msg)
		})
	}
}
