package manager

import (
	"context"
	"io"
	"log/slog"

	"path/filepath"
	"testing"
	"time"

	etcdraft "go.etcd.io/raft/v3"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/identity"
	"github.com/flotilla/flotilla/manager/store"
	"github.com/flotilla/flotilla/raft"
)

// startWritePath runs a one-member raft log on dir (real WAL, real fsync)
// with a store as its state machine, as a manager does.
func startWritePath(tb testing.TB, dir string) (*store.MemoryStore, *raft.Node) {
	tb.Helper()
	var n *raft.Node
	s := store.New(proposerFunc(func(ctx context.Context, data []byte) error { return n.Propose(ctx, data) }))
	var err error
	n, err = raft.New(raft.Config{
		ID: 1, Dir: filepath.Join(dir, "raft"), Peers: []etcdraft.Peer{{ID: 1}},
		StateMachine: s, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("raft: %v", err)
		}
	})
	for {
		l, changed := n.Leadership()
		if l.Ready {
			break
		}
		select {
		case <-changed:
		case <-time.After(10 * time.Second):
			tb.Fatal("no leader after 10s")
		}
	}
	return s, n
}

type proposerFunc func(ctx context.Context, data []byte) error

func (f proposerFunc) Propose(ctx context.Context, data []byte) error { return f(ctx, data) }

func benchTask(serviceID string, slot uint64) *api.Task {
	return &api.Task{
		ID: identity.NewID(), ServiceID: serviceID, Slot: slot, DesiredState: api.TaskStateRunning,
		Spec:               api.TaskSpec{Container: &api.ContainerSpec{Image: "busybox:latest", Command: []string{"sleep", "1d"}}},
		ServiceAnnotations: api.Annotations{Name: "bench"},
		Status:             api.TaskStatus{State: api.TaskStateNew},
	}
}

// BenchmarkSingleTransaction: one small write at a time, each acknowledged
// only after commit and fsync. Reports transactions per second.
func BenchmarkSingleTransaction(b *testing.B) {
	s, _ := startWritePath(b, b.TempDir())
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if err := s.Update(ctx, func(tx store.Tx) error { return tx.Create(benchTask("svc", uint64(i+1))) }); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "tx/s")
}

// BenchmarkConcurrentTransactions: 64 writers at once; concurrent proposals
// share WAL fsyncs.
func BenchmarkConcurrentTransactions(b *testing.B) {
	s, n := startWritePath(b, b.TempDir())
	ctx := context.Background()
	b.SetParallelism(32) // 32 x GOMAXPROCS(2) = 64 writers
	syncs := n.Stats().WALSyncs
	start := time.Now()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := s.Update(ctx, func(tx store.Tx) error { return tx.Create(benchTask("svc", 1)) }); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "tx/s")
	b.ReportMetric(float64(b.N)/float64(max(1, n.Stats().WALSyncs-syncs)), "tx/fsync")
}

// BenchmarkBatchCreate100kTasks: 100,000 tasks through the batch API.
// Reports objects per second and the number of proposals.
func BenchmarkBatchCreate100kTasks(b *testing.B) {
	const tasks = 100000
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s, n := startWritePath(b, b.TempDir())
		objs := make([]*api.Task, tasks)
		for j := range objs {
			objs[j] = benchTask("svc", uint64(j+1))
		}
		proposals := n.Stats().Proposals
		b.StartTimer()
		start := time.Now()
		committed, err := s.Batch(context.Background(), func(batch *store.Batch) error {
			for _, t := range objs {
				if err := batch.Update(func(tx store.Tx) error { return tx.Create(t) }); err != nil {
					return err
				}
			}
			return nil
		})
		elapsed := time.Since(start)
		if err != nil || committed != tasks {
			b.Fatalf("committed %d of %d: %v", committed, tasks, err)
		}
		b.ReportMetric(tasks/elapsed.Seconds(), "objects/s")
		b.ReportMetric(float64(n.Stats().Proposals-proposals), "proposals")
	}
}

// The store never proposes what the raft log would refuse.
func TestStoreTransactionsFitRaftProposals(t *testing.T) {
	if store.MaxTransactionBytes > raft.DefaultMaxProposalBytes {
		t.Fatalf("store.MaxTransactionBytes %d exceeds raft.DefaultMaxProposalBytes %d",
			store.MaxTransactionBytes, raft.DefaultMaxProposalBytes)
	}
}

// A batch far bigger than one proposal commits through the real raft log.
func TestBatchThroughRaft(t *testing.T) {
	s, n := startWritePath(t, t.TempDir())
	const tasks = 20000
	proposals := n.Stats().Proposals
	committed, err := s.Batch(context.Background(), func(batch *store.Batch) error {
		for j := 0; j < tasks; j++ {
			if err := batch.Update(func(tx store.Tx) error { return tx.Create(benchTask("svc", uint64(j+1))) }); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil || committed != tasks {
		t.Fatalf("committed %d of %d: %v", committed, tasks, err)
	}
	if p := n.Stats().Proposals - proposals; p < 2 {
		t.Errorf("%d proposals for %d tasks; want several bounded ones", p, tasks)
	}
	s.View(func(tx store.ReadTx) {
		if c, _ := store.Count(tx, api.KindTask, store.All()); c != tasks {
			t.Errorf("%d tasks stored, want %d", c, tasks)
		}
	})
}
