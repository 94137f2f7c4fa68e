package main

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gogo/protobuf/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

// logsFake serves the Control fake and a Logs service that sends what it is
// given.
type logsFake struct {
	*fakeControl
	api.UnimplementedLogsServer

	mu   sync.Mutex
	reqs []*api.SubscribeLogsRequest
	send []*api.SubscribeLogsMessage
	// hold keeps the stream open after send until the client leaves.
	hold bool
}

func (f *logsFake) GetTask(_ context.Context, req *api.GetTaskRequest) (*api.GetTaskResponse, error) {
	f.fakeControl.mu.Lock()
	defer f.fakeControl.mu.Unlock()
	for _, t := range f.tasks {
		if t.ID == req.TaskID || strings.HasPrefix(t.ID, req.TaskID) {
			return &api.GetTaskResponse{Task: t.Copy()}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "task %s not found", req.TaskID)
}

func (f *logsFake) SubscribeLogs(req *api.SubscribeLogsRequest, stream api.Logs_SubscribeLogsServer) error {
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	send, hold := f.send, f.hold
	f.mu.Unlock()
	for _, m := range send {
		if err := stream.Send(m); err != nil {
			return err
		}
	}
	if hold {
		<-stream.Context().Done()
	}
	return nil
}

func serveLogs(t *testing.T, f *logsFake) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	api.RegisterControlServer(srv, f)
	api.RegisterLogsServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return path
}

func logNode(id, host string) *api.Node {
	return &api.Node{ID: id, Description: &api.NodeDescription{Hostname: host}}
}

func logTask(id, service string, slot uint64, node string) *api.Task {
	return &api.Task{ID: id, ServiceID: service, Slot: slot, NodeID: node}
}

func logLine(task, service, node string, stream api.LogStream, data string, at time.Time) *api.LogMessage {
	ts, _ := types.TimestampProto(at)
	return &api.LogMessage{
		Context:   api.LogContext{ServiceID: service, NodeID: node, TaskID: task},
		Timestamp: ts, Stream: stream, Data: []byte(data),
	}
}

func newLogsFake() *logsFake {
	svc := service("svc1", "web", 1, replicated(2))
	return &logsFake{fakeControl: &fakeControl{
		services: []*api.Service{svc},
		tasks: []*api.Task{
			logTask("task1aaaaaaaaaaaaaaaaaaaa", "svc1", 1, "node1"),
			logTask("task2bbbbbbbbbbbbbbbbbbbb", "svc1", 2, "node2"),
			logTask("task3cccccccccccccccccccc", "svc1", 10, "node2"), // scaled up later
		},
		nodes: []*api.Node{logNode("node1", "alpha"), logNode("node2", "beta-long")},
	}}
}

func TestServiceLogsFormatsLinesLikeDocker(t *testing.T) {
	f := newLogsFake()
	at := time.Date(2025, 1, 2, 3, 4, 5, 6000, time.UTC)
	f.send = []*api.SubscribeLogsMessage{
		{Messages: []*api.LogMessage{
			logLine("task1aaaaaaaaaaaaaaaaaaaa", "svc1", "node1", api.LogStreamStdout, "hello", at),
			logLine("task2bbbbbbbbbbbbbbbbbbbb", "svc1", "node2", api.LogStreamStderr, "oops\n", at),
		}},
		{Notices: []*api.LogNotice{{NodeID: "node3", Message: "node gamma (node3) is down: logs of its tasks are not available"}}},
		{Messages: []*api.LogMessage{logLine("task3cccccccccccccccccccc", "svc1", "node2", api.LogStreamStdout, "new task", at)}},
	}
	sock := serveLogs(t, f)

	code, out, errOut := swarmctl(t, sock, "service", "logs", "--tail", "5", "--since", "1h", "web")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	// Prefixes padded to the widest known task ("web.10.task3ccccccc@beta-long").
	wantOut := "" +
		"web.1.task1aaaaaaa@alpha         | hello\n" +
		"web.10.task3ccccccc@beta-long    | new task\n"
	wantErr := "" +
		"web.2.task2bbbbbbb@beta-long     | oops\n" +
		"Warning: node gamma (node3) is down: logs of its tasks are not available\n"
	if out != wantOut || errOut != wantErr {
		t.Errorf("stdout:\n%s\nwant:\n%s\nstderr:\n%s\nwant:\n%s", out, wantOut, errOut, wantErr)
	}
	req := f.reqs[0]
	if len(req.Selector.ServiceIDs) != 1 || req.Selector.ServiceIDs[0] != "svc1" || req.Options.Tail != 5 || req.Options.Follow {
		t.Errorf("request %+v", req)
	}
	since, _ := types.TimestampFromProto(req.Options.Since)
	if d := time.Since(since); d < 59*time.Minute || d > 61*time.Minute {
		t.Errorf("--since 1h sent %s (%s ago)", since, d)
	}

	code, out, _ = swarmctl(t, sock, "service", "logs", "-t", "--no-task-ids", "--tail", "0", "web")
	if code != 0 || !strings.HasPrefix(out, "2025-01-02T03:04:05.000006000Z web.1@alpha ") || !strings.Contains(out, "    | hello\n") {
		t.Errorf("--timestamps --no-task-ids: %q", out)
	}
	if f.reqs[1].Options.Tail != -1 {
		t.Errorf("--tail 0 sent tail %d, want -1 (none of the past)", f.reqs[1].Options.Tail)
	}
	code, out, _ = swarmctl(t, sock, "service", "logs", "--raw", "--no-trunc", "web")
	if code != 0 || out != "hello\nnew task\n" {
		t.Errorf("--raw: %q", out)
	}
	code, out, _ = swarmctl(t, sock, "task", "logs", "--no-trunc", "task2")
	if code != 0 || f.reqs[3].Selector.TaskIDs[0] != "task2bbbbbbbbbbbbbbbbbbbb" || !strings.Contains(out, "web.1.task1aaaaaaaaaaaaaaaaaaaa@alpha") {
		t.Errorf("task logs: exit %d, request %+v, stdout %q", code, f.reqs[3], out)
	}
}

