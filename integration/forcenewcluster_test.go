package integration

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

// Quorum lost for good: two of three managers are killed, the survivor
// answers writes with Unavailable. Restarted with --force-new-cluster (same
// state dir and address) it leads a one-manager cluster with the services,
// tasks and worker it had; the lost managers are shown Unreachable
// and removed with node rm --force; the worker keeps its session and its
// tasks; a new manager joins with the manager token.
func TestForceNewClusterRecoversFromQuorumLoss(t *testing.T) {
	ms := startManagers(t, 3)
	m1, m3 := ms[0], ms[2]
	m1.mustCtl("cluster", "update", "--heartbeat-period", "1s")
	_, m1Addr := managerAddr(t, m1, "m1")
	_, m3Addr := managerAddr(t, m1, "m3")
	workerToken := strings.TrimSpace(m1.mustCtl("cluster", "join-token", "-q", "worker"))
	w1 := startWorker(t, t.TempDir(), "w1", m1Addr, workerToken)
	m1.waitNode("w1", "READY", 30*time.Second)

	m1.mustCtl("service", "create", "--name", "web", "--replicas", "8", "--image", "busybox", "--", "sleep", "1d")
	m3.waitRunning("web", 8, 30*time.Second, func(per map[string]int) bool { return len(per) == 4 })
	w1ID := m3.waitNode("w1", "READY", 10*time.Second).ID
	w1Tasks := runningOn(m3.tasks("web"), w1ID)
	// The worker must know m3 (the dispatcher lists every manager) before
	// the others go: it is the only one it can come back to.
	waitFor(t, 30*time.Second, "w1 lists m3 among its managers", func() bool {
		b, err := os.ReadFile(filepath.Join(w1.stateDir, "node.json"))
		return err == nil && strings.Contains(string(b), m3Addr)
	})

	// Kill two of three: the survivor cannot write.
	for _, m := range ms[:2] {
		_ = syscall.Kill(m.cmd.Process.Pid, syscall.SIGKILL)
		<-m.exited
	}
	ctl := m3.client()
	// At first the write is forwarded to the dead leader (Unavailable, the
	// leader cannot be reached); once the survivor knows no leader, it says
	// the cluster lost quorum.
	waitFor(t, 30*time.Second, "a write on the survivor answers Unavailable: lost quorum", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := ctl.CreateService(ctx, serviceSpec("lost"))
		if err == nil {
			t.Fatal("a write succeeded on the survivor of 3 managers with 2 killed")
		}
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("a write on the survivor without quorum: %v, want Unavailable", err)
		}
		if !strings.Contains(err.Error(), "quorum") {
			return false
		}
		t.Logf("a write on the survivor: %v", err)
		return true
	})

	// Restart the survivor with --force-new-cluster.
	m3.stop()
	restarted := time.Now()
	m3 = startSwarmd(t, m3.stateDir, "--hostname", "m3", "--listen-remote-api", m3Addr, "--force-new-cluster")
	m3.waitReady()
	ctl = m3.client()
	var firstWrite time.Duration
	waitFor(t, 30*time.Second, "a write on the forced manager succeeds", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := ctl.CreateService(ctx, serviceSpec("after"))
		firstWrite = time.Since(restarted)
		return err == nil
	})
	t.Logf("restart with --force-new-cluster to the first write acknowledged: %s", firstWrite.Round(time.Millisecond))

	rows := m3.waitManagers("m3 leads, m1 and m2 unreachable", 30*time.Second, func(rows map[string]managerRow) bool {
		return len(rows) == 3 && leaderOf(rows) == "m3" &&
			rows["m1"].ManagerStatus.Reachability == "UNREACHABLE" && rows["m2"].ManagerStatus.Reachability == "UNREACHABLE"
	})
	if rows["m3"].ManagerStatus.Addr != m3Addr {
		t.Fatalf("m3's address is %s, want %s", rows["m3"].ManagerStatus.Addr, m3Addr)
	}
	if out := m3.mustCtl("service", "ls"); !strings.Contains(out, " web ") || !strings.Contains(out, " after ") {
		t.Fatalf("services after forcing a new cluster:\n%s", out)
	}
	// The worker comes back to m3 with its tasks untouched; the tasks of
	// the lost managers move to live nodes once those are DOWN.
	m3.waitNode("w1", "READY", 30*time.Second)
	m3.waitNode("m1", "DOWN", 60*time.Second)
	// Where the replacements land depends on whether m3's own agent was
	// READY again when they were placed: only live nodes count.
	live := map[string]bool{w1ID: true}
	for _, n := range m3.nodes() {
		if n.Desc.Hostname == "m3" {
			live[n.ID] = true
		}
	}
	m3.waitRunning("web", 8, 60*time.Second, func(per map[string]int) bool {
		for id := range per {
			if !live[id] {
				return false
			}
		}
		return true
	})
	now := runningOn(m3.tasks("web"), w1ID)
	for _, id := range w1Tasks {
		if !slices.Contains(now, id) {
			t.Fatalf("w1's task %s did not survive forcing a new cluster (w1 runs %v, ran %v)", id, now, w1Tasks)
		}
	}

	// A lost manager is removed with node rm --force.
	m3.mustCtl("node", "rm", "--force", "m1")
	m3.waitManagers("m1 removed", 30*time.Second, func(rows map[string]managerRow) bool {
		_, ok := rows["m1"]
		return !ok && len(rows) == 2
	})

	// A new manager joins with the manager token and becomes Reachable.
	token := strings.TrimSpace(m3.mustCtl("cluster", "join-token", "-q", "manager"))
	m4 := startSwarmd(t, t.TempDir(), "--hostname", "m4", "--join-addr", m3Addr, "--join-token", token)
	m4.waitReady()
	m3.waitManagers("m4 reachable", 60*time.Second, func(rows map[string]managerRow) bool {
		return rows["m4"].ManagerStatus != nil && rows["m4"].ManagerStatus.Reachability == "REACHABLE" && leaderOf(rows) == "m3"
	})
	m4.mustCtl("service", "create", "--name", "through-m4", "--image", "busybox", "--", "sleep", "1d")
	if out := m4.mustCtl("service", "ls"); !strings.Contains(out, " web ") {
		t.Fatalf("the new manager lacks the recovered state:\n%s", out)
	}
}

