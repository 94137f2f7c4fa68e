package integration

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// reachableManagers accepts exactly the managers named, all Reachable, one
// of them the leader.
func reachableManagers(hosts ...string) func(map[string]managerRow) bool {
	return func(ms map[string]managerRow) bool {
		if len(ms) != len(hosts) || leaderOf(ms) == "" {
			return false
		}
		for _, h := range hosts {
			if m, ok := ms[h]; !ok || m.ManagerStatus.Reachability != "REACHABLE" {
				return false
			}
		}
		return true
	}
}

// runningTaskIDs are the IDs of the service's running tasks on node nodeID.
func runningTaskIDs(d *swarmd, service, nodeID string) map[string]bool {
	out := map[string]bool{}
	for _, r := range d.tasks(service) {
		if r.NodeID == nodeID && r.Status.State == "RUNNING" && r.DesiredState == "RUNNING" {
			out[r.ID] = true
		}
	}
	return out
}

// roleOf is the node's role as `node ls` shows it ("worker", the zero
// value, is left out of the JSON), "" for a node not listed.
func roleOf(d *swarmd, hostname string) string {
	for _, n := range d.nodes() {
		if n.Desc.Hostname == hostname {
			if n.Role == "" {
				return "worker"
			}
			return strings.ToLower(n.Role)
		}
	}
	return ""
}

