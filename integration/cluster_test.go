package integration

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gogo/protobuf/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/node"
)

// In-process clusters: one manager and workers, each a node.Node with the
// sim executor (started by startNode), talking real gRPC over mTLS. Tests
// drive them through the manager's control API.

// clusterPollInterval is how often the wait helpers look again.
const clusterPollInterval = 50 * time.Millisecond

// cnode is one node of a testCluster.
type cnode struct {
	n        *node.Node
	dir      string
	hostname string
	id       string
}

// testCluster is a manager and its workers, all in this process.
type testCluster struct {
	t           *testing.T
	ctl         api.ControlClient
	mgr         *cnode
	workers     []*cnode
	addr        string // the manager's remote API address
	workerToken string
	clusterID   string
}

// clusterOpt changes the cluster spec before the workers join.
type clusterOpt func(*api.ClusterSpec)

// withHistoryLimit sets the cluster's task history retention limit.
func withHistoryLimit(n int64) clusterOpt {
	return func(s *api.ClusterSpec) { s.Orchestration.TaskHistoryRetentionLimit = n }
}

// newTestCluster starts a manager, sets a 1 s heartbeat period (and opts),
// and joins workers w1..wN; it returns once every node is READY.
func newTestCluster(t *testing.T, workers int, opts ...clusterOpt) *testCluster {
	t.Helper()
	dir := t.TempDir()
	mgr := startNode(t, node.Config{StateDir: dir, Hostname: "mgr"})
	c := &testCluster{t: t, ctl: controlClient(t, mgr.ControlSocket())}
	c.mgr = &cnode{n: mgr, dir: dir, hostname: "mgr", id: mgr.NodeID()}
	ctx, cancel := rpcCtx()
	defer cancel()
	c.updateCluster(func(s *api.ClusterSpec) {
		s.Dispatcher.HeartbeatPeriod = types.DurationProto(time.Second)
		for _, o := range opts {
			o(s)
		}
	})
	clusters, err := c.ctl.ListClusters(ctx, &api.ListClustersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	c.clusterID = clusters.Clusters[0].ID
	c.workerToken = clusters.Clusters[0].RootCA.JoinTokens.Worker
	mn, err := c.ctl.GetNode(ctx, &api.GetNodeRequest{NodeID: mgr.NodeID()})
	if err != nil {
		t.Fatal(err)
	}
	if mn.Node.ManagerStatus == nil || mn.Node.ManagerStatus.Addr == "" {
		t.Fatalf("manager has no address: %+v", mn.Node)
	}
	c.addr = mn.Node.ManagerStatus.Addr
	for i := 1; i <= workers; i++ {
		c.addWorker(fmt.Sprintf("w%d", i))
	}
	c.waitNodeState(c.mgr, api.NodeStatusReady, 10*time.Second)
	return c
}

// rpcTimeout bounds each control API call of the helpers.
const rpcTimeout = 20 * time.Second

func rpcCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), rpcTimeout)
}

// updateCluster applies change to the cluster spec, retrying on version
// conflicts.
func (c *testCluster) updateCluster(change func(*api.ClusterSpec)) {
	c.t.Helper()
	ctx, cancel := rpcCtx()
	defer cancel()
	for attempt := 0; ; attempt++ {
		resp, err := c.ctl.ListClusters(ctx, &api.ListClustersRequest{})
		if err != nil {
			c.t.Fatal(err)
		}
		cl := resp.Clusters[0]
		spec := cl.Spec.Copy()
		change(spec)
		_, err = c.ctl.UpdateCluster(ctx, &api.UpdateClusterRequest{ClusterID: cl.ID, ClusterVersion: cl.Meta.Version, Spec: spec})
		if err == nil {
			return
		}
		if status.Code(err) != codes.FailedPrecondition || attempt == 10 {
			c.t.Fatalf("update cluster: %v", err)
		}
	}
}

// addWorker joins a new worker and waits until it is READY.
func (c *testCluster) addWorker(hostname string) *cnode {
	c.t.Helper()
	dir := c.t.TempDir()
	n := startNode(c.t, node.Config{StateDir: dir, Hostname: hostname, JoinAddr: c.addr, JoinToken: c.workerToken})
	w := &cnode{n: n, dir: dir, hostname: hostname, id: n.NodeID()}
	c.workers = append(c.workers, w)
	c.waitNodeState(w, api.NodeStatusReady, 10*time.Second)
	return w
}

// sub returns the cluster as seen from subtest t: helpers fail t.
func (c *testCluster) sub(t *testing.T) *testCluster {
	cc := *c
	cc.t = t
	return &cc
}

