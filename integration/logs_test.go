package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gogo/protobuf/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/agent/exec/sim"
	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/ca"
)

// Service logs through the leader's log broker, on in-process clusters: the
// sim executor's tasks print a start line and SIM_LOG numbered lines
// (agent/exec/sim/logs.go).

func logsClient(t *testing.T, sock string) api.LogsClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return api.NewLogsClient(conn)
}

// logRead is what a log stream brought.
type logRead struct {
	mu      sync.Mutex
	msgs    []*api.LogMessage
	notices []*api.LogNotice
	err     error // how the stream ended; nil while it runs
	ended   bool
}

func (r *logRead) snapshot() ([]*api.LogMessage, []*api.LogNotice, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*api.LogMessage(nil), r.msgs...), append([]*api.LogNotice(nil), r.notices...), r.ended, r.err
}

// streamLogs subscribes and reads in the background until the stream ends
// or ctx does.
func streamLogs(ctx context.Context, t *testing.T, cl api.LogsClient, req *api.SubscribeLogsRequest) *logRead {
	t.Helper()
	stream, err := cl.SubscribeLogs(ctx, req)
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	r := &logRead{}
	go func() {
		for {
			m, err := stream.Recv()
			r.mu.Lock()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					r.err = err
				}
				r.ended = true
				r.mu.Unlock()
				return
			}
			r.msgs = append(r.msgs, m.Messages...)
			r.notices = append(r.notices, m.Notices...)
			r.mu.Unlock()
		}
	}()
	return r
}

// readLogs subscribes without follow and returns everything once the stream
// ended, failing if that takes more than within.
func readLogs(t *testing.T, cl api.LogsClient, within time.Duration, req *api.SubscribeLogsRequest) ([]*api.LogMessage, []*api.LogNotice) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	r := streamLogs(ctx, t, cl, req)
	if !pollUntil(within+time.Second, func() bool { _, _, ended, _ := r.snapshot(); return ended }) {
		t.Fatalf("log stream did not end within %s", within)
	}
	msgs, notices, _, err := r.snapshot()
	if err != nil {
		t.Fatalf("log stream failed: %v (after %d lines)", err, len(msgs))
	}
	return msgs, notices
}

func serviceLogs(serviceID string, opts *api.LogSubscriptionOptions) *api.SubscribeLogsRequest {
	return &api.SubscribeLogsRequest{Selector: &api.LogSelector{ServiceIDs: []string{serviceID}}, Options: opts}
}

// byTask groups lines by task ID, in order.
func byTask(msgs []*api.LogMessage) map[string][]string {
	out := map[string][]string{}
	for _, m := range msgs {
		out[m.Context.TaskID] = append(out[m.Context.TaskID], string(m.Data))
	}
	return out
}

// wantTaskLines is what a sim task with SIM_LOG=n prints.
func wantTaskLines(t *api.Task, n int) []string {
	out := []string{fmt.Sprintf("sim task %s (%s.%d) started: sleep 1d", t.ID, t.ServiceAnnotations.Name, t.Slot)}
	for i := 1; i <= n; i++ {
		out = append(out, fmt.Sprintf("line %d of %d", i, n))
	}
	return out
}