// Workers promoted with `node promote` become Reachable managers without a
// restart, serve the control API (writes through them reach the leader),
// and keep their tasks; `node demote` makes a manager a worker again (out of
// raft first, leadership handed over when it is the leader), its tasks
// running on; a demotion that would leave the reachable managers without a
// quorum is refused, saying why.
func TestPromoteAndDemoteWithoutRestart(t *testing.T) {
	m1, addr := startManager(t, "m1")
	m1.mustCtl("cluster", "update", "--heartbeat-period", "1s")
	token := strings.TrimSpace(m1.mustCtl("cluster", "join-token", "-q", "worker"))
	nodes := map[string]*swarmd{"m1": m1}
	for _, h := range []string{"w1", "w2"} {
		nodes[h] = startWorker(t, t.TempDir(), h, addr, token)
	}
	ids := map[string]string{}
	for _, h := range []string{"w1", "w2"} {
		ids[h] = m1.waitNode(h, "READY", 30*time.Second).ID
	}
	ids["m1"] = m1.waitNode("m1", "READY", 30*time.Second).ID
	m1.mustCtl("service", "create", "--name", "web", "--replicas", "6", "--image", "busybox", "--", "sleep", "1d")
	m1.waitRunning("web", 6, 30*time.Second, func(per map[string]int) bool { return len(per) == 3 })
	before := map[string]map[string]bool{}
	for _, h := range []string{"w1", "w2"} {
		before[h] = runningTaskIDs(m1, "web", ids[h])
	}
	sameTasks := func(h, when string) {
		t.Helper()
		if now := runningTaskIDs(m1, "web", ids[h]); len(now) != len(before[h]) || len(now) == 0 {
			t.Fatalf("%s: tasks on %s %v, before %v: they should have kept running", when, h, now, before[h])
		} else {
			for id := range before[h] {
				if !now[id] {
					t.Fatalf("%s: task %s on %s no longer runs (now %v)", when, id, h, now)
				}
			}
		}
	}

	// Promote both workers: three Reachable managers, no restart.
	promoted := time.Now()
	if out := m1.mustCtl("node", "promote", "w1", "w2"); !strings.Contains(out, "promoted to a manager") {
		t.Fatalf("node promote: %q", out)
	}
	m1.waitManagers("w1 and w2 Reachable managers", time.Minute, reachableManagers("m1", "w1", "w2"))
	t.Logf("promote of 2 workers -> 3 Reachable managers: %s", time.Since(promoted).Round(time.Millisecond))
	for _, h := range []string{"w1", "w2"} {
		select {
		case <-nodes[h].exited:
			t.Fatalf("%s exited on promotion: %v\n%s", h, nodes[h].exitErr, nodes[h].out.String())
		default:
		}
		if r := roleOf(m1, h); r != "manager" {
			t.Fatalf("%s role %q after promotion, want manager", h, r)
		}
	}
	// The new managers serve the control API: a write through w1 is read
	// back through w2.
	nodes["w1"].mustCtl("service", "create", "--name", "via-w1", "--image", "busybox", "--", "sleep", "1d")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(nodes["w2"].mustCtl("service", "ls"), " via-w1 ") {
		if time.Now().After(deadline) {
			t.Fatal("a write through promoted w1 is not seen through promoted w2")
		}
		time.Sleep(50 * time.Millisecond)
	}
	sameTasks("w1", "after promotion")
	sameTasks("w2", "after promotion")

	// Demote w2: two managers left; w2 is a worker with its tasks running.
	demoted := time.Now()
	if out := nodes["w1"].mustCtl("node", "demote", "w2"); !strings.Contains(out, "demoted") {
		t.Fatalf("node demote: %q", out)
	}
	m1.waitManagers("w2 no longer a manager", time.Minute, reachableManagers("m1", "w1"))
	deadline = time.Now().Add(30 * time.Second)
	for roleOf(m1, "w2") != "worker" || !nodes["w2"].controlSocketGone() {
		if time.Now().After(deadline) {
			t.Fatalf("w2 after demotion: role %q, control socket gone %v", roleOf(m1, "w2"), nodes["w2"].controlSocketGone())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("demote -> worker, manager component stopped: %s", time.Since(demoted).Round(time.Millisecond))
	m1.waitNode("w2", "READY", 30*time.Second)
	sameTasks("w2", "after demotion")

	// Demote the leader: leadership goes first, then it leaves raft.
	if l := leaderOf(m1.waitManagers("a leader", 10*time.Second, reachableManagers("m1", "w1"))); l != "m1" {
		t.Fatalf("leader is %s, want m1", l)
	}
	m1.mustCtl("node", "promote", "w2") // back to three: a new raft member
	m1.waitManagers("w2 a manager again", time.Minute, reachableManagers("m1", "w1", "w2"))
	nodes["w2"].mustCtl("node", "demote", "m1")
	after := nodes["w1"].waitManagers("m1 demoted", time.Minute, reachableManagers("w1", "w2"))
	t.Logf("after demoting the leader m1, %s leads", leaderOf(after))
	deadline = time.Now().Add(30 * time.Second)
	for roleOf(nodes["w1"], "m1") != "worker" || !m1.controlSocketGone() {
		if time.Now().After(deadline) {
			t.Fatalf("m1 after demotion: role %q, control socket gone %v", roleOf(nodes["w1"], "m1"), m1.controlSocketGone())
		}
		time.Sleep(100 * time.Millisecond)
	}
	nodes["w1"].waitNode("m1", "READY", 30*time.Second)

	// Three managers again, one of them down: demoting another would leave
	// 2 managers with 1 reachable, refused; the cluster keeps its quorum.
	nodes["w1"].mustCtl("node", "promote", "m1")
	nodes["w1"].waitManagers("m1 a manager again", time.Minute, reachableManagers("m1", "w1", "w2"))
	victim, other := "w2", "w1"
	if leaderOf(nodes["w1"].waitManagers("a leader", 10*time.Second, reachableManagers("m1", "w1", "w2"))) == "w2" {
		victim, other = "w1", "w2"
	}
	_ = syscall.Kill(nodes[victim].cmd.Process.Pid, syscall.SIGKILL)
	<-nodes[victim].exited
	nodes[other].waitManagers(victim+" unreachable", 30*time.Second, func(ms map[string]managerRow) bool {
		return ms[victim].ManagerStatus != nil && ms[victim].ManagerStatus.Reachability == "UNREACHABLE"
	})
	_, errOut, err := nodes[other].ctl("node", "demote", "m1")
	if err == nil || !strings.Contains(errOut, "quorum needs 2") || !strings.Contains(errOut, "1 of them reachable") {
		t.Fatalf("demote with a manager down: %v %q, want a refusal about the quorum", err, errOut)
	}
	if r := roleOf(nodes[other], "m1"); r != "manager" {
		t.Fatalf("m1 is %q after a refused demotion", r)
	}
	nodes[other].mustCtl("service", "create", "--name", "still-writable", "--image", "busybox", "--", "sleep", "1d")
}

// controlSocketGone: the node serves no control API (it runs no manager).
func (d *swarmd) controlSocketGone() bool {
	_, _, err := d.ctl("node", "ls", "-q")
	return err != nil
}