// worker returns the worker named hostname.
func (c *testCluster) worker(hostname string) *cnode {
	c.t.Helper()
	for _, w := range c.workers {
		if w.hostname == hostname {
			return w
		}
	}
	c.t.Fatalf("no worker %q", hostname)
	return nil
}

// nodes is the manager then the workers.
func (c *testCluster) nodes() []*cnode { return append([]*cnode{c.mgr}, c.workers...) }

// hostOf maps a node ID to its hostname, for messages.
func (c *testCluster) hostOf(id string) string {
	for _, n := range c.nodes() {
		if n.id == id {
			return n.hostname
		}
	}
	if id == "" {
		return "(unassigned)"
	}
	return id
}

// stopNode stops a node (in process: its simulated tasks go with it).
func (c *testCluster) stopNode(cn *cnode) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cn.n.Stop(ctx); err != nil {
		c.t.Fatalf("stop %s: %v", cn.hostname, err)
	}
}

// restartNode starts a stopped node again from its state dir, with no join
// flags, and waits until it serves.
func (c *testCluster) restartNode(cn *cnode) {
	c.t.Helper()
	cn.n = startNode(c.t, node.Config{StateDir: cn.dir, Hostname: cn.hostname})
	if cn.n.NodeID() != cn.id {
		c.t.Fatalf("%s restarted as node %s, was %s", cn.hostname, cn.n.NodeID(), cn.id)
	}
}

// getNode reads a node's record.
func (c *testCluster) getNode(cn *cnode) *api.Node {
	c.t.Helper()
	ctx, cancel := rpcCtx()
	defer cancel()
	resp, err := c.ctl.GetNode(ctx, &api.GetNodeRequest{NodeID: cn.id})
	if err != nil {
		c.t.Fatal(err)
	}
	return resp.Node
}

// waitNodeState polls until the node's status is want.
func (c *testCluster) waitNodeState(cn *cnode, want api.NodeStatus_State, within time.Duration) {
	c.t.Helper()
	var last *api.Node
	ok := pollUntil(within, func() bool {
		last = c.getNode(cn)
		return last.Status.State == want
	})
	if !ok {
		c.t.Fatalf("node %s is %s (%q), not %s after %s", cn.hostname, last.Status.State, last.Status.Message, want, within)
	}
}

// updateNode applies change to a node's spec, retrying on version
// conflicts (the dispatcher writes node records too).
func (c *testCluster) updateNode(cn *cnode, change func(*api.NodeSpec)) {
	c.t.Helper()
	ctx, cancel := rpcCtx()
	defer cancel()
	for attempt := 0; ; attempt++ {
		n := c.getNode(cn)
		spec := n.Spec.Copy()
		change(spec)
		_, err := c.ctl.UpdateNode(ctx, &api.UpdateNodeRequest{NodeID: n.ID, NodeVersion: n.Meta.Version, Spec: spec})
		if err == nil {
			return
		}
		if status.Code(err) != codes.FailedPrecondition || attempt == 10 {
			c.t.Fatalf("update node %s: %v", cn.hostname, err)
		}
	}
}

func (c *testCluster) setAvailability(cn *cnode, a api.NodeSpec_Availability) {
	c.t.Helper()
	c.updateNode(cn, func(s *api.NodeSpec) { s.Availability = a })
}

func (c *testCluster) setLabel(cn *cnode, key, value string) {
	c.t.Helper()
	c.updateNode(cn, func(s *api.NodeSpec) {
		if s.Annotations.Labels == nil {
			s.Annotations.Labels = map[string]string{}
		}
		s.Annotations.Labels[key] = value
	})
}

// svcOpt shapes a service spec.
type svcOpt func(*api.ServiceSpec)

func svcReplicas(n uint64) svcOpt {
	return func(s *api.ServiceSpec) {
		s.Mode = api.ServiceMode{Mode: &api.ServiceMode_Replicated{Replicated: &api.ReplicatedService{Replicas: n}}}
	}
}

func svcGlobal() svcOpt {
	return func(s *api.ServiceSpec) {
		s.Mode = api.ServiceMode{Mode: &api.ServiceMode_Global{Global: &api.GlobalService{}}}
	}
}

func svcEnv(kv ...string) svcOpt {
	return func(s *api.ServiceSpec) { s.Task.Container.Env = append(s.Task.Container.Env, kv...) }
}

