package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flotilla/flotilla/api"
)

// benchJoinsAlone is how many nodes BenchmarkManagerHoldsAgents joins one at
// a time before the concurrent joins.
const benchJoinsAlone = 20

// BenchmarkManagerHoldsAgents measures how many agents one manager holds with
// heartbeats at the default period (5 s), and how long one node takes to join.
//
// One real manager runs as its own swarmd process, so that its CPU and memory
// are not mixed with the agents'. N worker nodes are simulated in the test
// process: each joins for real (fetches the root CA and checks it against the
// token's digest, makes its key and CSR, gets its certificate with the worker
// token over a connection verified against the root) and then runs a real
// agent over mTLS gRPC with the sim executor. Only the executor is simulated.
//
// It reports:
//
//   - join-alone-p50-ms: one node from token to agent Ready (the first
//     session message, sent once the dispatcher wrote the node READY), for
//     the first 20 nodes, joined one at a time;
//   - join-p50-ms, join-p99-ms: the same for the other nodes, joined with
//     FLOTILLA_BENCH_JOIN_CONCURRENCY (16) joins in flight;
//   - join-all-s: from the first join to `swarmctl node ls` showing N+1
//     READY nodes;
//   - mgr-cpu-%-per-1000-agents: the manager's CPU time (utime+stime) over a
//     steady window of FLOTILLA_BENCH_WINDOW (30 s, at least 5 heartbeat
//     periods), as % of one core, scaled to 1,000 agents. It includes the
//     idle manager's own cost (raft ticks, its own agent), which is logged
//     apart, measured before the agents joined;
//   - mgr-rss-MB-per-1000-agents: the manager's VmRSS at the end of the
//     window minus before the agents joined, scaled to 1,000 agents.
//
// It fails if a node leaves READY during the window (a store watch on the
// manager sees every node update), if an agent's session is replaced, or if
// `node ls` does not show N+1 READY nodes at the end.
//
// Every run is one measurement (b.N is not used); the default benchtime runs
// it once. Its log stays under the 10 lines the testing package prints of a
// benchmark that passes:
//
//	go test -run '^$' -bench ManagerHoldsAgents -benchtime 1x -timeout 30m ./integration/
//
// Knobs: FLOTILLA_BENCH_AGENTS (N, default 1000),
// FLOTILLA_BENCH_JOIN_CONCURRENCY (16), FLOTILLA_BENCH_WINDOW (30s), and
// FLOTILLA_BENCH_PERF=FILE to record the manager with `perf record -g` during
// the window (needs perf and the right to trace the process).
func BenchmarkManagerHoldsAgents(b *testing.B) {
	if testing.Short() {
		b.Skip("joins and holds 1,000 agents for about a minute")
	}
	n := benchEnvInt(b, "FLOTILLA_BENCH_AGENTS", 1000)
	concurrency := benchEnvInt(b, "FLOTILLA_BENCH_JOIN_CONCURRENCY", 16)
	window := benchEnvDuration(b, "FLOTILLA_BENCH_WINDOW", 30*time.Second)
	const period = 5 * time.Second // the default heartbeat period, not changed here
	if window < 5*period {
		b.Fatalf("FLOTILLA_BENCH_WINDOW=%s: the window must cover at least 5 heartbeat periods (%s)", window, 5*period)
	}
	tck := benchClockTicks()

	m, addr := startBenchManager(b)
	pid := m.cmd.Process.Pid
	token := strings.TrimSpace(benchCtl(b, m, "cluster", "join-token", "-q", "worker"))
	b.Logf("manager pid %d at %s, heartbeat period %s (cluster spec: %s)", pid, addr, period, benchHeartbeatSpec(b, m))

	// The idle manager: its own agent, raft ticks, nothing else.
	idleWindow := 2 * period
	idle0 := benchProcCPU(b, pid)
	time.Sleep(idleWindow) // a measured window, not a wait for anything
	idleCPU := benchTicksToDur(benchProcCPU(b, pid)-idle0, tck)
	rssBefore := benchProcStatus(b, pid)

	// The agents: join N with bounded concurrency.
	log, warnings := benchWarnLogger()
	runCtx, cancelAgents := context.WithCancel(context.Background())
	var (
		mu        sync.Mutex
		agents    []*simAgent
		latencies []time.Duration
		joinErr   error
		failed    atomic.Bool
	)
	stopAgents := sync.OnceFunc(func() {
		mu.Lock()
		all := slices.Clone(agents)
		mu.Unlock()
		stuck, err := stopSimAgents(cancelAgents, all, 30*time.Second)
		if stuck > 0 {
			b.Errorf("%d agents did not stop within 30s of their context ending", stuck)
		}
		if err != nil {
			b.Errorf("an agent's Run failed: %v", err)
		}
	})
	b.Cleanup(stopAgents) // before the manager's kill: cleanups run last first

	// join joins node i and records its latency, if no join failed yet.
	join := func(i int, latencies *[]time.Duration) {
		if failed.Load() {
			return
		}
		hostname := fmt.Sprintf("sim-%05d", i)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		t0 := time.Now()
		a, err := joinSimAgent(ctx, runCtx, addr, token, hostname, log)
		d := time.Since(t0)
		cancel()
		mu.Lock()
		defer mu.Unlock()
		if a != nil {
			agents = append(agents, a)
		}
		if err != nil {
			if joinErr == nil {
				joinErr = fmt.Errorf("%s: %w", hostname, err)
			}
			failed.Store(true)
			return
		}
		*latencies = append(*latencies, d)
	}

	// First a few nodes one at a time: the latency of one node joining with
	// nothing else going on. Then the rest, concurrency at once.
	start := time.Now()
	alone := min(n, benchJoinsAlone)
	var aloneLatencies []time.Duration
	for i := range alone {
		join(i, &aloneLatencies)
	}
	next := make(chan int)
	var wg sync.WaitGroup
	for range concurrency {
		wg.Go(func() {
			for i := range next {
				join(i, &latencies)
			}
		})
	}
	for i := alone; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	joinedAt := time.Since(start)
	if joinErr != nil {
		b.Fatalf("join failed after %d nodes: %v\nagent warnings:\n%s", len(aloneLatencies)+len(latencies), joinErr, warnings.String())
	}
	ready := benchWaitAllReady(b, m, n+1, 2*time.Minute)
	allReady := time.Since(start)
	b.Logf("%d agents joined in %s (all Ready), node ls shows %d READY after %s (%.0f joins/s)",
		n, joinedAt.Round(time.Millisecond), ready, allReady.Round(time.Millisecond), float64(n)/allReady.Seconds())

	slices.Sort(aloneLatencies)
	aloneP50 := benchPercentile(aloneLatencies, 50)
	b.Logf("join alone (token to Ready, one at a time, %d nodes): min %s p50 %s max %s", alone,
		aloneLatencies[0].Round(10*time.Microsecond), aloneP50.Round(10*time.Microsecond),
		aloneLatencies[len(aloneLatencies)-1].Round(10*time.Microsecond))
	if len(latencies) == 0 { // n <= benchJoinsAlone
		latencies = aloneLatencies
	}
	slices.Sort(latencies)
	p50, p99 := benchPercentile(latencies, 50), benchPercentile(latencies, 99)
	b.Logf("join under load (token to Ready, %d at once, %d nodes): min %s p50 %s p90 %s p99 %s max %s",
		concurrency, len(latencies), latencies[0].Round(10*time.Microsecond), p50.Round(10*time.Microsecond),
		benchPercentile(latencies, 90).Round(10*time.Microsecond), p99.Round(10*time.Microsecond),
		latencies[len(latencies)-1].Round(10*time.Microsecond))

	// Let the join burst's writes and garbage settle for one heartbeat period
	// (a measured pause, not a wait for anything), then hold a steady window.
	time.Sleep(period)
	watch := benchWatchNodes(b, m)
	sessions := make(map[string]string, len(agents))
	for _, a := range agents {
		sessions[a.hostname] = a.agent.SessionID()
	}
	stopPerf := benchStartPerf(b, pid)
	cpu0, self0, w0 := benchProcCPU(b, pid), benchProcCPU(b, os.Getpid()), time.Now()
	rssStart := benchProcStatus(b, pid)
	rssMin, rssMax := rssStart.rssKB, rssStart.rssKB
	// The measured window; RSS is sampled every heartbeat period on the way.
	end := time.NewTimer(window)
	sample := time.NewTicker(period)
	for sampling := true; sampling; {
		select {
		case <-sample.C:
			r := benchProcStatus(b, pid).rssKB
			rssMin, rssMax = min(rssMin, r), max(rssMax, r)
		case <-end.C:
			sampling = false
		}
	}
	sample.Stop()
	cpu1, self1, elapsed := benchProcCPU(b, pid), benchProcCPU(b, os.Getpid()), time.Since(w0)
	rssEnd := benchProcStatus(b, pid)
	rssMin, rssMax = min(rssMin, rssEnd.rssKB), max(rssMax, rssEnd.rssKB)
	stopPerf()
	events, notReady := watch()

	// Nobody left READY, no session was replaced, all N+1 READY now.
	if len(notReady) > 0 {
		b.Errorf("%d node updates left READY during the window, e.g. %s", len(notReady), notReady[0])
	}
	replaced := 0
	for _, a := range agents {
		if id := a.agent.SessionID(); id != sessions[a.hostname] {
			if replaced == 0 {
				b.Errorf("agent %s: session %q at the start of the window, %q at its end", a.hostname, sessions[a.hostname], id)
			}
			replaced++
		}
	}
	if replaced > 0 {
		b.Errorf("%d of %d agents changed session during the window", replaced, n)
	}
	if ready := benchReadyNodes(b, m); ready != n+1 {
		b.Errorf("%d READY nodes after the window, want %d", ready, n+1)
	}
	if s := warnings.String(); s != "" {
		b.Logf("agent warnings:\n%s", s)
	}
	if b.Failed() {
		b.FailNow()
	}

	mgrCPU := benchTicksToDur(cpu1-cpu0, tck)
	selfCPU := benchTicksToDur(self1-self0, tck)
	cpuPct := 100 * mgrCPU.Seconds() / elapsed.Seconds()
	idlePct := 100 * idleCPU.Seconds() / idleWindow.Seconds()
	per1000 := 1000 / float64(n)
	rssMB := float64(rssEnd.rssKB) / 1024
	rssGrowthMB := float64(rssEnd.rssKB-rssBefore.rssKB) / 1024
	b.Logf("manager, idle with 1 node over %s: CPU %s (%.2f%% of a core), RSS %.1f MB, %d threads",
		idleWindow, idleCPU, idlePct, float64(rssBefore.rssKB)/1024, rssBefore.threads)
	b.Logf("manager, %d agents over %s: CPU %s = %.2f%% of a core = %.1f ms/s (%.1f ms/s per 1000 agents; %.1f ms/s above idle per 1000 agents)",
		n, elapsed.Round(time.Millisecond), mgrCPU, cpuPct, 10*cpuPct, 10*cpuPct*per1000, 10*(cpuPct-idlePct)*per1000)
	b.Logf("manager RSS: %.1f MB before the agents; in the window %.1f MB at the start, %.1f MB at the end, %.1f-%.1f MB sampled every %s (+%.1f MB at the end, %.2f MB per 1000 agents); VmHWM %.1f MB; %d threads",
		float64(rssBefore.rssKB)/1024, float64(rssStart.rssKB)/1024, rssMB, float64(rssMin)/1024, float64(rssMax)/1024, period,
		rssGrowthMB, rssGrowthMB*per1000, float64(rssEnd.hwmKB)/1024, rssEnd.threads)
	b.Logf("test process (the %d agents) over the window: CPU %s (%.2f%% of a core); %d node updates seen by the watch, none leaving READY",
		n, selfCPU, 100*selfCPU.Seconds()/elapsed.Seconds(), events)

	b.ReportMetric(aloneP50.Seconds()*1000, "join-alone-p50-ms")
	b.ReportMetric(p50.Seconds()*1000, "join-p50-ms")
	b.ReportMetric(p99.Seconds()*1000, "join-p99-ms")
	b.ReportMetric(allReady.Seconds(), "join-all-s")
	b.ReportMetric(cpuPct*per1000, "mgr-cpu-%-per-1000-agents")
	b.ReportMetric(rssGrowthMB*per1000, "mgr-rss-MB-per-1000-agents")

	stopAgents()
}

