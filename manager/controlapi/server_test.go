package controlapi_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/defaults"
	"github.com/flotilla/flotilla/manager/controlapi"
	"github.com/flotilla/flotilla/manager/store"
	"github.com/flotilla/flotilla/manager/store/storetest"
	"github.com/flotilla/flotilla/manager/watchapi"
)

type harness struct {
	store   *store.MemoryStore
	control api.ControlClient
	watch   api.WatchClient
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	s, _ := storetest.New()
	sock := filepath.Join(t.TempDir(), "control.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	api.RegisterControlServer(srv, controlapi.NewServer(s, nil))
	api.RegisterWatchServer(srv, watchapi.NewServer(s))
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &harness{store: s, control: api.NewControlClient(conn), watch: api.NewWatchClient(conn)}
}

func spec(name string, replicas uint64) *api.ServiceSpec {
	return &api.ServiceSpec{
		Annotations: api.Annotations{Name: name},
		Task:        api.TaskSpec{Container: &api.ContainerSpec{Image: "busybox:latest", Command: []string{"sleep", "1d"}}},
		Mode:        api.ServiceMode{Mode: &api.ServiceMode_Replicated{Replicated: &api.ReplicatedService{Replicas: replicas}}},
	}
}

func wantCode(t *testing.T, err error, code codes.Code, msgPart string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code || !strings.Contains(st.Message(), msgPart) {
		t.Fatalf("got %v %q, want %v containing %q", st.Code(), st.Message(), code, msgPart)
	}
}

func TestServiceLifecycleOverGRPC(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	created, err := h.control.CreateService(ctx, &api.CreateServiceRequest{Spec: spec("web", 3)})
	if err != nil {
		t.Fatal(err)
	}
	svc := created.Service
	if svc.ID == "" || svc.Meta.Version == 0 || svc.Meta.CreatedAt == nil {
		t.Fatalf("created service lacks ID or meta: %+v", svc)
	}
	for _, ref := range []string{svc.ID, "web", "WEB", svc.ID[:5]} {
		got, err := h.control.GetService(ctx, &api.GetServiceRequest{ServiceID: ref})
		if err != nil || got.Service.ID != svc.ID {
			t.Fatalf("get by %q: %v", ref, err)
		}
	}
	_, err = h.control.CreateService(ctx, &api.CreateServiceRequest{Spec: spec("web", 1)})
	wantCode(t, err, codes.AlreadyExists, `service "web" already exists`)

	// Update from the version read works once; the same version again is stale.
	next := svc.Spec.Copy()
	next.Mode.GetReplicated().Replicas = 5
	upd, err := h.control.UpdateService(ctx, &api.UpdateServiceRequest{ServiceID: "web", ServiceVersion: svc.Meta.Version, Spec: next})
	if err != nil {
		t.Fatal(err)
	}
	if upd.Service.Spec.Mode.GetReplicated().Replicas != 5 || upd.Service.PreviousSpec == nil || upd.Service.SpecVersion != 2 {
		t.Fatalf("update not applied: %+v", upd.Service)
	}
	_, err = h.control.UpdateService(ctx, &api.UpdateServiceRequest{ServiceID: "web", ServiceVersion: svc.Meta.Version, Spec: next})
	wantCode(t, err, codes.FailedPrecondition, "read it again and retry")

	// Rollback returns to the previous spec.
	rb, err := h.control.UpdateService(ctx, &api.UpdateServiceRequest{ServiceID: "web", ServiceVersion: upd.Service.Meta.Version, Rollback: api.UpdateServiceRollbackPrevious})
	if err != nil {
		t.Fatal(err)
	}
	if rb.Service.Spec.Mode.GetReplicated().Replicas != 3 {
		t.Fatalf("rollback: replicas %d, want 3", rb.Service.Spec.Mode.GetReplicated().Replicas)
	}

	renamed := rb.Service.Spec.Copy()
	renamed.Annotations.Name = "web2"
	_, err = h.control.UpdateService(ctx, &api.UpdateServiceRequest{ServiceID: "web", ServiceVersion: rb.Service.Meta.Version, Spec: renamed})
	wantCode(t, err, codes.InvalidArgument, "renaming a service is not supported")

	if _, err := h.control.RemoveService(ctx, &api.RemoveServiceRequest{ServiceID: "web"}); err != nil {
		t.Fatal(err)
	}
	_, err = h.control.GetService(ctx, &api.GetServiceRequest{ServiceID: "web"})
	wantCode(t, err, codes.NotFound, `service "web" not found`)
}

func TestInvalidServiceSpecs(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	noImage := spec("a", 1)
	noImage.Task.Container.Image = ""
	noMode := spec("a", 1)
	noMode.Mode = api.ServiceMode{}
	for _, c := range []struct {
		name string
		spec *api.ServiceSpec
		msg  string
	}{
		{"no spec", nil, "spec is required"},
		{"bad name", spec("-web", 1), "name \"-web\" is invalid"},
		{"long name", spec(strings.Repeat("a", 64), 1), "at most 63"},
		{"no image", noImage, "an image is required"},
		{"no mode", noMode, "mode is required"},
		{"too many replicas", spec("a", 1<<40), "more than the limit"},
		{"bad image", func() *api.ServiceSpec { s := spec("a", 1); s.Task.Container.Image = "Busybox"; return s }(), "lowercase"},
		{"bad constraint", func() *api.ServiceSpec {
			s := spec("a", 1)
			s.Task.Placement = &api.Placement{Constraints: []string{"node.colour==red"}}
			return s
		}(), "unknown key"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := h.control.CreateService(ctx, &api.CreateServiceRequest{Spec: c.spec})
			wantCode(t, err, codes.InvalidArgument, c.msg)
		})
	}
	list, err := h.control.ListServices(ctx, &api.ListServicesRequest{})
	if err != nil || len(list.Services) != 0 {
		t.Fatalf("invalid creates left %d services (%v)", len(list.Services), err)
	}
}

