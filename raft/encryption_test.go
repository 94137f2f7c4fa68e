package raft

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

func newTestDataKey(t testing.TB, id uint32) *DataKey {
	t.Helper()
	k := &DataKey{ID: id, Key: make([]byte, DataKeySize)}
	_, _ = rand.Read(k.Key)
	return k
}

func TestSealedRecordsOpenOnlyWithTheirKeyAndPlace(t *testing.T) {
	key := newTestDataKey(t, 7)
	s, err := newSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	e := raftpb.Entry{Type: raftpb.EntryNormal, Index: 42, Term: 3, Data: []byte("service web")}
	sealed := s.sealEntries([]raftpb.Entry{e})[0]
	if bytes.Contains(sealed.Data, e.Data) || !isSealed(sealed.Data) || len(sealed.Data) != len(e.Data)+recordOverhead {
		t.Fatalf("sealed record %x: not sealed as framed", sealed.Data)
	}
	if again := s.sealEntries([]raftpb.Entry{e})[0]; bytes.Equal(again.Data, sealed.Data) {
		t.Fatal("sealing twice gave the same bytes: the nonce is not random")
	}
	got := []raftpb.Entry{sealed}
	if err := s.openEntries("d", got); err != nil || !bytes.Equal(got[0].Data, e.Data) {
		t.Fatalf("open: %q, %v", got[0].Data, err)
	}

	otherKey := newTestDataKey(t, 7) // same ID, other bytes
	other, _ := newSealer(otherKey)
	rotated, _ := newSealer(newTestDataKey(t, 8))
	flip := func(i int) []byte { b := bytes.Clone(sealed.Data); b[i] ^= 1; return b }
	for _, tc := range []struct {
		name string
		s    *sealer
		e    raftpb.Entry
		want string
	}{
		{"wrong key", other, sealed, "authentication failed"},
		{"other key ID", rotated, sealed, "data key 7"},
		{"ciphertext changed", s, raftpb.Entry{Index: 42, Term: 3, Data: flip(len(sealed.Data) - 20)}, "authentication failed"},
		{"nonce changed", s, raftpb.Entry{Index: 42, Term: 3, Data: flip(recordHeaderSize + 1)}, "authentication failed"},
		{"moved to another index", s, raftpb.Entry{Index: 43, Term: 3, Data: sealed.Data}, "authentication failed"},
		{"moved to another term", s, raftpb.Entry{Index: 42, Term: 4, Data: sealed.Data}, "authentication failed"},
		{"type changed", s, raftpb.Entry{Type: raftpb.EntryConfChange, Index: 42, Term: 3, Data: sealed.Data}, "authentication failed"},
		{"truncated", s, raftpb.Entry{Index: 42, Term: 3, Data: sealed.Data[:recordHeaderSize+5]}, "truncated"},
		{"plaintext", s, e, "not encrypted"},
		{"blanked", s, raftpb.Entry{Index: 42, Term: 3}, "not encrypted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ents := []raftpb.Entry{tc.e}
			err := tc.s.openEntries("d", ents)
			var de *DecryptError
			if !errors.As(err, &de) || !errors.Is(err, ErrDecrypt) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("open = %v, want a DecryptError saying %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), "log entry 42") && tc.e.Index == 42 {
				t.Fatalf("error %q does not name the entry", err)
			}
		})
	}

	// Empty entries are sealed too, and open to empty data.
	empty := s.sealEntries([]raftpb.Entry{{Index: 1, Term: 1}})
	if err := s.openEntries("d", empty); err != nil || empty[0].Data == nil || len(empty[0].Data) != 0 {
		t.Fatalf("empty entry: %q, %v", empty[0].Data, err)
	}
	if _, err := newSealer(&DataKey{ID: 1, Key: []byte("short")}); err == nil {
		t.Fatal("a 5-byte data key was accepted")
	}
}

const marker = "PLAINTEXT-MARKER-service-web-frontend"

// requireNoMarker fails if any file under dir holds marker in the clear.
func requireNoMarker(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(marker)) {
			t.Errorf("%s holds %q in the clear", p, marker)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func hasMarker(t *testing.T, dir string) bool {
	t.Helper()
	found := false
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			found = found || bytes.Contains(b, []byte(marker))
		}
		return nil
	})
	return found
}