func TestServiceLogsFromEveryNode(t *testing.T) {
	c := newTestCluster(t, 2)
	cl := logsClient(t, c.mgr.n.ControlSocket())
	id := c.createService("web", svcReplicas(4), svcEnv("SIM_LOG=5", "SIM_LOG_STDERR=1"))
	tasks := c.waitRunning(id, 4, 20*time.Second)
	if len(tasksPerNode(tasks)) < 2 {
		t.Fatalf("4 replicas on fewer than 2 nodes:\n%s", c.describe(tasks))
	}

	t.Run("All", func(t *testing.T) {
		msgs, notices := readLogs(t, cl, 10*time.Second, serviceLogs("web", nil)) // by name
		if len(notices) != 0 {
			t.Errorf("notices: %v", notices)
		}
		got := byTask(msgs)
		for _, task := range tasks {
			want := append(wantTaskLines(task, 5), "error line 1 of 1")
			if strings.Join(got[task.ID], "\n") != strings.Join(want, "\n") {
				t.Errorf("task %s on %s: lines\n%q\nwant\n%q", task.ID, c.hostOf(task.NodeID), got[task.ID], want)
			}
		}
		for _, m := range msgs {
			task := findTask(tasks, m.Context.TaskID)
			if task == nil {
				t.Fatalf("line of unknown task %s", m.Context.TaskID)
			}
			if m.Context.ServiceID != id || m.Context.NodeID != task.NodeID {
				t.Errorf("line %q: context %+v, want service %s node %s", m.Data, m.Context, id, task.NodeID)
			}
			wantStream := api.LogStreamStdout
			if strings.HasPrefix(string(m.Data), "error") {
				wantStream = api.LogStreamStderr
			}
			if m.Stream != wantStream || m.Timestamp == nil {
				t.Errorf("line %q: stream %s timestamp %v", m.Data, m.Stream, m.Timestamp)
			}
		}
	})

	t.Run("Tail", func(t *testing.T) {
		msgs, _ := readLogs(t, cl, 10*time.Second, serviceLogs(id, &api.LogSubscriptionOptions{Tail: 2}))
		got := byTask(msgs)
		for _, task := range tasks {
			want := []string{"line 5 of 5", "error line 1 of 1"}
			if strings.Join(got[task.ID], "\n") != strings.Join(want, "\n") {
				t.Errorf("task %s tail 2: %q, want %q", task.ID, got[task.ID], want)
			}
		}
	})

	t.Run("StdoutOfOneTask", func(t *testing.T) {
		task := tasks[0]
		msgs, _ := readLogs(t, cl, 10*time.Second, &api.SubscribeLogsRequest{
			Selector: &api.LogSelector{TaskIDs: []string{task.ID[:12]}},
			Options:  &api.LogSubscriptionOptions{Streams: []api.LogStream{api.LogStreamStdout}},
		})
		if got, want := strings.Join(byTask(msgs)[task.ID], "\n"), strings.Join(wantTaskLines(task, 5), "\n"); got != want || len(byTask(msgs)) != 1 {
			t.Errorf("task %s stdout: %q, want %q and no other task", task.ID, byTask(msgs), want)
		}
	})

	t.Run("UnknownService", func(t *testing.T) {
		ctx, cancel := rpcCtx()
		defer cancel()
		stream, err := cl.SubscribeLogs(ctx, serviceLogs("nope", nil))
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.NotFound {
			t.Errorf("logs of an unknown service: %v, want NotFound", err)
		}
	})
}

func findTask(tasks []*api.Task, id string) *api.Task {
	for _, t := range tasks {
		if t.ID == id {
			return t
		}
	}
	return nil
}

