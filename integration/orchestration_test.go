package integration

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
)

type taskRow struct {
	ID           string `json:"id"`
	NodeID       string `json:"nodeId"`
	Slot         string `json:"slot"`
	DesiredState string `json:"desiredState"`
	Status       struct {
		State   string `json:"state"`
		Message string `json:"message"`
	} `json:"status"`
}

func (d *swarmd) tasks(service string) []taskRow {
	d.t.Helper()
	var rows []taskRow
	if err := json.Unmarshal([]byte(d.mustCtl("task", "ls", "--service", service, "--format", "json")), &rows); err != nil {
		d.t.Fatal(err)
	}
	return rows
}

// runningPerNode counts the service's tasks that are RUNNING and wanted so,
// by node ID.
func runningPerNode(rows []taskRow) (map[string]int, int) {
	per, total := map[string]int{}, 0
	for _, r := range rows {
		if r.Status.State == "RUNNING" && r.DesiredState == "RUNNING" {
			per[r.NodeID]++
			total++
		}
	}
	return per, total
}

// waitRunning polls until the service has want running tasks and check
// accepts their spread.
func (d *swarmd) waitRunning(service string, want int, within time.Duration, check func(map[string]int) bool) map[string]int {
	d.t.Helper()
	deadline := time.Now().Add(within)
	var per map[string]int
	var total int
	for time.Now().Before(deadline) {
		per, total = runningPerNode(d.tasks(service))
		if total == want && (check == nil || check(per)) {
			return per
		}
		time.Sleep(100 * time.Millisecond)
	}
	d.t.Fatalf("service %s: %d running (%v), want %d within %s", service, total, per, want, within)
	return nil
}

func TestServiceSpreadsSurvivesDrainAndNodeLoss(t *testing.T) {
	m, addr := startManager(t, "mgr")
	m.mustCtl("cluster", "update", "--heartbeat-period", "1s")
	token := strings.TrimSpace(m.mustCtl("cluster", "join-token", "-q", "worker"))
	workers := map[string]*swarmd{}
	for _, h := range []string{"w1", "w2", "w3"} {
		workers[h] = startWorker(t, t.TempDir(), h, addr, token)
	}
	for h := range workers {
		m.waitNode(h, "READY", 30*time.Second)
	}
	ids := map[string]string{}
	for _, n := range m.nodes() {
		ids[n.Desc.Hostname] = n.ID
	}

	start := time.Now()
	m.mustCtl("service", "create", "--name", "web", "--replicas", "12", "--image", "busybox:latest", "--", "sleep", "1d")
	even := func(per map[string]int) bool {
		if len(per) != 4 {
			return false
		}
		for _, n := range per {
			if n != 3 {
				return false
			}
		}
		return true
	}
	m.waitRunning("web", 12, 30*time.Second, even)
	t.Logf("12 replicas running 3/3/3/3 (manager included) %s after create", time.Since(start).Round(time.Millisecond))
	if out := m.mustCtl("service", "ls"); !strings.Contains(out, "12/12") {
		t.Errorf("service ls does not show 12/12:\n%s", out)
	}
	var inspected struct {
		Status struct {
			DesiredTasks string            `json:"desiredTasks"`
			RunningTasks string            `json:"runningTasks"`
			TaskStates   map[string]string `json:"taskStates"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(m.mustCtl("service", "inspect", "web")), &inspected); err != nil {
		t.Fatal(err)
	}
	if s := inspected.Status; s.DesiredTasks != "12" || s.RunningTasks != "12" || s.TaskStates["RUNNING"] != "12" {
		t.Errorf("service inspect status = %+v, want 12 desired, 12 running, RUNNING: 12", s)
	}

	// Drain w1: its tasks move to the other three nodes.
	m.mustCtl("node", "drain", "w1")
	m.waitRunning("web", 12, 30*time.Second, func(per map[string]int) bool { return per[ids["w1"]] == 0 })

	// kill -9 w2: once it is DOWN, its tasks run elsewhere again.
	workers["w2"].kill()
	m.waitNode("w2", "DOWN", 10*time.Second)
	per := m.waitRunning("web", 12, 30*time.Second, func(per map[string]int) bool {
		return per[ids["w1"]] == 0 && per[ids["w2"]] == 0
	})
	t.Logf("after drain and kill -9: %v", per)

	// Scale down and remove converge.
	m.mustCtl("service", "scale", "web=2")
	m.waitRunning("web", 2, 30*time.Second, nil)
	svcID := strings.TrimSpace(m.mustCtl("service", "ls", "-q"))
	m.mustCtl("service", "rm", "web")
	c := m.client()
	deadline := time.Now().Add(30 * time.Second)
	for {
		left, err := c.ListTasks(withTimeout(t), &api.ListTasksRequest{Filters: &api.ListTasksRequest_Filters{ServiceIDs: []string{svcID}}})
		if err != nil {
			t.Fatal(err)
		}
		if len(left.Tasks) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d tasks of the removed service remain", len(left.Tasks))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