// startBenchManager starts a first manager like startManager does. That
// helper takes a *testing.T, which a benchmark does not have, so this is the
// same process setup on a testing.TB: same flags, killed by PID in Cleanup.
// Only the swarmd methods that need no *testing.T (ctl, kill, socket) are
// used on it.
func startBenchManager(b testing.TB) (*swarmd, string) {
	b.Helper()
	stateDir := b.TempDir()
	d := &swarmd{stateDir: stateDir, out: &syncBuffer{}, exited: make(chan struct{})}
	d.cmd = exec.Command(filepath.Join(binDir, "swarmd"), "--state-dir", stateDir,
		"--listen-remote-api", "127.0.0.1:0", "--executor", "sim", "--hostname", "mgr")
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() {
		d.exitErr = d.cmd.Wait()
		close(d.exited)
	}()
	b.Cleanup(func() {
		d.kill()
		if b.Failed() {
			out := d.out.String()
			if len(out) > 20000 {
				out = "...\n" + out[len(out)-20000:]
			}
			b.Logf("swarmd output:\n%s", out)
		}
	})

	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-d.exited:
			b.Fatalf("swarmd exited before it was ready: %v\n%s", d.exitErr, d.out.String())
		default:
		}
		if _, _, err := d.ctl("node", "ls", "-q"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("swarmd not ready after 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	var nodes []struct {
		ManagerStatus struct{ Addr string } `json:"managerStatus"`
	}
	if err := json.Unmarshal([]byte(benchCtl(b, d, "node", "ls", "--format", "json")), &nodes); err != nil || len(nodes) != 1 || nodes[0].ManagerStatus.Addr == "" {
		b.Fatalf("manager address: %v %+v", err, nodes)
	}
	return d, nodes[0].ManagerStatus.Addr
}