// --force-new-cluster needs a manager's state: on an empty state dir it
// refuses to start, saying why, and creates no cluster.
func TestForceNewClusterRefusesAnEmptyStateDir(t *testing.T) {
	dir := t.TempDir()
	out := startSwarmd(t, dir, "--force-new-cluster").waitExit()
	if !strings.Contains(out, "holds no raft log") {
		t.Fatalf("swarmd --force-new-cluster on an empty state dir:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "certificates")); err == nil {
		t.Fatal("a refused --force-new-cluster created a node identity")
	}
}

// managerAddr is the ID and remote address of a manager, as d lists it.
func managerAddr(t *testing.T, d *swarmd, hostname string) (string, string) {
	t.Helper()
	rows := d.waitManagers(hostname+" listed", 10*time.Second, func(rows map[string]managerRow) bool {
		return rows[hostname].ManagerStatus != nil && rows[hostname].ManagerStatus.Addr != ""
	})
	return rows[hostname].ID, rows[hostname].ManagerStatus.Addr
}

// runningOn lists the IDs of the running tasks on node id.
func runningOn(rows []taskRow, id string) []string {
	var out []string
	for _, r := range rows {
		if r.NodeID == id && r.Status.State == "RUNNING" && r.DesiredState == "RUNNING" {
			out = append(out, r.ID)
		}
	}
	return out
}

func serviceSpec(name string) *api.CreateServiceRequest {
	return &api.CreateServiceRequest{Spec: &api.ServiceSpec{
		Annotations: api.Annotations{Name: name},
		Task:        api.TaskSpec{Container: &api.ContainerSpec{Image: "busybox", Command: []string{"sleep", "1d"}}},
		Mode:        api.ServiceMode{Mode: &api.ServiceMode_Replicated{Replicated: &api.ReplicatedService{Replicas: 1}}},
	}}
}

// waitFor polls cond until it holds, or fails the test after within.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	if !pollUntil(within, cond) {
		t.Fatalf("%s: not within %s", what, within)
	}
}
