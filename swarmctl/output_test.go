package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/gogo/protobuf/proto"
	"github.com/gogo/protobuf/types"

	"github.com/flotilla/flotilla/api"
)

// lookup follows a dotted path through decoded JSON.
func lookup(t *testing.T, v any, path string) any {
	t.Helper()
	for _, k := range strings.Split(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("%s: %v is not an object", path, v)
		}
		if v, ok = m[k]; !ok {
			t.Fatalf("%s: no field %q in %v", path, k, m)
		}
	}
	return v
}

func decode(t *testing.T, b []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, b)
	}
	return v
}

func TestJSONUsesContractFieldNames(t *testing.T) {
	created, _ := types.TimestampProto(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	svc := &api.Service{ID: "s1", Meta: api.Meta{Version: 42, CreatedAt: created, UpdatedAt: created}}
	svc.Spec.Annotations.Name = "web"
	svc.Spec.Mode.Mode = &api.ServiceMode_Replicated{Replicated: &api.ReplicatedService{Replicas: 3}}
	svc.Spec.Task.Container = &api.ContainerSpec{Image: "nginx"}
	svc.UpdateStatus = &api.UpdateStatus{State: api.UpdateStateRollbackStarted}
	svc.Endpoint = &api.Endpoint{VirtualIPs: []*api.VirtualIP{{NetworkID: "n", Addr: "10.0.0.2/24"}}, Ports: []*api.PortConfig{{TargetPort: 80, PublishedPort: 30000}}}

	tk := &api.Task{ID: "t1", ServiceID: "s1", NodeID: "n1", Slot: 2, DesiredState: api.TaskStateRunning}
	tk.Status = api.TaskStatus{State: api.TaskStateFailed, Err: "boom", ContainerStatus: &api.ContainerStatus{ExitCode: 3}}

	node := &api.Node{ID: "n1", Role: api.NodeRoleManager, Description: &api.NodeDescription{Hostname: "h1"}}
	node.Spec.Availability = api.NodeAvailabilityDrain
	node.Status = api.NodeStatus{State: api.NodeStatusReady, Addr: "10.0.0.1"}
	node.ManagerStatus = &api.ManagerStatus{Leader: true, Reachability: api.ReachabilityReachable, RaftID: 7}

	var buf bytes.Buffer
	if err := writeJSONArray(&buf, []proto.Message{svc, tk, node}); err != nil {
		t.Fatal(err)
	}
	arr, ok := decode(t, buf.Bytes()).([]any)
	if !ok || len(arr) != 3 {
		t.Fatalf("not an array of 3:\n%s", buf.String())
	}
	checks := []struct {
		obj  any
		path string
		want any
	}{
		{arr[0], "id", "s1"},
		{arr[0], "meta.version", "42"}, // uint64 is a string in the protobuf JSON mapping
		{arr[0], "meta.createdAt", "2026-01-02T03:04:05Z"},
		{arr[0], "spec.annotations.name", "web"},
		{arr[0], "spec.mode.replicated.replicas", "3"},
		{arr[0], "spec.task.container.image", "nginx"},
		{arr[0], "updateStatus.state", "ROLLBACK_STARTED"},
		{arr[1], "serviceId", "s1"},
		{arr[1], "nodeId", "n1"},
		{arr[1], "slot", "2"},
		{arr[1], "desiredState", "RUNNING"},
		{arr[1], "status.state", "FAILED"},
		{arr[1], "status.err", "boom"},
		{arr[1], "status.containerStatus.exitCode", float64(3)},
		{arr[2], "spec.availability", "DRAIN"},
		{arr[2], "role", "MANAGER"},
		{arr[2], "description.hostname", "h1"},
		{arr[2], "status.state", "READY"},
		{arr[2], "managerStatus.leader", true},
		{arr[2], "managerStatus.reachability", "REACHABLE"},
		{arr[2], "managerStatus.raftId", "7"},
	}
	for _, c := range checks {
		if got := lookup(t, c.obj, c.path); got != c.want {
			t.Errorf("%s = %#v, want %#v", c.path, got, c.want)
		}
	}
	vips := lookup(t, arr[0], "endpoint.virtualIps").([]any)
	if lookup(t, vips[0], "networkId") != "n" {
		t.Errorf("endpoint.virtualIps = %v", vips)
	}
	if !strings.Contains(buf.String(), "\n  {\n    \"id\": \"s1\"") {
		t.Errorf("array is not indented by two spaces:\n%s", buf.String())
	}
}

func TestListPrintsOneArrayEvenWhenEmpty(t *testing.T) {
	var buf bytes.Buffer
	l := lister{format: formatJSON}
	if err := l.print(&buf, nil, nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	if buf.String() != "[]\n" {
		t.Fatalf("empty ls = %q", buf.String())
	}
	buf.Reset()
	l = lister{quiet: true, format: formatJSON}
	_ = l.print(&buf, []proto.Message{&api.Node{ID: "a"}, &api.Node{ID: "b"}}, []string{"a", "b"}, nil, nil)
	if buf.String() != "a\nb\n" {
		t.Fatalf("-q = %q", buf.String())
	}
}

func TestInspectPrintsAnObjectForOneArgumentAndAnArrayForMore(t *testing.T) {
	var buf bytes.Buffer
	if err := writeInspect(&buf, []proto.Message{&api.Node{ID: "a"}}, 1); err != nil {
		t.Fatal(err)
	}
	if _, ok := decode(t, buf.Bytes()).(map[string]any); !ok {
		t.Fatalf("one argument: %s", buf.String())
	}
	buf.Reset()
	if err := writeInspect(&buf, []proto.Message{&api.Node{ID: "a"}, &api.Node{ID: "b"}}, 2); err != nil {
		t.Fatal(err)
	}
	if arr, ok := decode(t, buf.Bytes()).([]any); !ok || len(arr) != 2 {
		t.Fatalf("two arguments: %s", buf.String())
	}
}

func TestRedactionRemovesKeysAndSecretData(t *testing.T) {
	cluster := &api.Cluster{ID: "c"}
	cluster.RootCA.CAKey = []byte("KEY")
	cluster.RootCA.CACert = []byte("CERT")
	cluster.RootCA.RootRotation = &api.RootRotation{CAKey: []byte("KEY2")}
	cluster.RootCA.JoinTokens = api.JoinTokens{Worker: "SWMTKN-w", Manager: "SWMTKN-m"}
	cluster.UnlockKeys = []*api.EncryptionKey{{Key: []byte("UNLOCK")}}
	secret := &api.Secret{ID: "s"}
	secret.Spec.Data = []byte("hunter2")
	svc := &api.Service{}
	svc.Spec.Task.Container = &api.ContainerSpec{RegistryAuth: "cred"}

	var buf bytes.Buffer
	_ = writeJSONArray(&buf, []proto.Message{redacted(cluster), redacted(secret), redacted(svc)})
	out := buf.String()
	for _, leaked := range []string{"caKey", "unlockKeys", "data", "registryAuth", "S0VZ", "aHVudGVyMg"} {
		if strings.Contains(out, leaked) {
			t.Errorf("output contains %q:\n%s", leaked, out)
		}
	}
	if !strings.Contains(out, `"worker": "SWMTKN-w"`) {
		t.Errorf("join tokens missing:\n%s", out)
	}
}

func TestHumanDuration(t *testing.T) {
	cases := map[time.Duration]string{
		0:                   "Less than a second",
		time.Second:         "1 second",
		45 * time.Second:    "45 seconds",
		90 * time.Second:    "About a minute",
		10 * time.Minute:    "10 minutes",
		time.Hour:           "About an hour",
		5 * time.Hour:       "5 hours",
		72 * time.Hour:      "3 days",
		21 * 24 * time.Hour: "3 weeks",
	}
	for d, want := range cases {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%v) = %q, want %q", d, got, want)
		}
	}
}
