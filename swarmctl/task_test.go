package main

import (
	"strings"
	"testing"
	"time"

	"github.com/gogo/protobuf/types"

	"github.com/flotilla/flotilla/api"
)

var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func ts(d time.Duration) *types.Timestamp {
	p, _ := types.TimestampProto(now.Add(-d))
	return p
}

func task(id, service string, slot uint64, node string, age time.Duration, state, desired api.TaskState) *api.Task {
	return &api.Task{
		ID:                 id,
		ServiceID:          "svc-" + service,
		ServiceAnnotations: api.Annotations{Name: service},
		Slot:               slot,
		NodeID:             node,
		Meta:               api.Meta{CreatedAt: ts(age)},
		Status:             api.TaskStatus{State: state, Timestamp: ts(age / 2)},
		DesiredState:       desired,
		Spec:               api.TaskSpec{Container: &api.ContainerSpec{Image: "nginx:1@sha256:abc"}},
	}
}

func TestServicePsShowsSlotsInOrderNewestFirstWithHistory(t *testing.T) {
	run, shut := api.TaskStateRunning, api.TaskStateShutdown
	tasks := []*api.Task{
		task("t2-old", "web", 2, "n1", 3*time.Hour, shut, shut),
		task("t1-old", "web", 1, "n1", 2*time.Hour, api.TaskStateFailed, shut),
		task("t10", "web", 10, "n2", time.Minute, run, run),
		task("t1-new", "web", 1, "n2", time.Minute, run, run),
		task("t2-new", "web", 2, "n1", 10*time.Second, run, run),
		task("t1-older", "web", 1, "n1", 5*time.Hour, shut, shut),
		task("a1", "api", 1, "n1", time.Minute, run, run),
	}
	rows := taskRows(tasks)
	var got []string
	for _, r := range rows {
		got = append(got, r.task.ID+"|"+r.name)
	}
	want := []string{
		"a1|api.1",
		"t1-new|web.1",
		`t1-old| \_ web.1`,
		`t1-older| \_ web.1`,
		"t2-new|web.2",
		`t2-old| \_ web.2`,
		"t10|web.10",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("rows:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if rows[0].history || !rows[2].history || rows[4].history {
		t.Fatal("history flags do not match the prefixes")
	}
}

func TestServicePsGroupsGlobalTasksByNode(t *testing.T) {
	run, shut := api.TaskStateRunning, api.TaskStateShutdown
	rows := taskRows([]*api.Task{
		task("b-old", "agent", 0, "nodeb", time.Hour, shut, shut),
		task("a", "agent", 0, "nodea", time.Minute, run, run),
		task("b-new", "agent", 0, "nodeb", time.Minute, run, run),
	})
	var got []string
	for _, r := range rows {
		got = append(got, r.name)
	}
	if want := `agent.nodea|agent.nodeb| \_ agent.nodeb`; strings.Join(got, "|") != want {
		t.Fatalf("names = %s, want %s", strings.Join(got, "|"), want)
	}
}

func TestTaskTableColumns(t *testing.T) {
	tk := task("t1", "web", 1, "n1", 10*time.Second, api.TaskStateRunning, api.TaskStateRunning)
	failed := task("t0", "web", 1, "n9", 3*time.Hour, api.TaskStateFailed, api.TaskStateShutdown)
	failed.Status.Err = "task: non-zero exit (1)"
	tk.Status.PortStatus = &api.PortStatus{Ports: []*api.PortConfig{{PublishMode: api.PublishModeHost, PublishedPort: 32768, TargetPort: 80}}}
	rows := taskTable(taskRows([]*api.Task{tk, failed}), map[string]string{"n1": "host-1"}, now)
	want := [][]string{
		{"t1", "web.1", "nginx:1", "host-1", "Running", "Running 5 seconds ago", "", "*:32768->80/tcp"},
		{"t0", ` \_ web.1`, "nginx:1", "n9", "Shutdown", "Failed 2 hours ago", `"task: non-zero exit (1)"`, ""},
	}
	for i := range want {
		if strings.Join(rows[i], "|") != strings.Join(want[i], "|") {
			t.Errorf("row %d = %q\nwant %q", i, rows[i], want[i])
		}
	}
}

func TestParseTaskState(t *testing.T) {
	for in, want := range map[string]api.TaskState{"running": api.TaskStateRunning, "shutdown": api.TaskStateShutdown, "ACCEPTED": api.TaskStateAccepted} {
		if got, err := parseTaskState("desired-state", in); err != nil || got != want {
			t.Errorf("%s: %v %v", in, got, err)
		}
	}
	if _, err := parseTaskState("desired-state", "sleeping"); err == nil || !strings.HasPrefix(err.Error(), "--desired-state: ") {
		t.Errorf("err = %v", err)
	}
}

func TestServicePsShowsHealthOfRunningTasks(t *testing.T) {
	healthy := task("t1", "web", 1, "n1", 10*time.Second, api.TaskStateRunning, api.TaskStateRunning)
	healthy.Status.Health = api.HealthHealthy
	starting := task("t2", "web", 2, "n1", 10*time.Second, api.TaskStateRunning, api.TaskStateRunning)
	starting.Status.Health = api.HealthStarting
	failed := task("t3", "web", 3, "n1", 10*time.Second, api.TaskStateFailed, api.TaskStateShutdown)
	failed.Status.Health = api.HealthUnhealthy
	failed.Status.Err = "task exited with code 143: container is unhealthy: no /tmp/ok"
	rows := taskTable(taskRows([]*api.Task{healthy, starting, failed}), nil, now)
	for i, want := range []string{"Running 5 seconds ago (healthy)", "Running 5 seconds ago (health: starting)", "Failed 5 seconds ago"} {
		if rows[i][5] != want {
			t.Errorf("row %d CURRENT STATE %q, want %q", i, rows[i][5], want)
		}
	}
	if got := rows[2][6]; !strings.Contains(got, "container is unhealthy: no /tmp/ok") {
		t.Errorf("ERROR column %q: want the unhealthy cause", got)
	}
}

// A task that cannot be placed shows why in the ERROR column, as Docker does.
func TestPendingTaskShowsWhy(t *testing.T) {
	p := task("t2", "web", 2, "", 10*time.Second, api.TaskStatePending, api.TaskStateRunning)
	p.Status.Message = "no suitable node (1 node lacks memory)"
	rows := taskTable(taskRows([]*api.Task{p}), nil, now)
	if got := rows[0][6]; got != `"no suitable node (1 node lacks memory)"` {
		t.Fatalf("ERROR column %q", got)
	}
}
