package integration

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/node"
)

// BenchmarkScaleSimulator is the scale simulator: one manager and N agents
// in this process (agents over real mTLS gRPC, sim executor), one
// replicated service of R replicas created through the control API, and the
// wall time from CreateService returning until the control API reports all
// R tasks RUNNING.
//
//	FLOTILLA_SCALE=10x1000,100x10000,300x30000,1000x100000 \
//	    go test -run '^$' -bench ScaleSimulator -benchtime 1x -timeout 60m ./integration/
//
// FLOTILLA_SCALE lists NxR workloads (default 10x1000). Each prints N, R,
// seconds, tasks/s and the process's peak RSS so far.
func BenchmarkScaleSimulator(b *testing.B) {
	spec := os.Getenv("FLOTILLA_SCALE")
	if spec == "" {
		spec = "10x1000"
	}
	for _, w := range strings.Split(spec, ",") {
		var n, r int
		if _, err := fmt.Sscanf(w, "%dx%d", &n, &r); err != nil || n < 1 || r < 1 {
			b.Fatalf("FLOTILLA_SCALE entry %q: want NxR", w)
		}
		b.Run(fmt.Sprintf("N=%d,R=%d", n, r), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				runScale(b, n, r)
			}
		})
	}
}

func runScale(b *testing.B, agents, replicas int) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	mgr, err := node.New(node.Config{StateDir: b.TempDir(), Hostname: "mgr", ListenRemoteAPI: "127.0.0.1:0", Executor: "sim", Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	if err := mgr.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), time.Minute)
		defer scancel()
		_ = mgr.Stop(sctx)
	}()
	<-mgr.Ready()
	ctl := controlClient(b, mgr.ControlSocket())
	clusters, err := ctl.ListClusters(ctx, &api.ListClustersRequest{})
	if err != nil {
		b.Fatal(err)
	}
	nodes, err := ctl.ListNodes(ctx, &api.ListNodesRequest{})
	if err != nil {
		b.Fatal(err)
	}
	addr, token := nodes.Nodes[0].ManagerStatus.Addr, clusters.Clusters[0].RootCA.JoinTokens.Worker

	// The manager's own agent counts as one of the N.
	runCtx, stopAgents := context.WithCancel(context.Background())
	var sims []*simAgent
	defer func() {
		if stuck, err := stopSimAgents(stopAgents, sims, time.Minute); stuck > 0 || err != nil {
			b.Errorf("%d agents did not stop (%v)", stuck, err)
		}
	}()
	joinStart := time.Now()
	sem := make(chan struct{}, 16)
	results := make(chan *simAgent)
	errs := make(chan error, agents)
	for i := 1; i < agents; i++ {
		go func(i int) {
			sem <- struct{}{}
			defer func() { <-sem }()
			a, err := joinSimAgent(ctx, runCtx, addr, token, fmt.Sprintf("sim-%04d", i), quiet)
			if err != nil {
				errs <- err
			}
			results <- a
		}(i)
	}
	for i := 1; i < agents; i++ {
		if a := <-results; a != nil {
			sims = append(sims, a)
		}
	}
	select {
	case err := <-errs:
		b.Fatalf("join: %v", err)
	default:
	}
	waitReadyNodes(b, ctl, agents, 5*time.Minute)
	joined := time.Since(joinStart)

	b.ResetTimer()
	cpuStart := cpuTime()
	_, err = ctl.CreateService(ctx, &api.CreateServiceRequest{Spec: &api.ServiceSpec{
		Annotations: api.Annotations{Name: "scale"},
		Task:        api.TaskSpec{Container: &api.ContainerSpec{Image: "busybox:latest"}},
		Mode:        api.ServiceMode{Mode: &api.ServiceMode_Replicated{Replicated: &api.ReplicatedService{Replicas: uint64(replicas)}}},
	}})
	if err != nil {
		b.Fatal(err)
	}
	created := time.Now()
	// The service's status (computed on read) counts its tasks by state: far
	// cheaper to poll than listing R tasks, and it gives the timeline of the
	// pipeline's stages.
	// Counting R tasks costs the manager about R×0.27µs (100k: 27 ms), so
	// the poll interval grows with R to keep the measuring (at most about a
	// seventh of a core) out of the measured: 20 ms up to 10k tasks, 200 ms
	// at 100k.
	poll := max(20*time.Millisecond, time.Duration(replicas/500)*time.Millisecond)
	var timeline []string
	lastStates := ""
	for {
		status := serviceStatus(b, ctl, "scale")
		if states := formatStates(status.TaskStates); states != lastStates && os.Getenv("FLOTILLA_SCALE_TIMELINE") != "" {
			timeline = append(timeline, fmt.Sprintf("  %6.2fs %s", time.Since(created).Seconds(), states))
			lastStates = states
		}
		if status.RunningTasks == uint64(replicas) {
			break
		}
		if time.Since(created) > 20*time.Minute {
			b.Fatalf("%d of %d tasks running after 20 minutes", status.RunningTasks, replicas)
		}
		time.Sleep(poll)
	}
	elapsed := time.Since(created)
	cpu := cpuTime() - cpuStart
	b.StopTimer()
	rss := peakRSS()
	if path := os.Getenv("FLOTILLA_SCALE_HEAPPROFILE"); path != "" {
		writeHeapProfile(b, path)
	}
	b.ReportMetric(elapsed.Seconds(), "s")
	b.ReportMetric(float64(replicas)/elapsed.Seconds(), "tasks/s")
	b.ReportMetric(float64(rss)/(1<<20), "peak-RSS-MB")
	b.ReportMetric(cpu.Seconds(), "cpu-s")
	fmt.Printf("scale: N=%d R=%d seconds=%.2f tasks/s=%.0f peak_rss=%dMB cpu=%.1fs (joined %d agents in %s)\n",
		agents, replicas, elapsed.Seconds(), float64(replicas)/elapsed.Seconds(), rss>>20, cpu.Seconds(), agents, joined.Round(time.Millisecond))
	for _, line := range timeline {
		fmt.Println(line)
	}
}

