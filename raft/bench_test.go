package raft

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.etcd.io/raft/v3"
)

// Run with e.g.: go test -run '^$' -bench . -benchtime 2s ./raft/
// Figures are for the disk under the test's temp dir (TMPDIR); BenchmarkDiskFsync measures it.

// countSM applies nothing, so the benchmarks measure the raft path and the disk.
type countSM struct{ n atomic.Uint64 }

func (s *countSM) Apply(uint64, []byte) error { s.n.Add(1); return nil }
func (s *countSM) Snapshot() ([]byte, error)  { return []byte("{}"), nil }
func (s *countSM) Restore([]byte) error       { return nil }

func benchNode(b *testing.B) *Node {
	b.Helper()
	r := startNode(b, Config{
		ID: 1, Dir: b.TempDir(), Peers: []raft.Peer{{ID: 1}}, StateMachine: &countSM{},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	waitLeaderReady(b, r.n)
	return r.n
}

var benchPayload = make([]byte, 128) // a small store transaction

func reportProposals(b *testing.B, n *Node, before Stats) {
	after := n.Stats()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "proposals/s")
	b.ReportMetric(float64(b.N)/float64(max(after.WALSyncs-before.WALSyncs, 1)), "proposals/fsync")
}

// BenchmarkProposeSequential: one 128-byte proposal at a time; each waits for its own fsync.
func BenchmarkProposeSequential(b *testing.B) {
	n := benchNode(b)
	ctx := context.Background()
	before := n.Stats()
	b.ResetTimer()
	for range b.N {
		if err := n.Propose(ctx, benchPayload); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reportProposals(b, n, before)
}

// BenchmarkProposeConcurrent: 64 goroutines proposing 128 bytes each in a loop; their proposals
// share Readys, hence fsyncs.
func BenchmarkProposeConcurrent(b *testing.B) {
	const proposers = 64
	n := benchNode(b)
	ctx := context.Background()
	before := n.Stats()
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for range proposers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := n.Propose(ctx, benchPayload); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	reportProposals(b, n, before)
}

// BenchmarkDiskFsync: the raw cost the WAL pays per Ready: write 4 KiB into a preallocated file
// and fdatasync it, on the disk under the test's temp dir.
func BenchmarkDiskFsync(b *testing.B) {
	const span = 16 << 20
	f, err := os.OpenFile(filepath.Join(b.TempDir(), "fsync"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := fileutil.Preallocate(f, span, true); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 4096)
	for i := range buf {
		buf[i] = byte(i)
	}
	b.ResetTimer()
	for i := range b.N {
		if _, err := f.WriteAt(buf, int64(i*len(buf))%span); err != nil {
			b.Fatal(err)
		}
		if err := fileutil.Fdatasync(f); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/fsync")
}
