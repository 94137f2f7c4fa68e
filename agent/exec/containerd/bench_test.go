package containerd

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/agent/exec/containerd/containerdtest"
	"github.com/flotilla/flotilla/api"
)

// BenchmarkStart20Containers starts 20 containers of the busybox image
// (present in the namespace), one after another and all at once, driving
// each through exec.Do from ASSIGNED to RUNNING as the agent does, and
// reports the time per container and the memory of each container's shim
// and logger (VmRSS, and PSS which shares the binaries' pages fairly).
//
//	go test -run '^$' -bench Start20 -benchtime 1x ./agent/exec/containerd/
func BenchmarkStart20Containers(b *testing.B) {
	const n = 20
	d := containerdtest.StartDaemon(b)
	archive := containerdtest.BusyboxImage(b, containerdtest.ImageOptions{})
	for _, mode := range []string{"sequential", "concurrent"} {
		b.Run(mode, func(b *testing.B) {
			en := newEnv(b, d, archive)
			var total, removeTotal time.Duration
			var shimRSS, shimPSS, logRSS, logPSS int64
			for range b.N {
				tasks := make([]*api.Task, n)
				ctlrs := make([]*Controller, n)
				for i := range tasks {
					tasks[i] = newTask(&api.ContainerSpec{Command: []string{"sleep", "1000"}})
					c, err := en.e.Controller(tasks[i])
					if err != nil {
						b.Fatal(err)
					}
					ctlrs[i] = c.(*Controller)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				start := time.Now()
				if mode == "sequential" {
					for i := range tasks {
						tasks[i] = drive(ctx, b, tasks[i], ctlrs[i], api.TaskStateRunning)
					}
				} else {
					var wg sync.WaitGroup
					for i := range tasks {
						wg.Go(func() { tasks[i] = drive(ctx, b, tasks[i], ctlrs[i], api.TaskStateRunning) })
					}
					wg.Wait()
				}
				total += time.Since(start)
				for _, task := range tasks {
					if task.Status.State != api.TaskStateRunning {
						b.Fatalf("task %s: %v %q", task.ID, task.Status.State, task.Status.Err)
					}
					shim := parentPID(b, int(task.Status.ContainerStatus.PID))
					shimRSS += procKiB(b, shim, "status", "VmRSS:")
					shimPSS += procKiB(b, shim, "smaps_rollup", "Pss:")
					if lg := loggerOf(shim); lg > 0 {
						logRSS += procKiB(b, lg, "status", "VmRSS:")
						logPSS += procKiB(b, lg, "smaps_rollup", "Pss:")
					}
				}
				start = time.Now()
				for _, c := range ctlrs {
					if err := c.Remove(ctx); err != nil {
						b.Fatal(err)
					}
				}
				removeTotal += time.Since(start)
				cancel()
			}
			per := float64(b.N * n)
			b.ReportMetric(float64(total.Milliseconds())/per, "ms/start")
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/20-starts")
			b.ReportMetric(float64(removeTotal.Milliseconds())/per, "ms/remove")
			b.ReportMetric(float64(shimRSS)/per, "shim-RSS-KiB")
			b.ReportMetric(float64(shimPSS)/per, "shim-PSS-KiB")
			b.ReportMetric(float64(logRSS)/per, "logger-RSS-KiB")
			b.ReportMetric(float64(logPSS)/per, "logger-PSS-KiB")
		})
	}
}

// parentPID is pid's parent (a container's init: its shim).
func parentPID(tb testing.TB, pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	// pid (comm) state ppid ...: comm may hold spaces, so cut at the last ')'.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// loggerOf is the shim's child that runs this test binary (the logger); 0
// if none.
func loggerOf(shim int) int {
	self, _ := os.Executable()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 2 || f[1] != strconv.Itoa(shim) {
			continue
		}
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && exe == self {
			return pid
		}
	}
	return 0
}

// procKiB reads a "Key: N kB" line of /proc/PID/file.
func procKiB(tb testing.TB, pid int, file, key string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/%s", pid, file))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), key); ok {
			n, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			return n
		}
	}
	return 0
}