func TestAmbiguousPrefixListsMatches(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	// 37 random base-36 IDs: two share a first character.
	first := map[string][]string{}
	for i := 0; i < 37; i++ {
		r, err := h.control.CreateService(ctx, &api.CreateServiceRequest{Spec: spec(fmt.Sprintf("s%d", i), 1)})
		if err != nil {
			t.Fatal(err)
		}
		first[r.Service.ID[:1]] = append(first[r.Service.ID[:1]], r.Service.ID)
	}
	for prefix, ids := range first {
		if len(ids) < 2 {
			continue
		}
		_, err := h.control.GetService(ctx, &api.GetServiceRequest{ServiceID: prefix})
		wantCode(t, err, codes.InvalidArgument, "give more of the ID")
		for _, id := range ids {
			if !strings.Contains(err.Error(), id) {
				t.Errorf("error %q does not list %s", err, id)
			}
		}
		return
	}
	t.Fatal("no shared prefix among 37 IDs")
}

func TestListFilters(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	for _, n := range []string{"web", "web-api", "db"} {
		s := spec(n, 1)
		s.Annotations.Labels = map[string]string{"tier": map[bool]string{true: "front", false: "back"}[strings.HasPrefix(n, "web")]}
		if _, err := h.control.CreateService(ctx, &api.CreateServiceRequest{Spec: s}); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		f    api.ListFilters
		want int
	}{
		{api.ListFilters{Names: []string{"WEB"}}, 1},
		{api.ListFilters{NamePrefixes: []string{"web"}}, 2},
		{api.ListFilters{Labels: map[string]string{"tier": "back"}}, 1},
		{api.ListFilters{Labels: map[string]string{"tier": ""}}, 3},
	} {
		r, err := h.control.ListServices(ctx, &api.ListServicesRequest{Filters: &api.ListServicesRequest_Filters{ListFilters: c.f}})
		if err != nil || len(r.Services) != c.want {
			t.Errorf("filter %+v: %d services (%v), want %d", c.f, len(r.Services), err, c.want)
		}
	}
}

