package logbroker

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/store"
	"github.com/flotilla/flotilla/manager/store/storetest"
)

// The tests serve a Broker on a unix socket; agents say who they are in
// the "node" metadata (the manager takes it from the certificate).

type harness struct {
	t      *testing.T
	b      *Broker
	store  *store.MemoryStore
	conn   *grpc.ClientConn
	logs   api.LogsClient
	broker api.LogBrokerClient
	stop   context.CancelFunc
	done   chan struct{}
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	s, _ := storetest.New()
	b := New(Config{
		Store:    s,
		NodeWait: 300 * time.Millisecond,
		Identify: func(ctx context.Context) (string, error) {
			md, _ := metadata.FromIncomingContext(ctx)
			if v := md.Get("node"); len(v) == 1 {
				return v[0], nil
			}
			return "", status.Error(codes.Unauthenticated, "no node")
		},
	})
	path := filepath.Join(t.TempDir(), "s.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	api.RegisterLogsServer(srv, b)
	api.RegisterLogBrokerServer(srv, b)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	h := &harness{t: t, b: b, store: s, conn: conn, logs: api.NewLogsClient(conn), broker: api.NewLogBrokerClient(conn)}
	return h
}

func (h *harness) run() {
	ctx, cancel := context.WithCancel(context.Background())
	h.stop, h.done = cancel, make(chan struct{})
	go func() { defer close(h.done); _ = h.b.Run(ctx) }()
	// Run has started once a handler stops answering Unavailable.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := h.b.term(); err == nil {
			break
		}
		if time.Now().After(deadline) {
			h.t.Fatal("Run did not start")
		}
		time.Sleep(time.Millisecond)
	}
	h.t.Cleanup(func() { cancel(); <-h.done })
}

