package main

// These tests run whole command lines against an in-process fake of the
// control API on a unix socket; no swarmd is needed.

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/gogo/protobuf/proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

// fakeControl keeps objects in slices and records the writes it receives.
type fakeControl struct {
	api.UnimplementedControlServer

	mu             sync.Mutex
	services       []*api.Service
	tasks          []*api.Task
	nodes          []*api.Node
	clusters       []*api.Cluster
	secrets        []*api.Secret
	created        []*api.ServiceSpec
	updates        []*api.UpdateServiceRequest
	nodeUpdates    []*api.UpdateNodeRequest
	clusterUpdates []*api.UpdateClusterRequest
	removed        []string
	// changeAfterGet simulates another client updating a service right
	// after it was read.
	changeAfterGet bool
}

func (f *fakeControl) findService(ref string) (*api.Service, error) {
	for _, s := range f.services {
		if s.ID == ref || s.Spec.Annotations.Name == ref || strings.HasPrefix(s.ID, ref) {
			return s, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "service %s not found", ref)
}

func (f *fakeControl) GetService(_ context.Context, req *api.GetServiceRequest) (*api.GetServiceResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.findService(req.ServiceID)
	if err != nil {
		return nil, err
	}
	resp := &api.GetServiceResponse{Service: s.Copy()}
	if f.changeAfterGet {
		s.Meta.Version++
	}
	return resp, nil
}

func (f *fakeControl) ListServices(context.Context, *api.ListServicesRequest) (*api.ListServicesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &api.ListServicesResponse{}
	for _, s := range f.services {
		resp.Services = append(resp.Services, s.Copy())
	}
	return resp, nil
}

func (f *fakeControl) CreateService(_ context.Context, req *api.CreateServiceRequest) (*api.CreateServiceResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.created = append(f.created, req.Spec)
	return &api.CreateServiceResponse{Service: &api.Service{ID: "newserviceid", Spec: *req.Spec}}, nil
}

func (f *fakeControl) UpdateService(_ context.Context, req *api.UpdateServiceRequest) (*api.UpdateServiceResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.findService(req.ServiceID)
	if err != nil {
		return nil, err
	}
	if req.ServiceVersion != s.Meta.Version {
		return nil, status.Errorf(codes.FailedPrecondition, "service %s changed since it was read (version %d, now %d): read it again and retry", s.Spec.Annotations.Name, req.ServiceVersion, s.Meta.Version)
	}
	f.updates = append(f.updates, req)
	return &api.UpdateServiceResponse{Service: s}, nil
}

func (f *fakeControl) RemoveService(_ context.Context, req *api.RemoveServiceRequest) (*api.RemoveServiceResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removed = append(f.removed, req.ServiceID)
	return &api.RemoveServiceResponse{}, nil
}

func (f *fakeControl) ListTasks(_ context.Context, req *api.ListTasksRequest) (*api.ListTasksResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &api.ListTasksResponse{}
	for _, t := range f.tasks {
		if req.Filters != nil && len(req.Filters.ServiceIDs) > 0 {
			match := false
			for _, id := range req.Filters.ServiceIDs {
				match = match || t.ServiceID == id
			}
			if !match {
				continue
			}
		}
		resp.Tasks = append(resp.Tasks, t)
	}
	return resp, nil
}

func (f *fakeControl) GetNode(_ context.Context, req *api.GetNodeRequest) (*api.GetNodeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.nodes {
		if n.ID == req.NodeID || n.GetName() == req.NodeID {
			return &api.GetNodeResponse{Node: n.Copy()}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "node %s not found", req.NodeID)
}

func (f *fakeControl) ListNodes(_ context.Context, req *api.ListNodesRequest) (*api.ListNodesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &api.ListNodesResponse{}
	for _, n := range f.nodes {
		if req.Filters != nil && len(req.Filters.Roles) > 0 && n.Role != req.Filters.Roles[0] {
			continue
		}
		resp.Nodes = append(resp.Nodes, n.Copy())
	}
	return resp, nil
}

func (f *fakeControl) UpdateNode(_ context.Context, req *api.UpdateNodeRequest) (*api.UpdateNodeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodeUpdates = append(f.nodeUpdates, req)
	return &api.UpdateNodeResponse{}, nil
}

func (f *fakeControl) ListClusters(context.Context, *api.ListClustersRequest) (*api.ListClustersResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &api.ListClustersResponse{}
	for _, c := range f.clusters {
		resp.Clusters = append(resp.Clusters, c.Copy())
	}
	return resp, nil
}

func (f *fakeControl) UpdateCluster(_ context.Context, req *api.UpdateClusterRequest) (*api.UpdateClusterResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clusterUpdates = append(f.clusterUpdates, req)
	return &api.UpdateClusterResponse{}, nil
}

// testUnlockKey is the fake's unlock key while a cluster update turned autolock on.
const testUnlockKey = "SWMKEY-1-7c37Cc8654o6p38HnroywCi19pllOnGtbdZEgtKxZu8"

func (f *fakeControl) GetUnlockKey(context.Context, *api.GetUnlockKeyRequest) (*api.GetUnlockKeyResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	on := len(f.clusters) > 0 && f.clusters[0].Spec.EncryptionConfig.AutoLockManagers
	if n := len(f.clusterUpdates); n > 0 {
		on = f.clusterUpdates[n-1].Spec.EncryptionConfig.AutoLockManagers
	}
	if !on {
		return &api.GetUnlockKeyResponse{}, nil
	}
	return &api.GetUnlockKeyResponse{UnlockKey: testUnlockKey}, nil
}

func (f *fakeControl) GetSecret(_ context.Context, req *api.GetSecretRequest) (*api.GetSecretResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.secrets {
		if s.ID == req.SecretID || s.Spec.Annotations.Name == req.SecretID {
			return &api.GetSecretResponse{Secret: s.Copy()}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "secret %s not found", req.SecretID)
}

// serve starts f on a socket in a temporary directory and returns its path.
func serve(t *testing.T, f *fakeControl) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	api.RegisterControlServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return path
}

// swarmctl runs one command line and returns exit status, stdout and stderr.
func swarmctl(t *testing.T, socket string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(append([]string{"swarmctl", "--socket", socket}, args...), strings.NewReader(""), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func service(id, name string, version uint64, mode api.ServiceMode) *api.Service {
	s := &api.Service{ID: id, Meta: api.Meta{Version: version}}
	s.Spec.Annotations.Name = name
	s.Spec.Mode = mode
	s.Spec.Task.Container = &api.ContainerSpec{Image: "nginx:1", Env: []string{"A=1"}}
	return s
}

func replicated(n uint64) api.ServiceMode {
	return api.ServiceMode{Mode: &api.ServiceMode_Replicated{Replicated: &api.ReplicatedService{Replicas: n}}}
}

func global() api.ServiceMode {
	return api.ServiceMode{Mode: &api.ServiceMode_Global{Global: &api.GlobalService{}}}
}

func TestMissingSocketSaysHowToFixIt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nothing.sock")
	code, out, errOut := swarmctl(t, path, "node", "ls")
	want := "Error: cannot reach swarmd at " + path + ": is swarmd running? (set --socket or SWARM_SOCKET)\n"
	if code != 1 || out != "" || errOut != want {
		t.Fatalf("exit %d, stdout %q, stderr %q; want stderr %q", code, out, errOut, want)
	}
}

func TestDeadSocketSaysHowToFixIt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dead.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	lis.Close()
	code, _, errOut := swarmctl(t, path, "service", "ls")
	want := "Error: cannot reach swarmd at " + path + ": is swarmd running? (set --socket or SWARM_SOCKET)\n"
	if code != 1 || errOut != want {
		t.Fatalf("exit %d, stderr %q; want %q", code, errOut, want)
	}
}

func TestServiceUpdateSendsTheVersionReadAndOnlyTheGivenChange(t *testing.T) {
	f := &fakeControl{services: []*api.Service{service("abcdef123", "web", 17, replicated(2))}}
	sock := serve(t, f)
	code, out, errOut := swarmctl(t, sock, "service", "update", "--image", "nginx:2", "--env-add", "B=2", "abc")
	if code != 0 || out != "abc\n" || errOut != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if len(f.updates) != 1 {
		t.Fatalf("%d updates sent", len(f.updates))
	}
	u := f.updates[0]
	if u.ServiceID != "abcdef123" || u.ServiceVersion != 17 {
		t.Errorf("update of %s at version %d, want abcdef123 at 17", u.ServiceID, u.ServiceVersion)
	}
	want := f.services[0].Spec.Copy()
	want.Task.Container.Image = "nginx:2"
	want.Task.Container.Env = []string{"A=1", "B=2"}
	if !proto.Equal(want, u.Spec) {
		t.Errorf("spec sent:\n%v\nwant\n%v", u.Spec, want)
	}
}

func TestServiceUpdateOfAChangedServicePrintsTheServerMessage(t *testing.T) {
	f := &fakeControl{services: []*api.Service{service("s1", "web", 5, replicated(1))}, changeAfterGet: true}
	sock := serve(t, f)
	code, out, errOut := swarmctl(t, sock, "service", "update", "--replicas", "3", "web")
	if code != 1 || out != "" || errOut != "Error: service web changed since it was read (version 5, now 6): read it again and retry\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestServiceCreateWithABadFlagSendsNothing(t *testing.T) {
	f := &fakeControl{}
	sock := serve(t, f)
	code, _, errOut := swarmctl(t, sock, "service", "create", "--name", "web", "--image", "nginx", "--limit-cpu", "lots")
	if code != 1 || errOut != "Error: --limit-cpu: invalid value \"lots\": expected a number of CPUs like 0.5 or 2\n" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	if len(f.created) != 0 {
		t.Fatal("a service was created")
	}
}

func TestServiceCreateSendsTheSpecAndPrintsTheID(t *testing.T) {
	f := &fakeControl{secrets: []*api.Secret{{ID: "secretid1", Spec: api.SecretSpec{Annotations: api.Annotations{Name: "db-pass"}}}}}
	sock := serve(t, f)
	code, out, errOut := swarmctl(t, sock, "service", "create", "--name", "web", "--image", "busybox",
		"--replicas", "2", "--secret", "db-pass", "--", "sh", "-c", "sleep 1000")
	if code != 0 || out != "newserviceid\n" || errOut != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	spec := f.created[0]
	if spec.Annotations.Name != "web" || spec.Mode.GetReplicated().GetReplicas() != 2 || strings.Join(spec.Task.Container.Command, "|") != "sh|-c|sleep 1000" {
		t.Errorf("spec = %v", spec)
	}
	if s := spec.Task.Container.Secrets; len(s) != 1 || s[0].SecretID != "secretid1" || s[0].SecretName != "db-pass" || s[0].Target != "db-pass" {
		t.Errorf("secrets = %v", s)
	}
	code, _, errOut = swarmctl(t, sock, "service", "create", "--name", "web", "--image", "busybox", "--secret", "nope")
	if code != 1 || errOut != "Error: --secret nope: secret nope not found\n" {
		t.Fatalf("missing secret: exit %d, stderr %q", code, errOut)
	}
}

func TestScaleRefusesNonReplicatedServicesAndGoesOn(t *testing.T) {
	f := &fakeControl{services: []*api.Service{service("s1", "agent", 3, global()), service("s2", "web", 4, replicated(1))}}
	sock := serve(t, f)
	code, out, errOut := swarmctl(t, sock, "service", "scale", "agent=2", "web=5")
	if code != 1 || out != "web scaled to 5\n" || errOut != "Error: service agent is global: only replicated services can be scaled\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if len(f.updates) != 1 || f.updates[0].Spec.Mode.GetReplicated().Replicas != 5 || f.updates[0].ServiceVersion != 4 {
		t.Fatalf("updates = %v", f.updates)
	}
}

func TestServiceRmPrintsNamesAndGoesOnOverErrors(t *testing.T) {
	f := &fakeControl{services: []*api.Service{service("s1", "web", 1, replicated(1)), service("s2", "api", 1, replicated(1))}}
	sock := serve(t, f)
	code, out, errOut := swarmctl(t, sock, "service", "rm", "s1", "ghost", "api")
	if code != 1 || out != "web\napi\n" || errOut != "Error: service ghost not found\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if strings.Join(f.removed, ",") != "s1,s2" {
		t.Fatalf("removed %v", f.removed)
	}
}