// cpuTime is the CPU time (user and system) this process has used: the
// manager and every simulated agent. Unlike wall time it does not depend on
// what else runs on the machine.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// writeHeapProfile writes the live heap (after a GC) to path, for finding
// what holds the peak.
func writeHeapProfile(b *testing.B, path string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		b.Fatal(err)
	}
}

// serviceStatus is the named service's task counts as the control API
// reports them.
func serviceStatus(b *testing.B, ctl api.ControlClient, name string) *api.ServiceStatus {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := ctl.GetService(ctx, &api.GetServiceRequest{ServiceID: name, IncludeStatus: true})
	if err != nil {
		b.Fatal(err)
	}
	if resp.Service.Status == nil {
		return &api.ServiceStatus{}
	}
	return resp.Service.Status
}

// formatStates prints per-state counts in lifecycle order.
func formatStates(counts map[string]uint64) string {
	var parts []string
	for s := api.TaskStateNew; s <= api.TaskStateOrphaned; s++ {
		if n := counts[s.String()]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", s, n))
		}
	}
	return strings.Join(parts, " ")
}

func waitReadyNodes(b *testing.B, ctl api.ControlClient, want int, within time.Duration) {
	deadline := time.Now().Add(within)
	for {
		resp, err := ctl.ListNodes(context.Background(), &api.ListNodesRequest{})
		if err != nil {
			b.Fatal(err)
		}
		ready := 0
		for _, n := range resp.Nodes {
			if n.Status.State == api.NodeStatusReady {
				ready++
			}
		}
		if ready == want {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d nodes READY after %s", ready, want, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// peakRSS is this process's peak resident set size (VmHWM), in bytes.
func peakRSS() int64 { return procKB("/proc/self/status", "VmHWM:") << 10 }