// writeSnapshottedLog writes 300 keys to a log in dir with snapshots every 50 entries, so the
// directory holds snapshots and a log tail after them.
func writeSnapshottedLog(t *testing.T, dir string, key *DataKey) {
	t.Helper()
	cfg := testConfig(t, dir, newKV())
	cfg.SnapshotInterval, cfg.LogEntriesForSlowFollowers, cfg.DataKey = 50, 10, key
	r := startNode(t, cfg)
	waitLeaderReady(t, r.n)
	proposeAll(t, r.n, "k", 300, 4, marker)
	propose(t, r.n, "put", "tail", marker) // after the last snapshot
	if err := r.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// reopen starts a node on dir with key and checks it holds what writeSnapshottedLog wrote.
func reopen(t *testing.T, dir string, key *DataKey) {
	t.Helper()
	sm := newKV()
	cfg := testConfig(t, dir, sm)
	cfg.SnapshotInterval, cfg.LogEntriesForSlowFollowers, cfg.DataKey = 50, 10, key
	r := startNode(t, cfg)
	waitLeaderReady(t, r.n)
	requireKeys(t, sm, "k", 300)
	if v, _ := sm.get("tail"); v != marker {
		t.Fatalf("tail = %q after restart", v)
	}
	if err := r.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestEncryptedLogHoldsNoPlaintextAndOpensOnlyWithItsKey(t *testing.T) {
	setSegmentSize(t, 64<<10)
	dir := t.TempDir()
	key := newTestDataKey(t, 1)
	writeSnapshottedLog(t, dir, key)
	if snaps, _ := snapFiles(filepath.Join(dir, snapSubdir)); len(snaps) == 0 {
		t.Fatal("no snapshot was taken")
	}
	requireNoMarker(t, dir)
	reopen(t, dir, key)

	_, err := New(testConfig(t, dir, newKV()))
	if err == nil || !strings.Contains(err.Error(), "encrypted, but no data key") {
		t.Fatalf("New without the key = %v, want a refusal saying the log is encrypted", err)
	}
	cfg := testConfig(t, dir, newKV())
	cfg.DataKey = &DataKey{ID: key.ID, Key: newTestDataKey(t, 1).Key}
	_, err = New(cfg)
	var de *DecryptError
	if !errors.As(err, &de) || !strings.Contains(err.Error(), "snapshot at index") {
		t.Fatalf("New with a wrong key = %v, want a DecryptError on the snapshot", err)
	}
	reopen(t, dir, key) // nothing was changed by the refused attempts
}

// rewriteWAL rewrites the (snapshot-less) WAL in dir with edit applied to its entries, keeping
// valid CRCs: what a deliberate change on disk looks like.
func rewriteWAL(t *testing.T, dir string, edit func([]raftpb.Entry)) {
	t.Helper()
	walDir := filepath.Join(dir, walSubdir)
	lg := zap.NewNop()
	w, err := wal.Open(lg, walDir, walpb.Snapshot{})
	if err != nil {
		t.Fatal(err)
	}
	md, hs, ents, err := w.ReadAll()
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	edit(ents)
	if err := os.RemoveAll(walDir); err != nil {
		t.Fatal(err)
	}
	w, err = wal.Create(lg, walDir, md)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Save(hs, ents); err != nil {
		t.Fatal(err)
	}
	w.Close()
}

func TestTamperedEncryptedEntriesAreRefused(t *testing.T) {
	key := newTestDataKey(t, 1)
	for _, tc := range []struct {
		name string
		edit func([]raftpb.Entry)
	}{
		{"entries swapped", func(e []raftpb.Entry) { e[5].Data, e[6].Data = e[6].Data, e[5].Data }},
		{"byte flipped", func(e []raftpb.Entry) { e[5].Data[len(e[5].Data)-1] ^= 0x80 }},
		{"replaced by plaintext", func(e []raftpb.Entry) { e[5].Data = cmd("put", "evil", "x") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := testConfig(t, dir, newKV())
			cfg.DataKey = key
			r := startNode(t, cfg)
			waitLeaderReady(t, r.n)
			proposeAll(t, r.n, "k", 10, 1, "v")
			if err := r.stop(t); err != nil {
				t.Fatal(err)
			}
			rewriteWAL(t, dir, tc.edit)
			_, err := New(cfg)
			var de *DecryptError
			if !errors.As(err, &de) || !strings.Contains(de.Record, "log entry 6") {
				t.Fatalf("New on a tampered log = %v, want a DecryptError naming log entry 6", err)
			}
		})
	}
}

func TestPlaintextLogIsEncryptedWhenOpenedWithAKey(t *testing.T) {
	setSegmentSize(t, 64<<10)
	dir := t.TempDir()
	writeSnapshottedLog(t, dir, nil) // an earlier version's log
	if !hasMarker(t, dir) {
		t.Fatal("the plaintext log does not hold the marker: the test proves nothing")
	}
	plain := t.TempDir()
	copyDir(t, dir, plain)

	key := newTestDataKey(t, 1)
	// A member whose log is known to be encrypted refuses a plaintext one in its place.
	known := *key
	known.LogEncrypted = true
	cfg := testConfig(t, dir, newKV())
	cfg.DataKey = &known
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "is not encrypted, but this member's log was") {
		t.Fatalf("New on a substituted plaintext log = %v, want a refusal", err)
	}
	if !hasMarker(t, dir) {
		t.Fatal("the refused open changed the plaintext log")
	}

	reopen(t, dir, key)
	requireNoMarker(t, dir)
	reopen(t, dir, &known)
	for _, leftover := range []string{walMigrateSubdir, walPlainSubdir, snapMigrateSubdir} {
		if _, err := os.Stat(filepath.Join(dir, leftover)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s left behind: %v", leftover, err)
		}
	}
	reopen(t, dir, key)
	if _, err := New(testConfig(t, dir, newKV())); err == nil {
		t.Fatal("the migrated log opened without its key")
	}

	// A crash inside the migration leaves one of these; each opens with the key, to the same
	// state, encrypted.
	migrated := t.TempDir()
	copyDir(t, dir, migrated)
	for _, tc := range []struct {
		name  string
		build func(d string)
	}{
		{"encrypted WAL copy unfinished", func(d string) {
			copyDir(t, plain, d)
			if err := os.MkdirAll(filepath.Join(d, walMigrateSubdir), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(d, walMigrateSubdir, "0000000000000000-0000000000000000.wal"), []byte("partial"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"snapshot sealed, WAL still plaintext", func(d string) {
			copyDir(t, filepath.Join(plain, walSubdir), filepath.Join(d, walSubdir))
			copyDir(t, filepath.Join(migrated, snapSubdir), filepath.Join(d, snapSubdir))
		}},
		{"plaintext WAL moved aside, encrypted one not yet in place", func(d string) {
			copyDir(t, filepath.Join(plain, walSubdir), filepath.Join(d, walPlainSubdir))
			copyDir(t, filepath.Join(migrated, walSubdir), filepath.Join(d, walMigrateSubdir))
			copyDir(t, filepath.Join(migrated, snapSubdir), filepath.Join(d, snapSubdir))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := t.TempDir()
			tc.build(d)
			reopen(t, d, key)
			requireNoMarker(t, d)
			for _, leftover := range []string{walMigrateSubdir, walPlainSubdir} {
				if _, err := os.Stat(filepath.Join(d, leftover)); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s left behind: %v", leftover, err)
				}
			}
		})
	}
}

// BenchmarkProposeEncryption compares proposals/s with a plaintext and an encrypted log: one
// proposer at a time (each waits for its fsync), and 64 concurrent proposers sharing fsyncs.
func BenchmarkProposeEncryption(b *testing.B) {
	for _, enc := range []bool{false, true} {
		for _, proposers := range []int{1, 64} {
			name := fmt.Sprintf("plaintext/proposers=%d", proposers)
			if enc {
				name = fmt.Sprintf("encrypted/proposers=%d", proposers)
			}
			b.Run(name, func(b *testing.B) {
				cfg := Config{
					ID: 1, Dir: b.TempDir(), Peers: []raft.Peer{{ID: 1}}, StateMachine: &countSM{},
					Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				}
				if enc {
					cfg.DataKey = newTestDataKey(b, 1)
				}
				r := startNode(b, cfg)
				waitLeaderReady(b, r.n)
				n, ctx := r.n, context.Background()
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
			})
		}
	}
}

// BenchmarkSeal is the CPU cost of sealing and opening one record.
func BenchmarkSeal(b *testing.B) {
	s, _ := newSealer(newTestDataKey(b, 1))
	for _, size := range []int{128, 64 << 10, 16 << 20} {
		plain := make([]byte, size)
		ad := []byte("ad")
		b.Run(fmt.Sprintf("seal+open/%dB", size), func(b *testing.B) {
			b.SetBytes(int64(size))
			for range b.N {
				if _, err := s.open(s.seal(plain, ad), ad); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
