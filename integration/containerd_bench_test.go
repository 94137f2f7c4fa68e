package integration

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/agent/exec/containerd/containerdtest"
)

// BenchmarkContainerdServiceStart20 is issue 6's benchmark: one swarmd with
// the containerd executor and the image present; the wall time from
// `swarmctl service create --replicas 20` returning until the control API
// reports 20 tasks RUNNING with their containers, and the memory each
// container costs: the shim and logger processes containerd runs for it, and
// swarmd's own growth per container (the agent's overhead).
//
//	go test -run '^$' -bench ContainerdServiceStart20 -benchtime 3x ./integration/
func BenchmarkContainerdServiceStart20(b *testing.B) {
	const replicas = 20
	d := containerdtest.StartDaemon(b)
	node := startContainerdNode(b, d, b.TempDir(), "bench")
	node.waitReady()
	b.StopTimer()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		name := fmt.Sprintf("bench%d", i)
		swarmdBefore := rssKB(node.cmd.Process.Pid)
		b.StartTimer()
		start := time.Now()
		node.mustCtl("service", "create", "--name", name, "--replicas", strconv.Itoa(replicas), "--image", "busybox",
			"--", "sleep", "1000")
		created := time.Now()
		node.running(name, replicas)
		b.StopTimer()
		elapsed := time.Since(created)
		swarmdAfter := rssKB(node.cmd.Process.Pid)
		shims, err := d.Shims()
		if err != nil {
			b.Fatal(err)
		}
		// PSS splits shared pages (the binaries' text) among the processes
		// sharing them: what a container really adds. RSS counts them whole.
		var rss, pss int64
		for _, pid := range shims {
			rss, pss = rss+rssKB(pid), pss+pssKB(pid)
			for _, child := range childPIDs(pid) {
				if comm(child) != "sleep" { // the logger, not the container
					rss, pss = rss+rssKB(child), pss+pssKB(child)
				}
			}
		}
		n := int64(len(shims))
		b.ReportMetric(elapsed.Seconds(), "s")
		b.ReportMetric(float64(pss/n)/1024, "shim+logger-PSS-MiB/container")
		b.ReportMetric(float64(swarmdAfter-swarmdBefore)/1024/replicas, "swarmd-MiB/container")
		fmt.Printf("containerd: %d replicas running %.2fs after create (create call %.0f ms); shim+logger per container: PSS %.1f MiB, RSS %.1f MiB; swarmd RSS %d -> %d MiB\n",
			replicas, elapsed.Seconds(), created.Sub(start).Seconds()*1000, float64(pss/n)/1024, float64(rss/n)/1024, swarmdBefore>>10, swarmdAfter>>10)
		node.mustCtl("service", "rm", name)
		deadline := time.Now().Add(time.Minute)
		for node.containers() > 0 {
			if time.Now().After(deadline) {
				b.Fatalf("%d containers left a minute after service rm", node.containers())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// rssKB is a process's resident set size in KiB (0 if it is gone).
func rssKB(pid int) int64 { return procKB(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:") }

// pssKB is a process's proportional set size in KiB (0 if it is gone).
func pssKB(pid int) int64 { return procKB(fmt.Sprintf("/proc/%d/smaps_rollup", pid), "Pss:") }

// procKB reads the "FIELD:   N kB" line of a /proc file (0 if missing).
func procKB(path, field string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb
		}
	}
	return 0
}

// childPIDs are the direct children of pid.
func childPIDs(pid int) []int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

func comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}