func benchCtl(b testing.TB, d *swarmd, args ...string) string {
	b.Helper()
	out, errOut, err := d.ctl(args...)
	if err != nil {
		b.Fatalf("swarmctl %s: %v: %s", strings.Join(args, " "), err, errOut)
	}
	return out
}

// benchHeartbeatSpec is the cluster's heartbeat period setting as the CLI prints
// it, for the log.
func benchHeartbeatSpec(b testing.TB, d *swarmd) string {
	var c struct {
		Spec struct {
			Dispatcher json.RawMessage `json:"dispatcher"`
		} `json:"spec"`
	}
	if err := json.Unmarshal([]byte(benchCtl(b, d, "cluster", "inspect")), &c); err != nil {
		return "unreadable: " + err.Error()
	}
	var compact bytes.Buffer
	if len(c.Spec.Dispatcher) == 0 || json.Compact(&compact, c.Spec.Dispatcher) != nil {
		return "dispatcher defaults"
	}
	return compact.String()
}

// benchReadyNodes counts the READY nodes `swarmctl node ls` shows.
func benchReadyNodes(b testing.TB, d *swarmd) int {
	b.Helper()
	out, errOut, err := d.ctl("node", "ls", "--format", "json")
	if err != nil && strings.Contains(errOut, "larger than max") {
		return benchReadyNodesAPI(b, d, errOut)
	}
	if err != nil {
		b.Fatalf("swarmctl node ls: %v: %s", err, errOut)
	}
	var rows []nodeRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		b.Fatal(err)
	}
	ready := 0
	for _, r := range rows {
		if r.Status.State == "READY" {
			ready++
		}
	}
	return ready
}

