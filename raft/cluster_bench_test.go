package raft

import (
	"context"
	"io"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
)

// Multi-member figures, over loopback gRPC (plain text), each member's log on the test's disk.
// Run with e.g.: go test -run '^$' -bench 'ThreeMembers|Failover' -benchtime 2s ./raft/

func quietCluster(b *testing.B, tick time.Duration) *testCluster {
	c := newTestCluster(b, tick)
	c.configure = func(cfg *Config) { cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil)) }
	return c
}

// BenchmarkProposeThreeMembers: 64 goroutines proposing 128 bytes each on the leader of three
// members; a proposal returns once a quorum has it durable and the leader applied it.
func BenchmarkProposeThreeMembers(b *testing.B) {
	c := quietCluster(b, 0)
	peers := c.staticPeers(1, 2, 3)
	for _, p := range peers {
		c.start(p.ID, peers, &countSM{}, false)
	}
	leader := c.waitLeader(20 * time.Second)
	const workers = 64
	ctx := context.Background()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var lat []time.Duration
	per := (b.N + workers - 1) / workers
	b.ResetTimer()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for range per {
				start := time.Now()
				if err := leader.n.Propose(ctx, benchPayload); err != nil {
					b.Error(err)
					return
				}
				mine = append(mine, time.Since(start))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(len(lat))/b.Elapsed().Seconds(), "proposals/s")
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	}
}

// BenchmarkFailoverDefaultTicks: three members with the default ticks (100 ms, election after
// 10-20 ticks); each op kills the leader and measures until another member is a ready leader,
// then brings the old one back.
func BenchmarkFailoverDefaultTicks(b *testing.B) {
	c := quietCluster(b, 0)
	peers := c.staticPeers(1, 2, 3)
	for _, p := range peers {
		c.start(p.ID, peers, nil, false)
	}
	var total time.Duration
	for range b.N {
		leader := c.waitLeader(30 * time.Second)
		c.waitApplied(leader.n.AppliedIndex(), 10*time.Second)
		start := time.Now()
		c.stop(leader.id)
		nl := c.waitLeader(30*time.Second, leader.id)
		total += time.Since(start)
		if nl.id == leader.id {
			b.Fatal("same leader")
		}
		c.start(leader.id, []raft.Peer{}, nil, false)
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms-to-new-leader")
	b.ReportMetric(0, "ns/op")
}
