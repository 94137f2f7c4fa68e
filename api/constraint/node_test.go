package constraint_test

import (
	"testing"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/constraint"
)

func TestMatchNode(t *testing.T) {
	node := &api.Node{
		ID:   "n1",
		Role: api.NodeRoleManager,
		Spec: api.NodeSpec{Annotations: api.Annotations{Labels: map[string]string{"zone": "eu-1", "Disk": "SSD"}}},
		Description: &api.NodeDescription{Hostname: "host-1",
			Platform: &api.Platform{OS: "linux", Architecture: "x86_64"}},
		Status: api.NodeStatus{State: api.NodeStatusReady, Addr: "10.0.0.7:4242"},
	}
	bare := &api.Node{ID: "n2"}
	cases := []struct {
		exprs []string
		node  *api.Node
		want  bool
	}{
		{nil, node, true},
		{[]string{"node.id==n1"}, node, true},
		{[]string{"node.id!=n1"}, node, false},
		{[]string{"node.hostname==HOST-1"}, node, true},
		{[]string{"node.role==manager"}, node, true},
		{[]string{"node.role==worker"}, node, false},
		{[]string{"node.role==worker"}, bare, true},
		{[]string{"node.ip==10.0.0.7"}, node, true},
		{[]string{"node.platform.os==linux", "node.platform.arch==x86_64"}, node, true},
		{[]string{"node.platform.os==windows"}, node, false},
		{[]string{"node.labels.zone==eu-1"}, node, true},
		{[]string{"node.labels.zone!=eu-1"}, node, false},
		{[]string{"node.labels.disk==ssd"}, node, true},
		{[]string{"node.labels.missing==x"}, node, false},
		{[]string{"node.labels.missing!=x"}, node, true},
		{[]string{"node.hostname==host-1", "node.labels.zone==us"}, node, false},
		{[]string{"node.hostname!=host-1"}, bare, true},
		{[]string{"node.platform.os==linux"}, bare, false},
	}
	for _, c := range cases {
		cs, err := constraint.ParseAll(c.exprs)
		if err != nil {
			t.Fatal(err)
		}
		if got := constraint.MatchNode(cs, c.node); got != c.want {
			t.Errorf("%q on %s: %v, want %v", c.exprs, c.node.ID, got, c.want)
		}
	}
}