func TestServiceLogsFollowSeesNewLinesAndNewTasks(t *testing.T) {
	c := newTestCluster(t, 2)
	cl := logsClient(t, c.mgr.n.ControlSocket())
	id := c.createService("ticker", svcReplicas(2), svcEnv("SIM_LOG=100000", "SIM_LOG_INTERVAL=20ms"))
	tasks := c.waitRunning(id, 2, 20*time.Second)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := streamLogs(ctx, t, cl, serviceLogs(id, &api.LogSubscriptionOptions{Follow: true, Tail: 1}))

	// Lines printed after the subscription arrive, for both tasks.
	progressed := func(task *api.Task, past int) bool {
		lines := byTaskSnapshot(r)[task.ID]
		if len(lines) == 0 {
			return false
		}
		var n int
		_, err := fmt.Sscanf(lines[len(lines)-1], "line %d of", &n)
		return err == nil && n > past
	}
	first := map[string]int{}
	if !pollUntil(10*time.Second, func() bool {
		for _, task := range tasks {
			lines := byTaskSnapshot(r)[task.ID]
			if len(lines) == 0 {
				return false
			}
			fmt.Sscanf(lines[0], "line %d of", new(int))
			var n int
			fmt.Sscanf(lines[0], "line %d of", &n)
			first[task.ID] = n
		}
		return true
	}) {
		t.Fatalf("no line of each task within 10s: %v", byTaskSnapshot(r))
	}
	if !pollUntil(10*time.Second, func() bool {
		for _, task := range tasks {
			if !progressed(task, first[task.ID]+5) {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("follow did not see new lines within 10s: %v", byTaskSnapshot(r))
	}
	// Tail 1: the first line of each task is its last one at subscription time,
	// and lines follow in order without a gap.
	for _, task := range tasks {
		lines := byTaskSnapshot(r)[task.ID]
		for i, l := range lines {
			var n int
			if _, err := fmt.Sscanf(l, "line %d of", &n); err != nil || n != first[task.ID]+i {
				t.Fatalf("task %s line %d is %q, want line %d (in order, no gap): %q", task.ID, i, l, first[task.ID]+i, lines)
			}
		}
	}

	// Scale up: the new tasks join the stream with their whole log.
	c.scaleService(id, 4)
	all := c.waitRunning(id, 4, 20*time.Second)
	for _, task := range all {
		if findTask(tasks, task.ID) != nil {
			continue
		}
		want := fmt.Sprintf("sim task %s (ticker.%d) started: sleep 1d", task.ID, task.Slot)
		if !pollUntil(10*time.Second, func() bool {
			lines := byTaskSnapshot(r)[task.ID]
			return len(lines) > 2 && lines[0] == want
		}) {
			t.Fatalf("new task %s on %s: lines %q, want its start line then more", task.ID, c.hostOf(task.NodeID), byTaskSnapshot(r)[task.ID])
		}
	}
	if _, notices, ended, err := r.snapshot(); ended || len(notices) > 0 {
		t.Errorf("follow stream ended (%v) or has notices %v", err, notices)
	}
	cancel()
}

func byTaskSnapshot(r *logRead) map[string][]string {
	msgs, _, _, _ := r.snapshot()
	return byTask(msgs)
}

func TestServiceLogsReportDownNodeAndReturnOthers(t *testing.T) {
	c := newTestCluster(t, 2)
	cl := logsClient(t, c.mgr.n.ControlSocket())
	id := c.createService("web", svcReplicas(3), svcEnv("SIM_LOG=3"), svcConstraints("node.role==worker"))
	tasks := c.waitRunning(id, 3, 20*time.Second)
	per := tasksPerNode(tasks)
	if len(per) != 2 {
		t.Fatalf("3 replicas not on both workers:\n%s", c.describe(tasks))
	}
	w1, w2 := c.worker("w1"), c.worker("w2")

	// w2's agent is gone but the manager does not know yet (still READY):
	// the broker waits for it a short while, then reports it.
	c.stopNode(w2)
	start := time.Now()
	msgs, notices := readLogs(t, cl, 15*time.Second, serviceLogs(id, nil))
	took := time.Since(start)
	got := byTask(msgs)
	for _, task := range per[w1.id] {
		if want := wantTaskLines(task, 3); strings.Join(got[task.ID], "\n") != strings.Join(want, "\n") {
			t.Errorf("task %s on w1: %q, want %q", task.ID, got[task.ID], want)
		}
	}
	for _, task := range per[w2.id] {
		if len(got[task.ID]) > 0 {
			t.Errorf("lines from stopped w2's task %s: %q", task.ID, got[task.ID])
		}
	}
	if len(notices) != 1 || notices[0].NodeID != w2.id || !strings.Contains(notices[0].Message, "w2") {
		t.Fatalf("notices %v, want one about w2", notices)
	}
	t.Logf("with w2 stopped (still READY): %d lines in %s, notice %q", len(msgs), took.Round(time.Millisecond), notices[0].Message)

	// Once it is marked DOWN the broker does not wait at all.
	c.waitNodeState(w2, api.NodeStatusDown, 20*time.Second)
	start = time.Now()
	msgs, notices = readLogs(t, cl, 15*time.Second, serviceLogs(id, nil))
	took = time.Since(start)
	if len(notices) != 1 || !strings.Contains(notices[0].Message, "is down") || len(byTask(msgs)) != len(per[w1.id]) {
		t.Fatalf("with w2 DOWN: notices %v and lines of %d tasks, want one 'is down' notice and w1's %d tasks", notices, len(byTask(msgs)), len(per[w1.id]))
	}
	if took > time.Second {
		t.Errorf("with w2 DOWN the logs took %s: the broker waited for it", took)
	}
	t.Logf("with w2 DOWN: %d lines in %s, notice %q", len(msgs), took.Round(time.Millisecond), notices[0].Message)
}

// nodeCreds loads a node's TLS identity from its state dir.
func nodeCreds(t *testing.T, cn *cnode) *ca.Credentials {
	t.Helper()
	ks := &ca.KeyStore{Dir: filepath.Join(cn.dir, "certificates")}
	rootPEM, err := ks.LoadRootCert()
	if err != nil {
		t.Fatal(err)
	}
	rca, err := ca.ParseRootCA(rootPEM, nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ks.LoadNode()
	if err != nil {
		t.Fatal(err)
	}
	creds, err := ca.NewCredentials(rca, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return creds
}

// A node may publish only for subscriptions it was sent, and only its own
// tasks' lines.
func TestServiceLogsRefuseAnotherNodesTask(t *testing.T) {
	c := newTestCluster(t, 2)
	// w2 is stopped below and stands in as a rogue: keep it READY meanwhile.
	c.updateCluster(func(s *api.ClusterSpec) { s.Dispatcher.HeartbeatPeriod = types.DurationProto(10 * time.Second) })
	cl := logsClient(t, c.mgr.n.ControlSocket())
	w2 := c.worker("w2")
	a := c.createService("a", svcReplicas(1), svcConstraints("node.hostname==w1"), svcEnv("SIM_LOG=3"))
	b := c.createService("b", svcReplicas(1), svcConstraints("node.hostname==w2"))
	aTask := c.waitRunning(a, 1, 20*time.Second)[0]
	bTask := c.waitRunning(b, 1, 20*time.Second)[0]

	// w2's identity without its agent: a forged agent.
	c.stopNode(w2)
	dial := func(cn *cnode) api.LogBrokerClient {
		conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(nodeCreds(t, cn).ClientTLSConfig())))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return api.NewLogBrokerClient(conn)
	}
	rogue, mgr := dial(w2), dial(c.mgr)
	publish := func(from api.LogBrokerClient, m *api.PublishLogsMessage) error {
		ctx, cancel := rpcCtx()
		defer cancel()
		stream, err := from.PublishLogs(ctx)
		if err != nil {
			return err
		}
		if err := stream.Send(m); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		_, err = stream.CloseAndRecv()
		return err
	}
	line := func(task *api.Task, node string) *api.LogMessage {
		return &api.LogMessage{Context: api.LogContext{TaskID: task.ID, NodeID: node}, Data: []byte("forged"), Stream: api.LogStreamStdout}
	}

	if err := publish(rogue, &api.PublishLogsMessage{SubscriptionID: "made-up", Messages: []*api.LogMessage{line(bTask, "")}}); status.Code(err) != codes.NotFound {
		t.Errorf("publish for a made-up subscription: %v, want NotFound", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	listen, err := rogue.ListenSubscriptions(ctx, &api.ListenSubscriptionsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// round subscribes to both services, has the forged w2 publish what act
	// does, and returns what the client got.
	round := func(name string, act func(subID string)) ([]*api.LogMessage, []*api.LogNotice) {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		r := streamLogs(ctx, t, cl, &api.SubscribeLogsRequest{Selector: &api.LogSelector{ServiceIDs: []string{a, b}}})
		sub, err := listen.Recv()
		if err != nil {
			t.Fatalf("%s: the forged w2 listener got no subscription: %v", name, err)
		}
		act(sub.ID)
		if !pollUntil(10*time.Second, func() bool { _, _, ended, _ := r.snapshot(); return ended }) {
			t.Fatalf("%s: the log stream did not end", name)
		}
		msgs, notices, _, err := r.snapshot()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, m := range msgs {
			if m.Context.TaskID == aTask.ID && strings.Contains(string(m.Data), "forged") {
				t.Errorf("%s: a forged line reached the client: %+v", name, m)
			}
		}
		if got := byTask(msgs)[aTask.ID]; len(got) != 4 {
			t.Errorf("%s: w1's task lines %q, want its 4", name, got)
		}
		return msgs, notices
	}
	refused := func(name string, from api.LogBrokerClient, msg func() *api.LogMessage) {
		_, notices := round(name, func(subID string) {
			err := publish(from, &api.PublishLogsMessage{SubscriptionID: subID, Messages: []*api.LogMessage{msg()}})
			if status.Code(err) != codes.PermissionDenied {
				t.Errorf("%s: %v, want PermissionDenied", name, err)
			}
			if from != rogue {
				_ = publish(rogue, &api.PublishLogsMessage{SubscriptionID: subID, Close: true})
			}
		})
		if from == rogue && (len(notices) != 1 || notices[0].NodeID != w2.id || !strings.Contains(notices[0].Message, "may not")) {
			t.Errorf("%s: notices %v, want one saying w2's logs were refused", name, notices)
		}
	}
	refused("w2 publishes w1's task", rogue, func() *api.LogMessage { return line(aTask, "") })
	refused("w2 publishes in w1's name", rogue, func() *api.LogMessage { return line(bTask, c.worker("w1").id) })
	refused("a node not sent the subscription", mgr, func() *api.LogMessage { return line(aTask, "") })

	// Its own task's lines go through, with its node ID.
	msgs, notices := round("w2 publishes its own task", func(subID string) {
		err := publish(rogue, &api.PublishLogsMessage{SubscriptionID: subID, Messages: []*api.LogMessage{line(bTask, "")}, Close: true})
		if err != nil {
			t.Errorf("w2 publishing its own task: %v", err)
		}
	})
	if got := byTask(msgs)[bTask.ID]; strings.Join(got, "") != "forged" || len(notices) != 0 {
		t.Errorf("client got %q and notices %v from w2; want its one line, no notice", got, notices)
	}
	for _, m := range msgs {
		if m.Context.TaskID == bTask.ID && m.Context.NodeID != w2.id {
			t.Errorf("w2's line carries node %s", m.Context.NodeID)
		}
	}
}

// TestServiceLogsFigures measures the broker path on an in-process cluster
// (a manager and one worker, real gRPC and mTLS, sim executor) and logs the
// figures (go test -v -run ServiceLogsFigures ./integration/); it asserts
// only that every line arrives. Bulk: lines/s of one read of 4 tasks ×
// sim.MaxLogLines lines. Follow: latency from a sim task printing a line to
// the client receiving it (4 tasks, one line every 5 ms each).
func TestServiceLogsFigures(t *testing.T) {
	c := newTestCluster(t, 1)
	cl := logsClient(t, c.mgr.n.ControlSocket())
	bulk := c.createService("bulk", svcReplicas(4), svcEnv(fmt.Sprintf("SIM_LOG=%d", sim.MaxLogLines)))
	c.waitRunning(bulk, 4, 30*time.Second)
	ticker := c.createService("ticker", svcReplicas(4), svcEnv("SIM_LOG=1000000", "SIM_LOG_INTERVAL=5ms"))
	c.waitRunning(ticker, 4, 30*time.Second)

	for round := 0; round < 2; round++ { // the first warms up
		start := time.Now()
		msgs, _ := readLogs(t, cl, time.Minute, serviceLogs(bulk, nil))
		took := time.Since(start)
		if len(msgs) != 4*sim.MaxLogLines {
			t.Fatalf("bulk read: %d lines, want %d", len(msgs), 4*sim.MaxLogLines)
		}
		if round == 1 {
			t.Logf("bulk read: %d lines in %s: %.0f lines/s", len(msgs), took.Round(time.Millisecond), float64(len(msgs))/took.Seconds())
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := cl.SubscribeLogs(ctx, serviceLogs(ticker, &api.LogSubscriptionOptions{Follow: true, Tail: -1}))
	if err != nil {
		t.Fatal(err)
	}
	var lat []time.Duration
	for len(lat) < 800 {
		m, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		for _, lm := range m.Messages {
			lat = append(lat, now.Sub(pbTime(lm.Timestamp)))
		}
	}
	cancel()
	slices.Sort(lat)
	t.Logf("follow: %d lines, print-to-client latency p50 %s p99 %s max %s", len(lat),
		lat[len(lat)/2].Round(10*time.Microsecond), lat[len(lat)*99/100].Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond))
}
