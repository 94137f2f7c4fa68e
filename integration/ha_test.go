package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
)

// managerRow is what the HA tests read of `node ls --format json`.
type managerRow struct {
	ID            string                    `json:"id"`
	Desc          struct{ Hostname string } `json:"description"`
	Status        struct{ State string }    `json:"status"`
	ManagerStatus *struct {
		Addr         string `json:"addr"`
		Leader       bool   `json:"leader"`
		Reachability string `json:"reachability"`
	} `json:"managerStatus"`
}

func (d *swarmd) managerRows() ([]managerRow, error) {
	out, _, err := d.ctl("node", "ls", "--format", "json")
	if err != nil {
		return nil, err
	}
	var rows []managerRow
	return rows, json.Unmarshal([]byte(out), &rows)
}

// waitManagers polls d until check accepts the managers it lists.
func (d *swarmd) waitManagers(what string, within time.Duration, check func(map[string]managerRow) bool) map[string]managerRow {
	d.t.Helper()
	deadline := time.Now().Add(within)
	var last map[string]managerRow
	for time.Now().Before(deadline) {
		if rows, err := d.managerRows(); err == nil {
			last = map[string]managerRow{}
			for _, r := range rows {
				if r.ManagerStatus != nil {
					last[r.Desc.Hostname] = r
				}
			}
			if check(last) {
				return last
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	d.t.Fatalf("%s: not within %s; managers: %+v", what, within, last)
	return nil
}

// leaderOf names the manager marked leader, "" if none.
func leaderOf(ms map[string]managerRow) string {
	for h, m := range ms {
		if m.ManagerStatus.Leader {
			return h
		}
	}
	return ""
}

// Three managers (the second and third join with the manager token): every
// manager serves the control API (writes on followers reach the leader and
// are visible there at once); killing the leader elects another that takes
// writes, tasks keep running, no node is marked DOWN by the failover, and
// the old leader rejoins as a follower when it comes back.
func TestThreeManagersSurviveLeaderLoss(t *testing.T) {
	m1, addr := startManager(t, "m1")
	token := strings.TrimSpace(m1.mustCtl("cluster", "join-token", "-q", "manager"))
	managers := map[string]*swarmd{"m1": m1}
	for _, h := range []string{"m2", "m3"} {
		managers[h] = startSwarmd(t, t.TempDir(), "--hostname", h, "--join-addr", addr, "--join-token", token)
	}
	for _, h := range []string{"m2", "m3"} {
		managers[h].waitReady()
	}
	all := func(ms map[string]managerRow) bool {
		if len(ms) != 3 || leaderOf(ms) == "" {
			return false
		}
		for _, m := range ms {
			if m.Status.State != "READY" || m.ManagerStatus.Reachability != "REACHABLE" {
				return false
			}
		}
		return true
	}
	first := m1.waitManagers("three reachable managers", 30*time.Second, all)
	if leaderOf(first) != "m1" {
		t.Fatalf("leader is %s, want m1", leaderOf(first))
	}

	// A write on a follower is forwarded, and the follower reads it at once.
	managers["m2"].mustCtl("service", "create", "--name", "web", "--replicas", "6", "--image", "busybox", "--", "sleep", "1d")
	if out := managers["m2"].mustCtl("service", "ls"); !strings.Contains(out, " web ") {
		t.Fatalf("the follower does not see its own write:\n%s", out)
	}
	managers["m3"].waitRunning("web", 6, 30*time.Second, func(per map[string]int) bool { return len(per) == 3 })

	// Kill the leader: a survivor takes writes within seconds.
	killed := time.Now()
	_ = syscall.Kill(m1.cmd.Process.Pid, syscall.SIGKILL)
	<-m1.exited
	var took time.Duration
	for i := 0; ; i++ {
		if _, _, err := managers["m2"].ctl("service", "create", "--name", fmt.Sprintf("after%d", i), "--image", "busybox", "--", "sleep", "1d"); err == nil {
			took = time.Since(killed)
			break
		}
		if time.Since(killed) > 30*time.Second {
			t.Fatal("no write acknowledged by a survivor 30s after the leader was killed")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("first write acknowledged by a survivor %s after the leader was killed", took.Round(time.Millisecond))
	after := managers["m3"].waitManagers("a new leader", 30*time.Second, func(ms map[string]managerRow) bool {
		l := leaderOf(ms)
		return l == "m2" || l == "m3"
	})
	if after["m1"].ManagerStatus.Reachability != "UNREACHABLE" {
		t.Errorf("the killed leader is %s, want UNREACHABLE", after["m1"].ManagerStatus.Reachability)
	}
	// The survivors' tasks kept running; the failover itself marked no
	// survivor DOWN.
	for h, m := range after {
		if h != "m1" && m.Status.State != "READY" {
			t.Errorf("%s is %s after the failover", h, m.Status.State)
		}
	}

	// The old leader comes back as a follower and catches up.
	managers["m1"] = startSwarmd(t, m1.stateDir, "--hostname", "m1", "--listen-remote-api", addr)
	managers["m1"].waitReady()
	back := managers["m2"].waitManagers("m1 back", 30*time.Second, all)
	if leaderOf(back) == "m1" {
		t.Logf("m1 leads again (it won an election)")
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _, _ := managers["m1"].ctl("service", "ls", "-q")
		if strings.Count(out, "\n") >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("m1 did not catch up with the services made while it was down: %q", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A manager gone for good is removed with node rm --force (it leaves raft);
// a removal that would leave the reachable managers without a quorum is
// refused, saying why; without --force a manager is not removed at all.
func TestRemovingManagersKeepsQuorum(t *testing.T) {
	ms := startManagers(t, 3)
	m1 := ms[0]
	_ = syscall.Kill(ms[2].cmd.Process.Pid, syscall.SIGKILL)
	<-ms[2].exited
	m1.waitManagers("m3 unreachable", 30*time.Second, func(rows map[string]managerRow) bool {
		return rows["m3"].ManagerStatus != nil && rows["m3"].ManagerStatus.Reachability == "UNREACHABLE"
	})

	if _, errOut, err := m1.ctl("node", "rm", "m2"); err == nil || !strings.Contains(errOut, "is a manager") {
		t.Fatalf("node rm of a manager without --force: %v %q", err, errOut)
	}
	if _, errOut, err := m1.ctl("node", "rm", "--force", "m2"); err == nil || !strings.Contains(errOut, "quorum") {
		t.Fatalf("node rm --force m2 with m3 down: %v %q, want a refusal about quorum", err, errOut)
	}
	m1.mustCtl("node", "rm", "--force", "m3")
	left := m1.waitManagers("two managers left", 30*time.Second, func(rows map[string]managerRow) bool {
		_, m3 := rows["m3"]
		return len(rows) == 2 && !m3
	})
	if leaderOf(left) == "" {
		t.Fatalf("no leader after removing m3: %+v", left)
	}
	// The two left still form a quorum: writes go on, also through the follower.
	ms[1].mustCtl("service", "create", "--name", "after-rm", "--image", "busybox", "--", "sleep", "1d")
}

// All three managers stopped and started again at once come back with the
// same state and a leader.
func TestAllManagersRestartTogether(t *testing.T) {
	ms := startManagers(t, 3)
	ms[1].mustCtl("service", "create", "--name", "web", "--replicas", "3", "--image", "busybox", "--", "sleep", "1d")
	rows, err := ms[0].managerRows()
	if err != nil {
		t.Fatal(err)
	}
	addrs := map[string]string{}
	for _, r := range rows {
		addrs[r.Desc.Hostname] = r.ManagerStatus.Addr
	}
	for _, m := range ms {
		_ = syscall.Kill(m.cmd.Process.Pid, syscall.SIGTERM)
	}
	for _, m := range ms {
		<-m.exited
	}
	var back []*swarmd
	for i, m := range ms {
		h := fmt.Sprintf("m%d", i+1)
		back = append(back, startSwarmd(t, m.stateDir, "--hostname", h, "--listen-remote-api", addrs[h]))
	}
	for _, m := range back {
		m.waitReady()
	}
	back[2].waitManagers("three reachable managers after the restart", time.Minute, func(rows map[string]managerRow) bool {
		if len(rows) != 3 || leaderOf(rows) == "" {
			return false
		}
		for _, r := range rows {
			if r.ManagerStatus.Reachability != "REACHABLE" {
				return false
			}
		}
		return true
	})
	for _, m := range back {
		if out := m.mustCtl("service", "ls"); !strings.Contains(out, " web ") {
			t.Fatalf("after the restart a manager lists:\n%s", out)
		}
	}
	back[0].waitRunning("web", 3, time.Minute, nil)
}

// Creates stream through a follower while the leader is killed: every
// create that was acknowledged is there afterwards, once.
func TestAcknowledgedCreatesSurviveLeaderKill(t *testing.T) {
	ms := startManagers(t, 3)
	ctl := ms[1].client()
	var acked []string
	const killAt = 40
	var killed time.Time
	stopAt := 0
	for i := 0; killed.IsZero() || time.Since(killed) < 5*time.Second; i++ {
		stopAt = i + 1
		if i == killAt {
			_ = syscall.Kill(ms[0].cmd.Process.Pid, syscall.SIGKILL)
			killed = time.Now()
		}
		name := fmt.Sprintf("svc-%03d", i)
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		_, err := ctl.CreateService(ctx, &api.CreateServiceRequest{Spec: &api.ServiceSpec{
			Annotations: api.Annotations{Name: name},
			Task:        api.TaskSpec{Container: &api.ContainerSpec{Image: "busybox"}},
			Mode:        api.ServiceMode{Mode: &api.ServiceMode_Replicated{Replicated: &api.ReplicatedService{Replicas: 1}}},
		}})
		cancel()
		if err == nil {
			acked = append(acked, name)
		} else {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if len(acked) < killAt+10 {
		t.Fatalf("only %d creates acknowledged", len(acked))
	}
	for _, m := range ms[1:] {
		resp, err := m.client().ListServices(context.Background(), &api.ListServicesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		count := map[string]int{}
		for _, s := range resp.Services {
			count[s.Spec.Annotations.Name]++
		}
		for _, name := range acked {
			if count[name] != 1 {
				t.Errorf("acknowledged service %s is there %d times", name, count[name])
			}
		}
		if len(resp.Services) > stopAt {
			t.Errorf("%d services, more than the %d creates made", len(resp.Services), stopAt)
		}
	}
	t.Logf("%d of %d creates acknowledged across the leader's kill", len(acked), stopAt)
}

// A manager whose state dir was wiped comes back with its old address: the
// join is refused, naming the old manager to remove; once it is removed the
// join succeeds.
func TestWipedManagerRejoinsAfterItsOldSelfIsRemoved(t *testing.T) {
	ms := startManagers(t, 3)
	rows, err := ms[0].managerRows()
	if err != nil {
		t.Fatal(err)
	}
	var addr, oldID string
	for _, r := range rows {
		if r.Desc.Hostname == "m3" {
			addr, oldID = r.ManagerStatus.Addr, r.ID
		}
	}
	joinAddr := ""
	for _, r := range rows {
		if r.Desc.Hostname == "m1" {
			joinAddr = r.ManagerStatus.Addr
		}
	}
	token := strings.TrimSpace(ms[0].mustCtl("cluster", "join-token", "-q", "manager"))
	_ = syscall.Kill(ms[2].cmd.Process.Pid, syscall.SIGKILL)
	<-ms[2].exited

	again := startSwarmd(t, t.TempDir(), "--hostname", "m3", "--listen-remote-api", addr, "--join-addr", joinAddr, "--join-token", token)
	select {
	case <-again.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("the wiped manager's join was not refused within 30s")
	}
	if out := again.out.String(); !strings.Contains(out, "already belongs to manager "+oldID) || !strings.Contains(out, "node rm --force") {
		t.Fatalf("refusal does not say what to do:\n%s", out)
	}

	ms[0].mustCtl("node", "rm", "--force", oldID)
	rejoined := startSwarmd(t, t.TempDir(), "--hostname", "m3", "--listen-remote-api", addr, "--join-addr", joinAddr, "--join-token", token)
	rejoined.waitReady()
	ms[0].waitManagers("three reachable managers", time.Minute, func(rows map[string]managerRow) bool {
		if len(rows) != 3 {
			return false
		}
		for _, r := range rows {
			if r.ManagerStatus.Reachability != "REACHABLE" {
				return false
			}
		}
		return true
	})
}

// A manager joining a cluster whose store holds over 200 MB (and whose log
// was compacted) gets it as a snapshot streamed in chunks, and becomes
// Reachable with the same state.
func TestManagerJoinsA200MBCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a 200 MB store")
	}
	m1, addr := startManager(t, "m1")
	m1.mustCtl("cluster", "update", "--snapshot-interval", "20")
	ctl := m1.client()
	label := strings.Repeat("x", 1<<20) // 1 MiB per service
	const services = 210
	for i := 0; i < services; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := ctl.CreateService(ctx, &api.CreateServiceRequest{Spec: &api.ServiceSpec{
			Annotations: api.Annotations{Name: fmt.Sprintf("big-%03d", i), Labels: map[string]string{"blob": label}},
			Task:        api.TaskSpec{Container: &api.ContainerSpec{Image: "busybox"}},
			Mode:        api.ServiceMode{Mode: &api.ServiceMode_Replicated{Replicated: &api.ReplicatedService{Replicas: 0}}},
		}})
		cancel()
		if err != nil {
			t.Fatalf("service %d: %v", i, err)
		}
	}
	token := strings.TrimSpace(m1.mustCtl("cluster", "join-token", "-q", "manager"))
	start := time.Now()
	m2 := startSwarmd(t, t.TempDir(), "--hostname", "m2", "--join-addr", addr, "--join-token", token)
	m2.waitReady()
	m1.waitManagers("m2 reachable", 2*time.Minute, func(rows map[string]managerRow) bool {
		r, ok := rows["m2"]
		return ok && r.ManagerStatus.Reachability == "REACHABLE" && leaderOf(rows) != ""
	})
	t.Logf("m2 reachable %s after it started", time.Since(start).Round(time.Millisecond))
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := m2.client().ListServices(context.Background(), &api.ListServicesRequest{})
		if err == nil && len(resp.Services) == services {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("m2 does not hold the %d services a minute after joining (%v)", services, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
