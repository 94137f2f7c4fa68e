package manager

import (
	"context"
	"net"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

// fakeControl answers CreateService and GetService with its own name, so a
// test sees which manager served a call.
type fakeControl struct {
	api.UnimplementedControlServer
	name      string
	forwarded atomic.Int32 // calls that carried the forwarded mark
}

func (c *fakeControl) CreateService(ctx context.Context, req *api.CreateServiceRequest) (*api.CreateServiceResponse, error) {
	if md, _ := metadata.FromIncomingContext(ctx); len(md.Get(forwardedHeader)) > 0 {
		c.forwarded.Add(1)
	}
	return &api.CreateServiceResponse{Service: &api.Service{ID: c.name + "/" + req.Spec.Annotations.Name}}, nil
}

func (c *fakeControl) GetService(context.Context, *api.GetServiceRequest) (*api.GetServiceResponse, error) {
	return &api.GetServiceResponse{Service: &api.Service{ID: c.name}}, nil
}

// serveControl serves ctl with f's interceptor on a loopback port.
func serveControl(t *testing.T, ctl api.ControlServer, f *forwarder) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.ChainUnaryInterceptor(f.unary))
	api.RegisterControlServer(s, ctl)
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	return l.Addr().String()
}

func plainDial(_ context.Context, addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

func controlClient(t *testing.T, addr string) api.ControlClient {
	t.Helper()
	c, err := plainDial(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return api.NewControlClient(c)
}

// On a follower, writes go to the leader (marked as forwarded, answered
// once the follower applied what the leader had), and reads stay local. A
// forwarded call that reaches a manager that is not the leader any more is
// refused, not forwarded again.
func TestFollowerForwardsWritesAndServesReads(t *testing.T) {
	leaderCtl := &fakeControl{name: "leader"}
	leaderAddr := serveControl(t, leaderCtl, &forwarder{
		isLeader: func() bool { return true },
		applied:  func() uint64 { return 42 },
	})
	var waited atomic.Uint64
	follower := &forwarder{
		isLeader:   func() bool { return false },
		leaderAddr: func() string { return leaderAddr },
		waitApplied: func(_ context.Context, index uint64) error {
			waited.Store(index)
			return nil
		},
		dial: plainDial,
	}
	defer follower.close()
	followerCtl := &fakeControl{name: "follower"}
	ctl := controlClient(t, serveControl(t, followerCtl, follower))
	ctx := context.Background()

	created, err := ctl.CreateService(ctx, &api.CreateServiceRequest{Spec: &api.ServiceSpec{Annotations: api.Annotations{Name: "web"}}})
	if err != nil {
		t.Fatal(err)
	}
	if created.Service.ID != "leader/web" || leaderCtl.forwarded.Load() != 1 {
		t.Fatalf("create served as %q (forwarded %d), want by the leader, forwarded once", created.Service.ID, leaderCtl.forwarded.Load())
	}
	if waited.Load() != 42 {
		t.Fatalf("the follower waited for index %d, want the leader's 42", waited.Load())
	}
	got, err := ctl.GetService(ctx, &api.GetServiceRequest{ServiceID: "web"})
	if err != nil || got.Service.ID != "follower" {
		t.Fatalf("read served by %v (%v), want the follower itself", got, err)
	}

	// A forwarded write arriving at a non-leader is refused.
	fwd := metadata.AppendToOutgoingContext(ctx, forwardedHeader, "1")
	_, err = ctl.CreateService(fwd, &api.CreateServiceRequest{Spec: &api.ServiceSpec{Annotations: api.Annotations{Name: "x"}}})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("second hop: %v, want Unavailable", err)
	}
	// No leader known: the local handler answers (the store's "no leader").
	follower.leaderAddr = func() string { return "" }
	if created, err := ctl.CreateService(ctx, &api.CreateServiceRequest{Spec: &api.ServiceSpec{Annotations: api.Annotations{Name: "y"}}}); err != nil || created.Service.ID != "follower/y" {
		t.Fatalf("without a leader: %v, %v; want the local handler", created, err)
	}
}

func TestIsControlWrite(t *testing.T) {
	for method, want := range map[string]bool{
		"/flotilla.api.Control/CreateService": true, "/flotilla.api.Control/UpdateNode": true, "/flotilla.api.Control/RemoveTask": true,
		"/flotilla.api.Control/GetService": false, "/flotilla.api.Control/ListTasks": false, "/flotilla.api.Dispatcher/Session": false,
	} {
		if got := isControlWrite(method); got != want {
			t.Errorf("isControlWrite(%s) = %v", method, got)
		}
	}
	for _, m := range api.ControlServiceMethods() {
		if controlResponseTypes[m] == nil {
			t.Errorf("no response type for Control method %s", m)
		}
	}
}
