package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/agent/exec/containerd/containerdtest"
)

// Health checks through swarmd and swarmctl on a real containerd: a passing
// check shows "(healthy)" in service ps; a failing one fails the task with
// the check's output and the restart policy replaces it.
func TestContainerdHealthChecksEndToEnd(t *testing.T) {
	d := containerdtest.StartDaemon(t)
	node := startContainerdNode(t, d, t.TempDir(), "it-health")
	node.waitReady()
	// Stops on SIGTERM (busybox sh as PID 1 ignores it otherwise).
	cmd := []string{"--", "sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"}
	node.mustCtl(append([]string{"service", "create", "--name", "ok", "--image", "busybox",
		"--health-cmd", "test -d /proc/1", "--health-interval", "200ms"}, cmd...)...)
	node.mustCtl(append([]string{"service", "create", "--name", "sick", "--image", "busybox",
		"--health-cmd", "echo no /tmp/ok; test -f /tmp/ok", "--health-interval", "200ms", "--health-retries", "2",
		"--restart-delay", "100ms"}, cmd...)...)

	deadline := time.Now().Add(60 * time.Second)
	for {
		out, _, _ := node.ctl("service", "ps", "ok")
		if strings.Contains(out, "(healthy)") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("service ps ok never showed (healthy):\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}

	deadline = time.Now().Add(60 * time.Second)
	for {
		ts := node.taskInfos("sick")
		var failed *taskInfo
		for i := range ts {
			if ts[i].Status.State == "FAILED" {
				failed = &ts[i]
			}
		}
		if failed != nil && len(ts) >= 2 {
			if !strings.Contains(failed.Status.Err, "container is unhealthy: no /tmp/ok") || failed.DesiredState != "SHUTDOWN" {
				t.Fatalf("failed task %+v: want the unhealthy cause with the check's output, desired SHUTDOWN", failed)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no unhealthy task failed and replaced: %+v", ts)
		}
		time.Sleep(100 * time.Millisecond)
	}
	node.mustCtl("service", "rm", "ok", "sick")
	deadline = time.Now().Add(60 * time.Second)
	for node.containers() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d containers left after the services were removed", node.containers())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