func TestClusterSecretsNeverReturned(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	err := h.store.Update(ctx, func(tx store.Tx) error {
		return tx.Create(&api.Cluster{ID: "c1", Spec: defaults.ClusterSpec(),
			RootCA:     api.RootCA{CAKey: []byte("KEY"), CACert: []byte("CERT")},
			UnlockKeys: []*api.EncryptionKey{{Key: []byte("UNLOCK")}}})
	})
	if err != nil {
		t.Fatal(err)
	}
	r, err := h.control.ListClusters(ctx, &api.ListClustersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	c := r.Clusters[0]
	if c.RootCA.CAKey != nil || c.UnlockKeys != nil || string(c.RootCA.CACert) != "CERT" {
		t.Fatalf("cluster returned with secrets or without its certificate: %+v", c.RootCA)
	}
	bad := c.Spec.Copy()
	bad.CAConfig.NodeCertExpiry = nil
	bad.Dispatcher.HeartbeatPeriod = nil
	bad.Orchestration.TaskHistoryRetentionLimit = -1
	_, err = h.control.UpdateCluster(ctx, &api.UpdateClusterRequest{ClusterID: "c1", ClusterVersion: c.Meta.Version, Spec: bad})
	wantCode(t, err, codes.InvalidArgument, "task history limit")
	good := c.Spec.Copy()
	good.Orchestration.TaskHistoryRetentionLimit = 2
	if _, err := h.control.UpdateCluster(ctx, &api.UpdateClusterRequest{ClusterID: "default", ClusterVersion: c.Meta.Version, Spec: good}); err != nil {
		t.Fatal(err)
	}
}

func TestNodeRules(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	err := h.store.Update(ctx, func(tx store.Tx) error {
		if err := tx.Create(&api.Node{ID: "m1", Role: api.NodeRoleManager, Spec: api.NodeSpec{DesiredRole: api.NodeRoleManager},
			Description: &api.NodeDescription{Hostname: "alpha"}, Status: api.NodeStatus{State: api.NodeStatusReady}}); err != nil {
			return err
		}
		return tx.Create(&api.Node{ID: "w1", Description: &api.NodeDescription{Hostname: "beta"}, Status: api.NodeStatus{State: api.NodeStatusReady}})
	})
	if err != nil {
		t.Fatal(err)
	}
	n, err := h.control.GetNode(ctx, &api.GetNodeRequest{NodeID: "alpha"})
	if err != nil {
		t.Fatal(err)
	}
	demote := n.Node.Spec.Copy()
	demote.DesiredRole = api.NodeRoleWorker
	_, err = h.control.UpdateNode(ctx, &api.UpdateNodeRequest{NodeID: "alpha", NodeVersion: n.Node.Meta.Version, Spec: demote})
	wantCode(t, err, codes.FailedPrecondition, "only manager")

	drain := n.Node.Spec.Copy()
	drain.Availability = api.NodeAvailabilityDrain
	drain.Annotations.Labels = map[string]string{"zone": "a"}
	upd, err := h.control.UpdateNode(ctx, &api.UpdateNodeRequest{NodeID: "alpha", NodeVersion: n.Node.Meta.Version, Spec: drain})
	if err != nil || upd.Node.Spec.Availability != api.NodeAvailabilityDrain {
		t.Fatalf("drain: %v", err)
	}

	_, err = h.control.RemoveNode(ctx, &api.RemoveNodeRequest{NodeID: "alpha", Force: true})
	wantCode(t, err, codes.FailedPrecondition, "demote it")
	_, err = h.control.RemoveNode(ctx, &api.RemoveNodeRequest{NodeID: "beta"})
	wantCode(t, err, codes.FailedPrecondition, "--force")
	if _, err := h.control.RemoveNode(ctx, &api.RemoveNodeRequest{NodeID: "beta", Force: true}); err != nil {
		t.Fatal(err)
	}
	_, err = h.control.CreateNetwork(ctx, &api.CreateNetworkRequest{})
	wantCode(t, err, codes.Unimplemented, "")
}

func TestWatchStreamsFilteredChangesAndResumes(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Version 0 means "from now", so make the store's first change first.
	if _, err := h.control.CreateService(ctx, &api.CreateServiceRequest{Spec: spec("first", 1)}); err != nil {
		t.Fatal(err)
	}
	stream, err := h.watch.Watch(ctx, &api.WatchRequest{Entries: []*api.WatchRequest_WatchEntry{{
		Kind: "service", Action: uint32(api.WatchActionKindCreate),
		Filters: []*api.SelectBy{{By: &api.SelectBy_NamePrefix{NamePrefix: "web"}}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || len(first.Events) != 0 {
		t.Fatalf("first message: %+v %v", first, err)
	}
	var versions []uint64
	for _, n := range []string{"db", "web"} {
		r, err := h.control.CreateService(ctx, &api.CreateServiceRequest{Spec: spec(n, 1)})
		if err != nil {
			t.Fatal(err)
		}
		versions = append(versions, r.Service.Meta.Version)
	}
	m, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Events) != 1 || m.Events[0].Object.GetService().Spec.Annotations.Name != "web" || m.Version != versions[1] {
		t.Fatalf("watch got %+v, want only the creation of web at %d", m, versions[1])
	}

	// Resuming from before db's creation replays both creations.
	resumed, err := h.watch.Watch(ctx, &api.WatchRequest{ResumeFrom: versions[0] - 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := resumed.Recv(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"db", "web"} {
		m, err := resumed.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if got := m.Events[0].Object.GetService().Spec.Annotations.Name; got != want {
			t.Fatalf("replayed %q, want %q", got, want)
		}
	}
	bad, err := h.watch.Watch(ctx, &api.WatchRequest{Entries: []*api.WatchRequest_WatchEntry{{Kind: "gadget"}}})
	if err == nil {
		_, err = bad.Recv()
	}
	wantCode(t, err, codes.InvalidArgument, "unknown object kind")
}