func (h *harness) create(objs ...api.StoreObject) {
	h.t.Helper()
	err := h.store.Update(context.Background(), func(tx store.Tx) error {
		for _, o := range objs {
			if err := tx.Create(o); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		h.t.Fatal(err)
	}
}

func readyNode(id string) *api.Node {
	return &api.Node{ID: id, Description: &api.NodeDescription{Hostname: "host-" + id}, Status: api.NodeStatus{State: api.NodeStatusReady}}
}

func task(id, service, node string) *api.Task {
	return &api.Task{ID: id, ServiceID: service, NodeID: node, Slot: 1}
}

func asNode(ctx context.Context, id string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "node", id)
}

func (h *harness) listen(ctx context.Context, node string) api.LogBroker_ListenSubscriptionsClient {
	h.t.Helper()
	l, err := h.broker.ListenSubscriptions(asNode(ctx, node), &api.ListenSubscriptionsRequest{})
	if err != nil {
		h.t.Fatal(err)
	}
	return l
}

func line(taskID, data string) *api.LogMessage {
	return &api.LogMessage{Context: api.LogContext{TaskID: taskID}, Stream: api.LogStreamStdout, Data: []byte(data)}
}

func TestHandlersAnswerUnavailableOutsideRun(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := h.logs.SubscribeLogs(ctx, &api.SubscribeLogsRequest{Selector: &api.LogSelector{ServiceIDs: []string{"x"}}})
	if err == nil {
		_, err = s.Recv()
	}
	if status.Code(err) != codes.Unavailable {
		t.Errorf("SubscribeLogs: %v, want Unavailable", err)
	}
	if _, err := h.listen(ctx, "n1").Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("ListenSubscriptions: %v, want Unavailable", err)
	}

	// Streams open when Run ends are ended with Unavailable too.
	h.run()
	l := h.listen(ctx, "n1")
	h.create(readyNode("n1"), &api.Service{ID: "svc", Spec: api.ServiceSpec{Annotations: api.Annotations{Name: "web"}}}, task("t1", "svc", "n1"))
	sub, err := h.logs.SubscribeLogs(ctx, &api.SubscribeLogsRequest{Selector: &api.LogSelector{ServiceIDs: []string{"web"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Recv(); err != nil {
		t.Fatalf("node got no subscription: %v", err)
	}
	h.stop()
	<-h.done
	if _, err := sub.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("client stream after Run ended: %v, want Unavailable", err)
	}
	if _, err := l.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("listener after Run ended: %v, want Unavailable", err)
	}
}

// A client that does not read makes the publisher block (the queue is
// bounded), and ending the client unblocks and ends it.
func TestSlowClientBlocksThePublisher(t *testing.T) {
	h := newHarness(t)
	h.run()
	h.create(readyNode("n1"), &api.Service{ID: "svc"}, task("t1", "svc", "n1"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l := h.listen(ctx, "n1")
	cctx, ccancel := context.WithCancel(ctx)
	if _, err := h.logs.SubscribeLogs(cctx, &api.SubscribeLogsRequest{Selector: &api.LogSelector{ServiceIDs: []string{"svc"}}}); err != nil {
		t.Fatal(err)
	}
	m, err := l.Recv()
	if err != nil {
		t.Fatal(err)
	}
	s := h.b.subscription(m.ID)
	pub, err := h.broker.PublishLogs(asNode(ctx, "n1"))
	if err != nil {
		t.Fatal(err)
	}
	// 64 KiB per message: the client's transport window and the queue fill.
	big := make([]byte, 64<<10)
	sent := make(chan int, 1)
	go func() {
		n := 0
		for ; n < 10000; n++ {
			if err := pub.Send(&api.PublishLogsMessage{SubscriptionID: m.ID, Messages: []*api.LogMessage{line("t1", string(big))}}); err != nil {
				break
			}
		}
		sent <- n
	}()
	// The queue fills and stays full: the publisher is held back.
	deadline := time.Now().Add(10 * time.Second)
	for len(s.out) < ClientQueue {
		if time.Now().After(deadline) {
			t.Fatalf("client queue at %d of %d", len(s.out), ClientQueue)
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case n := <-sent:
		t.Fatalf("the publisher sent all %d messages to a client that reads nothing", n)
	case <-time.After(300 * time.Millisecond):
	}
	ccancel()
	select {
	case n := <-sent:
		t.Logf("publisher stopped after %d messages of 64 KiB (queue %d)", n, ClientQueue)
	case <-time.After(10 * time.Second):
		t.Fatal("the publisher stayed blocked after the client left")
	}
	// The node is told the subscription is over.
	if m, err := l.Recv(); err != nil || !m.Close {
		t.Errorf("after the client left the node got %v, %v; want close", m, err)
	}
}

// With follow, a node that loses its listener is reported and sent the
// subscription again, for new lines only, when it listens again.
func TestFollowResendsToANodeThatComesBack(t *testing.T) {
	h := newHarness(t)
	h.run()
	h.create(readyNode("n1"), &api.Service{ID: "svc"}, task("t1", "svc", "n1"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	lctx, lcancel := context.WithCancel(ctx)
	l := h.listen(lctx, "n1")
	sub, err := h.logs.SubscribeLogs(ctx, &api.SubscribeLogsRequest{
		Selector: &api.LogSelector{ServiceIDs: []string{"svc"}},
		Options:  &api.LogSubscriptionOptions{Follow: true, Tail: 10},
	})
	if err != nil {
		t.Fatal(err)
	}
	m, err := l.Recv()
	if err != nil || m.Options.Tail != 10 {
		t.Fatalf("first subscription %v, %v", m, err)
	}
	lcancel()
	got, err := sub.Recv()
	if err != nil || len(got.Notices) != 1 || got.Notices[0].NodeID != "n1" {
		t.Fatalf("after the listener went: %v, %v; want a notice about n1", got, err)
	}
	t.Logf("notice: %s", got.Notices[0].Message)
	l = h.listen(ctx, "n1")
	m2, err := l.Recv()
	if err != nil || m2.ID != m.ID || m2.Options.Tail != -1 {
		t.Fatalf("after coming back: %v, %v; want the same subscription with tail -1", m2, err)
	}
	// Its lines flow again.
	pub, err := h.broker.PublishLogs(asNode(ctx, "n1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Send(&api.PublishLogsMessage{SubscriptionID: m.ID, Messages: []*api.LogMessage{line("t1", "again")}}); err != nil {
		t.Fatal(err)
	}
	got, err = sub.Recv()
	if err != nil || len(got.Messages) != 1 || string(got.Messages[0].Data) != "again" || got.Messages[0].Context.ServiceID != "svc" || got.Messages[0].Context.NodeID != "n1" {
		t.Fatalf("line after coming back: %v, %v", got, err)
	}
}

// Resolution: names, prefixes, and what cannot be resolved.
func TestSelectorResolution(t *testing.T) {
	h := newHarness(t)
	h.run()
	h.create(
		&api.Service{ID: "svcaaa", Spec: api.ServiceSpec{Annotations: api.Annotations{Name: "web"}}},
		&api.Service{ID: "svcaab", Spec: api.ServiceSpec{Annotations: api.Annotations{Name: "db"}}},
	)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, tc := range []struct {
		sel  *api.LogSelector
		want codes.Code
	}{
		{&api.LogSelector{}, codes.InvalidArgument},
		{&api.LogSelector{ServiceIDs: []string{"nope"}}, codes.NotFound},
		{&api.LogSelector{ServiceIDs: []string{"svcaa"}}, codes.InvalidArgument}, // ambiguous prefix
		{&api.LogSelector{TaskIDs: []string{"web"}}, codes.NotFound},             // tasks have no names
		{&api.LogSelector{ServiceIDs: []string{"web"}}, codes.OK},                // no task: ends at once
		{&api.LogSelector{ServiceIDs: []string{"svcaab"}}, codes.OK},
	} {
		s, err := h.logs.SubscribeLogs(ctx, &api.SubscribeLogsRequest{Selector: tc.sel})
		if err == nil {
			_, err = s.Recv()
		}
		if code := status.Code(err); code != tc.want && !(tc.want == codes.OK && err != nil && err.Error() == "EOF") {
			t.Errorf("selector %v: %v, want %s", tc.sel, err, tc.want)
		}
	}
}