// benchReadyNodesAPI counts READY nodes with the ListNodes call `swarmctl node
// ls` makes, with a receive limit above gRPC's default 4 MiB: past about
// 4,000 nodes the list is larger than that and swarmctl fails (ctlErr), which
// is logged once.
func benchReadyNodesAPI(b testing.TB, d *swarmd, ctlErr string) int {
	b.Helper()
	benchCtlTooSmall.Do(func() {
		b.Logf("swarmctl node ls fails at this size (%s); counting with ListNodes and a 1 GiB receive limit", strings.TrimSpace(ctlErr))
	})
	conn, err := grpc.NewClient("unix://"+d.socket(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := api.NewControlClient(conn).ListNodes(ctx, &api.ListNodesRequest{})
	if err != nil {
		b.Fatalf("ListNodes: %v", err)
	}
	ready := 0
	for _, n := range resp.Nodes {
		if n.Status.State == api.NodeStatusReady {
			ready++
		}
	}
	return ready
}

var benchCtlTooSmall sync.Once

// benchWaitAllReady polls `node ls` until want nodes are READY.
func benchWaitAllReady(b testing.TB, d *swarmd, want int, within time.Duration) int {
	b.Helper()
	deadline := time.Now().Add(within)
	for {
		ready := benchReadyNodes(b, d)
		if ready >= want {
			return ready
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d READY nodes after %s, want %d", ready, within, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// benchWatchNodes watches node updates on the manager's store from now on; the
// function it returns ends the watch and says how many node updates came and
// which of them left a node in a state other than READY.
func benchWatchNodes(b testing.TB, d *swarmd) func() (events int, notReady []string) {
	b.Helper()
	conn, err := grpc.NewClient("unix://"+d.socket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := api.NewWatchClient(conn).Watch(ctx, &api.WatchRequest{
		Entries: []*api.WatchRequest_WatchEntry{{Kind: "node"}},
	})
	if err == nil {
		_, err = stream.Recv() // the watch is established
	}
	if err != nil {
		cancel()
		conn.Close()
		b.Fatalf("watch nodes: %v", err)
	}
	var (
		events   int
		notReady []string
		done     = make(chan struct{})
	)
	go func() {
		defer close(done)
		for {
			msg, err := stream.Recv()
			if err != nil {
				if ctx.Err() == nil {
					notReady = append(notReady, fmt.Sprintf("watch ended: %v", err))
				}
				return
			}
			for _, ev := range msg.Events {
				n := ev.Object.GetNode()
				if n == nil {
					continue
				}
				events++
				if n.Status.State != api.NodeStatusReady {
					host := ""
					if n.Description != nil {
						host = n.Description.Hostname
					}
					notReady = append(notReady, fmt.Sprintf("%s (%s): %s %q", host, n.ID, n.Status.State, n.Status.Message))
				}
			}
		}
	}()
	return func() (int, []string) {
		cancel()
		<-done
		conn.Close()
		return events, notReady
	}
}

// benchStartPerf records the process with perf during the window when
// FLOTILLA_BENCH_PERF names an output file; the function it returns stops
// perf (SIGINT, as perf expects) and waits for it to write the file.
func benchStartPerf(b testing.TB, pid int) func() {
	out := os.Getenv("FLOTILLA_BENCH_PERF")
	if out == "" {
		return func() {}
	}
	cmd := exec.Command("perf", "record", "-F", "499", "-g", "-p", strconv.Itoa(pid), "-o", out)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	if err := cmd.Start(); err != nil {
		b.Fatalf("perf: %v", err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill() }) // a no-op once it has exited
	return func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		err := cmd.Wait()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGINT {
				err = nil // perf re-raises the SIGINT it stopped on
			}
		}
		if err != nil {
			b.Logf("perf record: %v: %s", err, strings.ReplaceAll(strings.TrimSpace(stderr.String()), "\n", "; "))
			return
		}
		b.Logf("perf profile of the manager during the window: %s (perf report -i %s)", out, out)
	}
}

// benchWarnLogger is the agents' logger: warnings and errors only, kept for the
// log (at most 100 lines); the info lines of 1,000 agents would be noise.
func benchWarnLogger() (*slog.Logger, *benchLog) {
	c := &benchLog{max: 100}
	return slog.New(slog.NewTextHandler(c, &slog.HandlerOptions{Level: slog.LevelWarn})), c
}

type benchLog struct {
	mu      sync.Mutex
	lines   []string
	max     int
	dropped int
}

func (c *benchLog) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.lines) < c.max {
		c.lines = append(c.lines, strings.TrimRight(string(p), "\n"))
	} else {
		c.dropped++
	}
	return len(p), nil
}

func (c *benchLog) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := strings.Join(c.lines, "\n")
	if c.dropped > 0 {
		s += fmt.Sprintf("\n(%d more)", c.dropped)
	}
	return s
}

// benchPercentile is the nearest-rank p-th benchPercentile of sorted durations.
func benchPercentile(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 99) / 100
	return sorted[max(i-1, 0)]
}