func svcRestart(cond api.RestartPolicy_Condition, delay time.Duration, maxAttempts uint64, window time.Duration) svcOpt {
	return func(s *api.ServiceSpec) {
		p := &api.RestartPolicy{Condition: cond, Delay: types.DurationProto(delay), MaxAttempts: maxAttempts}
		if window > 0 {
			p.Window = types.DurationProto(window)
		}
		s.Task.Restart = p
	}
}

func svcPlacement(s *api.ServiceSpec) *api.Placement {
	if s.Task.Placement == nil {
		s.Task.Placement = &api.Placement{}
	}
	return s.Task.Placement
}

func svcConstraints(cs ...string) svcOpt {
	return func(s *api.ServiceSpec) { svcPlacement(s).Constraints = append(svcPlacement(s).Constraints, cs...) }
}

func svcMaxReplicas(n uint64) svcOpt {
	return func(s *api.ServiceSpec) { svcPlacement(s).MaxReplicas = n }
}

func svcReserveMemory(bytes int64) svcOpt {
	return func(s *api.ServiceSpec) {
		s.Task.Resources = &api.ResourceRequirements{Reservations: &api.Resources{MemoryBytes: bytes}}
	}
}

// createService creates a service (one replica unless opts say otherwise)
// and returns its ID.
func (c *testCluster) createService(name string, opts ...svcOpt) string {
	c.t.Helper()
	spec := &api.ServiceSpec{
		Annotations: api.Annotations{Name: name},
		Task:        api.TaskSpec{Container: &api.ContainerSpec{Image: "busybox:latest", Command: []string{"sleep", "1d"}}},
	}
	svcReplicas(1)(spec)
	for _, o := range opts {
		o(spec)
	}
	ctx, cancel := rpcCtx()
	defer cancel()
	resp, err := c.ctl.CreateService(ctx, &api.CreateServiceRequest{Spec: spec})
	if err != nil {
		c.t.Fatalf("create service %s: %v", name, err)
	}
	return resp.Service.ID
}

// scaleService sets a replicated service's replica count.
func (c *testCluster) scaleService(id string, n uint64) {
	c.t.Helper()
	ctx, cancel := rpcCtx()
	defer cancel()
	for attempt := 0; ; attempt++ {
		resp, err := c.ctl.GetService(ctx, &api.GetServiceRequest{ServiceID: id})
		if err != nil {
			c.t.Fatal(err)
		}
		spec := resp.Service.Spec.Copy()
		svcReplicas(n)(spec)
		_, err = c.ctl.UpdateService(ctx, &api.UpdateServiceRequest{ServiceID: id, ServiceVersion: resp.Service.Meta.Version, Spec: spec})
		if err == nil {
			return
		}
		if status.Code(err) != codes.FailedPrecondition || attempt == 10 {
			c.t.Fatalf("scale service %s: %v", id, err)
		}
	}
}

func (c *testCluster) removeService(id string) {
	c.t.Helper()
	ctx, cancel := rpcCtx()
	defer cancel()
	if _, err := c.ctl.RemoveService(ctx, &api.RemoveServiceRequest{ServiceID: id}); err != nil {
		c.t.Fatalf("remove service %s: %v", id, err)
	}
}

// listTasks lists tasks matching the filters.
func (c *testCluster) listTasks(f *api.ListTasksRequest_Filters) []*api.Task {
	c.t.Helper()
	ctx, cancel := rpcCtx()
	defer cancel()
	resp, err := c.ctl.ListTasks(ctx, &api.ListTasksRequest{Filters: f})
	if err != nil {
		c.t.Fatal(err)
	}
	return resp.Tasks
}

// tasks lists a service's tasks.
func (c *testCluster) tasks(serviceID string) []*api.Task {
	c.t.Helper()
	return c.listTasks(&api.ListTasksRequest_Filters{ServiceIDs: []string{serviceID}})
}

// nodeTasks lists the tasks assigned to a node, of any service.
func (c *testCluster) nodeTasks(cn *cnode) []*api.Task {
	c.t.Helper()
	return c.listTasks(&api.ListTasksRequest_Filters{NodeIDs: []string{cn.id}})
}

// waitTasks polls a service's tasks until cond accepts them, and returns
// them; it fails the test with what, and the last tasks seen, otherwise.
func (c *testCluster) waitTasks(serviceID, what string, within time.Duration, cond func([]*api.Task) bool) []*api.Task {
	c.t.Helper()
	var tasks []*api.Task
	if !pollUntil(within, func() bool {
		tasks = c.tasks(serviceID)
		return cond(tasks)
	}) {
		c.t.Fatalf("not %s within %s; tasks:\n%s", what, within, c.describe(tasks))
	}
	return tasks
}