func TestServiceLogsFailsOnlyWhenNothingCouldBeRead(t *testing.T) {
	f := newLogsFake()
	f.send = []*api.SubscribeLogsMessage{{Notices: []*api.LogNotice{
		{NodeID: "node1", Message: "node alpha (node1) is down"},
		{NodeID: "node2", Message: "node beta-long (node2) is unreachable"},
	}}}
	sock := serveLogs(t, f)
	code, _, errOut := swarmctl(t, sock, "service", "logs", "web")
	if code != 1 || !strings.Contains(errOut, "Warning: node alpha (node1) is down\n") || !strings.Contains(errOut, "Error: no logs could be read") {
		t.Errorf("every node down: exit %d, stderr %q; want 1 with the warnings and an error", code, errOut)
	}
	f.send = f.send[:1]
	f.send[0].Notices = f.send[0].Notices[:1]
	if code, _, errOut := swarmctl(t, sock, "service", "logs", "web"); code != 0 {
		t.Errorf("one node down of two: exit %d, stderr %q; want 0", code, errOut)
	}
}

func TestServiceLogsBadFlagsAndUnknownService(t *testing.T) {
	sock := serveLogs(t, newLogsFake())
	for _, args := range [][]string{
		{"service", "logs", "--tail", "-3", "web"},
		{"service", "logs", "--tail", "x", "web"},
		{"service", "logs", "--since", "yesterday", "web"},
		{"service", "logs"},
		{"service", "logs", "nope"},
	} {
		code, _, errOut := swarmctl(t, sock, args...)
		if code != 1 || strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(errOut, "Error: ") {
			t.Errorf("%v: exit %d, stderr %q; want one error line", args, code, errOut)
		}
	}
}

func TestServiceLogsFollowEndsCleanlyWhenInterrupted(t *testing.T) {
	f := newLogsFake()
	f.hold = true
	f.send = []*api.SubscribeLogsMessage{{Messages: []*api.LogMessage{
		logLine("task1aaaaaaaaaaaaaaaaaaaa", "svc1", "node1", api.LogStreamStdout, "hello", time.Now()),
	}}}
	sock := serveLogs(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut strings.Builder
	done := make(chan int, 1)
	go func() {
		app := newApp(strings.NewReader(""), &syncWriter{w: &out}, &syncWriter{w: &errOut})
		err := app.RunContext(ctx, []string{"swarmctl", "--socket", sock, "service", "logs", "-f", "web"})
		if err != nil {
			done <- 1
			return
		}
		done <- 0
	}()
	// Wait for the subscription, then stand in for Ctrl-C (the command
	// ends on its context as it does on SIGINT).
	deadline := time.Now().Add(10 * time.Second)
	for {
		f.mu.Lock()
		n := len(f.reqs)
		f.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no subscription within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !f.reqs[0].Options.Follow {
		t.Errorf("-f did not ask to follow")
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("interrupted follow: exit %d, stderr %q", code, errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("follow did not end after the interrupt")
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