// benchProcCPU is the user+system CPU time of a process, in clock ticks.
func benchProcCPU(b testing.TB, pid int) int64 {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The command name, field 2, is in parentheses and may hold spaces:
	// fields 14 and 15 (utime, stime) count from after its closing one.
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		b.Fatalf("/proc/%d/stat: %q", pid, s)
	}
	var ticks int64
	for _, f := range fields[11:13] {
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			b.Fatalf("/proc/%d/stat: %q: %v", pid, s, err)
		}
		ticks += v
	}
	return ticks
}

type benchMemStatus struct {
	rssKB, hwmKB int64
	threads      int64
}

// benchProcStatus reads VmRSS, VmHWM and Threads from /proc/<pid>/status.
func benchProcStatus(b testing.TB, pid int) benchMemStatus {
	b.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var m benchMemStatus
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		v, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		switch name {
		case "VmRSS":
			m.rssKB = v
		case "VmHWM":
			m.hwmKB = v
		case "Threads":
			m.threads = v
		}
	}
	if m.rssKB == 0 {
		b.Fatalf("/proc/%d/status has no VmRSS", pid)
	}
	return m
}

// benchClockTicks is the kernel's USER_HZ (getconf CLK_TCK), 100 if unknown.
func benchClockTicks() int64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err != nil {
		return 100
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil || v <= 0 {
		return 100
	}
	return v
}

func benchTicksToDur(ticks, perSecond int64) time.Duration {
	return time.Duration(ticks) * time.Second / time.Duration(perSecond)
}

func benchEnvInt(b testing.TB, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil || v <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return v
}

func benchEnvDuration(b testing.TB, name string, def time.Duration) time.Duration {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := time.ParseDuration(s)
	if err != nil || v <= 0 {
		b.Fatalf("%s=%q: want a positive duration such as 30s", name, s)
	}
	return v
}
