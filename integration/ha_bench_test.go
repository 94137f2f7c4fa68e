package integration

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
)

// startManagers starts a cluster of n managers (sim executor) and returns
// them, the first one leading.
func startManagers(t testing.TB, n int) []*swarmd {
	t.Helper()
	m1, addr := startManager(t, "m1")
	out := []*swarmd{m1}
	if n == 1 {
		return out
	}
	token := strings.TrimSpace(m1.mustCtl("cluster", "join-token", "-q", "manager"))
	for i := 2; i <= n; i++ {
		out = append(out, startSwarmd(t, t.TempDir(), "--hostname", fmt.Sprintf("m%d", i), "--join-addr", addr, "--join-token", token))
	}
	for _, m := range out[1:] {
		m.waitReady()
	}
	m1.waitManagers(fmt.Sprintf("%d reachable managers", n), time.Minute, func(ms map[string]managerRow) bool {
		if len(ms) != n {
			return false
		}
		for _, m := range ms {
			if m.ManagerStatus.Reachability != "REACHABLE" {
				return false
			}
		}
		return true
	})
	return out
}

// BenchmarkFailover is issue 7's benchmark (a): three managers with the
// default raft settings; the time from kill -9 of the leader to the first
// CreateService a survivor acknowledges. Each iteration is a new cluster;
// run it with -benchtime 10x for the median of 10.
//
//	go test -run '^$' -bench Failover -benchtime 10x ./integration/
func BenchmarkFailover(b *testing.B) {
	var took []time.Duration
	for i := 0; i < b.N; i++ {
		ms := startManagers(b, 3)
		ctl := ms[1].client()
		killed := time.Now()
		_ = syscall.Kill(ms[0].cmd.Process.Pid, syscall.SIGKILL)
		<-ms[0].exited
		for j := 0; ; j++ {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := ctl.CreateService(ctx, &api.CreateServiceRequest{Spec: &api.ServiceSpec{
				Annotations: api.Annotations{Name: fmt.Sprintf("s%d", j)},
				Task:        api.TaskSpec{Container: &api.ContainerSpec{Image: "busybox"}},
				Mode:        api.ServiceMode{Mode: &api.ServiceMode_Replicated{Replicated: &api.ReplicatedService{Replicas: 1}}},
			}})
			cancel()
			if err == nil {
				break
			}
			if time.Since(killed) > time.Minute {
				b.Fatalf("no write acknowledged a minute after the leader was killed: %v", err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		took = append(took, time.Since(killed))
		for _, m := range ms[1:] {
			m.kill()
		}
	}
	slices.Sort(took)
	median := took[len(took)/2]
	b.ReportMetric(median.Seconds(), "median-s")
	fmt.Printf("failover: %d runs, median %s, min %s, max %s\n", len(took), median.Round(time.Millisecond),
		took[0].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond))
}

// BenchmarkControlWrites is issue 7's benchmark (b): 8 concurrent clients
// creating services (1 replica each, no workers) for FLOTILLA_WRITE_SECONDS
// (default 20) against the leader, with 1 and with 3 managers: creates/s and
// p50/p99 latency.
//
//	go test -run '^$' -bench ControlWrites -benchtime 1x ./integration/
func BenchmarkControlWrites(b *testing.B) {
	seconds := 20
	if s, err := strconv.Atoi(os.Getenv("FLOTILLA_WRITE_SECONDS")); err == nil && s > 0 {
		seconds = s
	}
	for _, n := range []int{1, 3} {
		b.Run(fmt.Sprintf("managers=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				ms := startManagers(b, n)
				ctl := ms[0].client()
				var (
					mu   sync.Mutex
					lats []time.Duration
					errs int
					wg   sync.WaitGroup
				)
				end := time.Now().Add(time.Duration(seconds) * time.Second)
				for c := 0; c < 8; c++ {
					wg.Go(func() {
						for j := 0; time.Now().Before(end); j++ {
							start := time.Now()
							_, err := ctl.CreateService(context.Background(), &api.CreateServiceRequest{Spec: &api.ServiceSpec{
								Annotations: api.Annotations{Name: fmt.Sprintf("c%d-%d", c, j)},
								Task:        api.TaskSpec{Container: &api.ContainerSpec{Image: "busybox"}},
								Mode:        api.ServiceMode{Mode: &api.ServiceMode_Replicated{Replicated: &api.ReplicatedService{Replicas: 1}}},
							}})
							d := time.Since(start)
							mu.Lock()
							if err != nil {
								errs++
							} else {
								lats = append(lats, d)
							}
							mu.Unlock()
						}
					})
				}
				wg.Wait()
				slices.Sort(lats)
				rate := float64(len(lats)) / float64(seconds)
				p50, p99 := lats[len(lats)/2], lats[len(lats)*99/100]
				b.ReportMetric(rate, "creates/s")
				b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
				fmt.Printf("writes: %d managers, 8 clients, %ds: %.0f creates/s, p50 %s, p99 %s, %d errors\n",
					n, seconds, rate, p50.Round(10*time.Microsecond), p99.Round(10*time.Microsecond), errs)
				for _, m := range ms {
					m.kill()
				}
			}
		})
	}
}