// waitRunning waits until the service has exactly n tasks RUNNING and wanted
// RUNNING, and returns all its tasks.
func (c *testCluster) waitRunning(serviceID string, n int, within time.Duration) []*api.Task {
	c.t.Helper()
	return c.waitTasks(serviceID, fmt.Sprintf("%d running", n), within, func(ts []*api.Task) bool {
		return len(runningTasks(ts)) == n
	})
}

// describe prints tasks one a line, for failure messages.
func (c *testCluster) describe(tasks []*api.Task) string {
	var sb strings.Builder
	sorted := slices.Clone(tasks)
	sort.Slice(sorted, func(i, j int) bool {
		if sorted[i].Slot != sorted[j].Slot {
			return sorted[i].Slot < sorted[j].Slot
		}
		return taskCreated(sorted[i]).Before(taskCreated(sorted[j]))
	})
	for _, t := range sorted {
		fmt.Fprintf(&sb, "  %s slot=%d node=%s state=%s desired=%s msg=%q err=%q created=%s status.ts=%s\n",
			t.ID, t.Slot, c.hostOf(t.NodeID), t.Status.State, t.DesiredState, t.Status.Message, t.Status.Err,
			taskCreated(t).Format("15:04:05.000"), taskStatusTime(t).Format("15:04:05.000"))
	}
	if len(tasks) == 0 {
		sb.WriteString("  (none)\n")
	}
	return sb.String()
}

// runningTasks returns the tasks RUNNING and wanted RUNNING.
func runningTasks(tasks []*api.Task) []*api.Task {
	var out []*api.Task
	for _, t := range tasks {
		if t.Status.State == api.TaskStateRunning && t.DesiredState == api.TaskStateRunning {
			out = append(out, t)
		}
	}
	return out
}

// currentTasks returns the tasks still wanted (desired state at most RUNNING).
func currentTasks(tasks []*api.Task) []*api.Task {
	var out []*api.Task
	for _, t := range tasks {
		if t.DesiredState <= api.TaskStateRunning {
			out = append(out, t)
		}
	}
	return out
}

// tasksInState returns the tasks whose observed state is s.
func tasksInState(tasks []*api.Task, s api.TaskState) []*api.Task {
	var out []*api.Task
	for _, t := range tasks {
		if t.Status.State == s {
			out = append(out, t)
		}
	}
	return out
}

// tasksPerNode groups tasks by node ID.
func tasksPerNode(tasks []*api.Task) map[string][]*api.Task {
	m := map[string][]*api.Task{}
	for _, t := range tasks {
		m[t.NodeID] = append(m[t.NodeID], t)
	}
	return m
}

// tasksBySlot groups tasks by slot, each slot's tasks oldest first.
func tasksBySlot(tasks []*api.Task) map[uint64][]*api.Task {
	m := map[uint64][]*api.Task{}
	for _, t := range tasks {
		m[t.Slot] = append(m[t.Slot], t)
	}
	for _, ts := range m {
		sort.Slice(ts, func(i, j int) bool { return taskCreated(ts[i]).Before(taskCreated(ts[j])) })
	}
	return m
}

func taskIDs(tasks []*api.Task) []string {
	out := make([]string, len(tasks))
	for i, t := range tasks {
		out[i] = t.ID
	}
	slices.Sort(out)
	return out
}

func taskCreated(t *api.Task) time.Time { return pbTime(t.Meta.CreatedAt) }

func taskStatusTime(t *api.Task) time.Time { return pbTime(t.Status.Timestamp) }

func pbTime(ts *types.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	tm, err := types.TimestampFromProto(ts)
	if err != nil {
		return time.Time{}
	}
	return tm
}

// pollUntil calls cond every clusterPollInterval until it returns true (then true) or
// within has passed (then false).
func pollUntil(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(clusterPollInterval)
	}
}

// holdsFor checks cond every clusterPollInterval for d; it returns the first error
// cond returns.
func holdsFor(d time.Duration, cond func() error) error {
	deadline := time.Now().Add(d)
	for {
		if err := cond(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return nil
		}
		time.Sleep(clusterPollInterval)
	}
}

// agentTasks lists the tasks a node's agent holds (its task DB, with the
// status the agent last observed).
func agentTasks(t *testing.T, n *node.Node) []*api.Task {
	t.Helper()
	tasks, err := n.Tasks()
	if err != nil {
		t.Fatal(err)
	}
	return tasks
}