func TestServiceRollbackAsksForThePreviousSpec(t *testing.T) {
	s := service("s1", "web", 9, replicated(1))
	f := &fakeControl{services: []*api.Service{s}}
	sock := serve(t, f)
	if code, _, errOut := swarmctl(t, sock, "service", "rollback", "web"); code != 1 || errOut != "Error: service web has no previous spec to roll back to\n" {
		t.Fatalf("without previous spec: exit %d, stderr %q", code, errOut)
	}
	s.PreviousSpec = s.Spec.Copy()
	if code, _, errOut := swarmctl(t, sock, "service", "rollback", "web"); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	if u := f.updates[0]; u.Rollback != api.UpdateServiceRollbackPrevious || u.ServiceVersion != 9 {
		t.Fatalf("update = %v", u)
	}
}

func TestClusterUnlockKey(t *testing.T) {
	c := &api.Cluster{ID: "c1", Meta: api.Meta{Version: 12}}
	f := &fakeControl{clusters: []*api.Cluster{c}}
	sock := serve(t, f)
	code, _, errOut := swarmctl(t, sock, "cluster", "unlock-key")
	if code != 1 || !strings.Contains(errOut, "autolock is off") || !strings.Contains(errOut, "--autolock=true") {
		t.Fatalf("unlock-key with autolock off: exit %d, stderr %q", code, errOut)
	}
	c.Spec.EncryptionConfig.AutoLockManagers = true
	code, out, errOut := swarmctl(t, sock, "cluster", "unlock-key", "-q")
	if code != 0 || out != testUnlockKey+"\n" || errOut != "" {
		t.Fatalf("unlock-key -q: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, _ = swarmctl(t, sock, "cluster", "unlock-key")
	if code != 0 || !strings.Contains(out, "    swarmd --unlock-key "+testUnlockKey+"\n") {
		t.Fatalf("unlock-key: exit %d, stdout %q", code, out)
	}
	code, out, _ = swarmctl(t, sock, "cluster", "update", "--autolock=false")
	if code != 0 || strings.Contains(out, "SWMKEY") || !strings.Contains(out, "Autolock is off") {
		t.Fatalf("autolock off: exit %d, stdout %q", code, out)
	}
}

func TestServiceLsAndPsTables(t *testing.T) {
	f := &fakeControl{
		services: []*api.Service{service("s1", "web", 1, replicated(2))},
		nodes: []*api.Node{
			{ID: "n1", Description: &api.NodeDescription{Hostname: "host-1"}, ManagerStatus: &api.ManagerStatus{Leader: true, Addr: "10.0.0.1:4242"}, Role: api.NodeRoleManager, Status: api.NodeStatus{State: api.NodeStatusReady}},
			{ID: "n2", Description: &api.NodeDescription{Hostname: "host-2"}, Status: api.NodeStatus{State: api.NodeStatusDown}, Spec: api.NodeSpec{Availability: api.NodeAvailabilityDrain}},
			{ID: "n3", Description: &api.NodeDescription{Hostname: "host-3"}, ManagerStatus: &api.ManagerStatus{Reachability: api.ReachabilityUnreachable}, Role: api.NodeRoleManager},
		},
	}
	f.tasks = []*api.Task{
		{ID: "t1", ServiceID: "s1", Slot: 1, NodeID: "n1", ServiceAnnotations: api.Annotations{Name: "web"}, DesiredState: api.TaskStateRunning,
			Status: api.TaskStatus{State: api.TaskStateRunning}, Spec: api.TaskSpec{Container: &api.ContainerSpec{Image: "nginx:1"}}},
		{ID: "t2", ServiceID: "s1", Slot: 2, NodeID: "n2", ServiceAnnotations: api.Annotations{Name: "web"}, DesiredState: api.TaskStateRunning,
			Status: api.TaskStatus{State: api.TaskStatePending}, Spec: api.TaskSpec{Container: &api.ContainerSpec{Image: "nginx:1"}}},
	}
	sock := serve(t, f)

	_, out, _ := swarmctl(t, sock, "service", "ls")
	wantLs := "ID   NAME   MODE         REPLICAS   IMAGE     PORTS\n" +
		"s1   web    replicated   1/2        nginx:1   \n"
	if out != wantLs {
		t.Errorf("service ls:\n%s\nwant:\n%s", out, wantLs)
	}

	_, out, _ = swarmctl(t, sock, "service", "ps", "web")
	wantPs := "ID   NAME    IMAGE     NODE     DESIRED STATE   CURRENT STATE   ERROR   PORTS\n" +
		"t1   web.1   nginx:1   host-1   Running         Running                 \n" +
		"t2   web.2   nginx:1   host-2   Running         Pending                 \n"
	if out != wantPs {
		t.Errorf("service ps:\n%s\nwant:\n%s", out, wantPs)
	}

	_, out, _ = swarmctl(t, sock, "node", "ls")
	wantNodes := "ID   HOSTNAME   STATUS    AVAILABILITY   MANAGER STATUS\n" +
		"n1   host-1     Ready     Active         Leader\n" +
		"n2   host-2     Down      Drain          \n" +
		"n3   host-3     Unknown   Active         Unreachable\n"
	if out != wantNodes {
		t.Errorf("node ls:\n%s\nwant:\n%s", out, wantNodes)
	}

	_, out, _ = swarmctl(t, sock, "service", "ls", "-q")
	if out != "s1\n" {
		t.Errorf("service ls -q = %q", out)
	}
	code, out, errOut := swarmctl(t, sock, "service", "ls", "--format", "yaml")
	if code != 1 || out != "" || errOut != "Error: --format: invalid value \"yaml\": expected table or json\n" {
		t.Errorf("--format yaml: exit %d, stderr %q", code, errOut)
	}
}

func TestNodePromoteSetsTheDesiredRole(t *testing.T) {
	f := &fakeControl{nodes: []*api.Node{{ID: "n2", Meta: api.Meta{Version: 3}, Description: &api.NodeDescription{Hostname: "host-2"}}}}
	sock := serve(t, f)
	code, out, _ := swarmctl(t, sock, "node", "promote", "host-2")
	if code != 0 || out != "Node host-2 promoted to a manager in the swarm.\n" {
		t.Fatalf("exit %d, stdout %q", code, out)
	}
	if u := f.nodeUpdates[0]; u.NodeID != "n2" || u.NodeVersion != 3 || u.Spec.DesiredRole != api.NodeRoleManager {
		t.Fatalf("update = %v", u)
	}
	code, _, _ = swarmctl(t, sock, "node", "update", "--label-add", "zone=a", "host-2")
	if code != 0 || f.nodeUpdates[1].Spec.Annotations.Labels["zone"] != "a" {
		t.Fatalf("label-add: exit %d, updates %v", code, f.nodeUpdates)
	}
}

func TestJoinToken(t *testing.T) {
	c := &api.Cluster{ID: "c1"}
	c.RootCA.JoinTokens = api.JoinTokens{Worker: "SWMTKN-1-abc-worker", Manager: "SWMTKN-1-abc-manager"}
	c.RootCA.CAKey = []byte("secret key")
	f := &fakeControl{
		clusters: []*api.Cluster{c},
		nodes: []*api.Node{
			{ID: "m2", Role: api.NodeRoleManager, ManagerStatus: &api.ManagerStatus{Addr: "10.0.0.2:4242", Reachability: api.ReachabilityReachable}},
			{ID: "m1", Role: api.NodeRoleManager, ManagerStatus: &api.ManagerStatus{Addr: "10.0.0.1:4242", Leader: true}},
		},
	}
	sock := serve(t, f)
	_, out, _ := swarmctl(t, sock, "cluster", "join-token", "worker")
	want := "To add a worker to this swarm, run the following command:\n\n    swarmd --join-addr 10.0.0.1:4242 --join-token SWMTKN-1-abc-worker\n"
	if out != want {
		t.Errorf("join-token worker:\n%q\nwant\n%q", out, want)
	}
	_, out, _ = swarmctl(t, sock, "cluster", "join-token", "-q", "manager")
	if out != "SWMTKN-1-abc-manager\n" {
		t.Errorf("join-token -q manager = %q", out)
	}
	_, out, _ = swarmctl(t, sock, "cluster", "inspect")
	if strings.Contains(out, "caKey") || !strings.Contains(out, `"id": "c1"`) {
		t.Errorf("cluster inspect:\n%s", out)
	}
}

func TestClusterUpdateSendsSpecAndRotation(t *testing.T) {
	c := &api.Cluster{ID: "c1", Meta: api.Meta{Version: 12}}
	c.Spec.Orchestration.TaskHistoryRetentionLimit = 5
	f := &fakeControl{clusters: []*api.Cluster{c}}
	sock := serve(t, f)
	code, out, errOut := swarmctl(t, sock, "cluster", "update", "--task-history-limit", "10", "--autolock=true", "--rotate-join-token", "worker",
		"--external-ca", "protocol=cfssl,url=https://ca.example:8888")
	if code != 0 || errOut != "" || !strings.HasPrefix(out, "Cluster updated.\n") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	u := f.clusterUpdates[0]
	if u.ClusterVersion != 12 || u.Spec.Orchestration.TaskHistoryRetentionLimit != 10 || !u.Spec.EncryptionConfig.AutoLockManagers ||
		!u.Rotation.WorkerJoinToken || u.Rotation.ManagerJoinToken || len(u.Spec.CAConfig.ExternalCAs) != 1 || u.Spec.CAConfig.ExternalCAs[0].URL != "https://ca.example:8888" {
		t.Fatalf("update = %v", u)
	}
	if !strings.Contains(out, "swarmd --unlock-key "+testUnlockKey+"\n") {
		t.Fatalf("turning autolock on did not print the unlock key:\n%s", out)
	}
}

func TestUnimplementedRPCGivesOneLine(t *testing.T) {
	sock := serve(t, &fakeControl{})
	code, _, errOut := swarmctl(t, sock, "network", "ls")
	if code != 1 || strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(errOut, "Error: ") || strings.Contains(errOut, "rpc error") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}

func TestStackIsNotImplementedYet(t *testing.T) {
	for _, sub := range []string{"deploy", "ls", "ps", "services", "rm"} {
		code, _, errOut := swarmctl(t, "/nonexistent", "stack", sub)
		if code != 1 || errOut != "Error: stack is not implemented yet\n" {
			t.Errorf("stack %s: exit %d, stderr %q", sub, code, errOut)
		}
	}
}

func TestSecretCreateReadsStdinAndInspectHidesData(t *testing.T) {
	f := &fakeControl{secrets: []*api.Secret{{ID: "sec1", Spec: api.SecretSpec{Annotations: api.Annotations{Name: "pw"}, Data: []byte("hunter2")}}}}
	sock := serve(t, f)
	_, out, _ := swarmctl(t, sock, "secret", "inspect", "pw")
	if strings.Contains(out, "data") || strings.Contains(out, "aHVudGVyMg") || !strings.Contains(out, `"name": "pw"`) {
		t.Fatalf("secret inspect:\n%s", out)
	}
	var stdout, stderr bytes.Buffer
	code := run([]string{"swarmctl", "--socket", sock, "secret", "create", "-f", "-", "new"}, strings.NewReader(""), &stdout, &stderr)
	if code != 1 || stderr.String() != "Error: the secret data is empty\n" {
		t.Fatalf("empty stdin: exit %d, stderr %q", code, stderr.String())
	}
}
