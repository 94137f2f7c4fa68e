package raft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
)

// frame is one WAL record as laid out on disk: an 8-byte little-endian length field (low 56 bits:
// record size; top bit set: the top byte's low 3 bits are padding), the record, the padding.
type frame struct{ off, size, end int64 }

// walFrames walks the records of a WAL segment up to the first zero length field, i.e. the end of
// the data in a preallocated segment.
func walFrames(t *testing.T, path string) []frame {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var frames []frame
	for off := int64(0); off+8 <= int64(len(b)); {
		l := binary.LittleEndian.Uint64(b[off:])
		if l == 0 {
			break
		}
		size := int64(l & ^(uint64(0xff) << 56))
		var pad int64
		if int64(l) < 0 {
			pad = int64((l >> 56) & 0x7)
		}
		f := frame{off: off, size: size, end: off + 8 + size + pad}
		frames = append(frames, f)
		off = f.end
	}
	return frames
}

func lastWALFile(t *testing.T, dir string) string {
	t.Helper()
	names, err := walNames(filepath.Join(dir, walSubdir))
	if err != nil || len(names) == 0 {
		t.Fatalf("WAL segments: %v %v", names, err)
	}
	return filepath.Join(dir, walSubdir, names[len(names)-1])
}

// writeLog creates a log in dir holding keys prefix0..prefix(count-1) and stops the node.
func writeLog(t *testing.T, dir, prefix string, count, workers int, value string) {
	t.Helper()
	r := startNode(t, testConfig(t, dir, newKV()))
	waitLeaderReady(t, r.n)
	proposeAll(t, r.n, prefix, count, workers, value)
	if err := r.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestTornWALTailIsRepairedAndAcknowledgedEntriesSurvive(t *testing.T) {
	setSegmentSize(t, 64<<10)
	for _, tc := range []struct {
		name string
		tear func(t *testing.T, path string, last frame)
	}{
		{"record cut short", func(t *testing.T, path string, last frame) {
			if err := os.Truncate(path, last.end-3); err != nil {
				t.Fatal(err)
			}
		}},
		{"record tail never reached the disk", func(t *testing.T, path string, last frame) {
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt(make([]byte, last.end-last.off-8), last.off+8); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeLog(t, dir, "t", 30, 3, "v")
			path := lastWALFile(t, dir)
			frames := walFrames(t, path)
			tc.tear(t, path, frames[len(frames)-1])

			sm := newKV()
			cfg := testConfig(t, dir, sm)
			lg, logs := testLogger(t)
			cfg.Logger = lg
			n, err := New(cfg)
			if err != nil {
				t.Fatalf("New on a torn tail: %v", err)
			}
			if !strings.Contains(logs.String(), "level=WARN msg=\"raft log: repaired a torn write") {
				t.Fatalf("no warning about the repair in the log:\n%s", logs)
			}
			if _, err := os.Stat(path + ".broken"); err != nil {
				t.Fatalf("repair kept no backup of the torn segment: %v", err)
			}
			r := run(t, n)
			waitLeaderReady(t, n)
			requireKeys(t, sm, "t", 30)
			propose(t, n, "put", "after", "repair")
			if err := r.stop(t); err != nil {
				t.Fatal(err)
			}

			// The repaired log opens cleanly again.
			sm2 := newKV()
			r2 := startNode(t, testConfig(t, dir, sm2))
			waitLeaderReady(t, r2.n)
			requireKeys(t, sm2, "t", 30)
			if _, ok := sm2.get("after"); !ok {
				t.Fatal("entry written after the repair is missing")
			}
		})
	}
}

func TestCorruptWALRecordIsRefusedWithFileAndOffset(t *testing.T) {
	for _, tc := range []struct {
		name    string
		corrupt func(b []byte, f frame) // b is the record's frame
		wantErr error
	}{
		{"flipped byte in a record", func(b []byte, f frame) { b[8+f.size/2] ^= 0xff }, walpb.ErrCRCMismatch},
		// A damaged length field makes etcd's decoder see a record running past the end of the
		// file, which it would "repair" by truncating everything after it.
		{"length field claims more than the file", func(b []byte, f frame) {
			binary.LittleEndian.PutUint64(b, 0x00ffffffffffff00)
		}, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			// More data after the damage than one unsynced batch could hold (the torn-write window).
			writeLog(t, dir, "c", 800, 32, strings.Repeat("v", 4096))
			path := lastWALFile(t, dir)
			var victim frame
			for _, f := range walFrames(t, path) {
				if f.size > 4096 { // an early entry record
					victim = f
					break
				}
			}
			orig, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			damaged := append([]byte(nil), orig...)
			tc.corrupt(damaged[victim.off:victim.end], victim)
			if err := os.WriteFile(path, damaged, 0o600); err != nil {
				t.Fatal(err)
			}

			_, err = New(testConfig(t, dir, newKV()))
			var ce *CorruptionError
			if !errors.As(err, &ce) {
				t.Fatalf("New on a corrupt WAL = %v, want a *CorruptionError", err)
			}
			if ce.File != path || ce.Offset != victim.off {
				t.Fatalf("CorruptionError names %s at %d, want %s at %d", ce.File, ce.Offset, path, victim.off)
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error %v does not wrap %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), fmt.Sprint(victim.off)) {
				t.Fatalf("message %q does not tell the file and offset", err)
			}
			// Refusing must not have "repaired" anything.
			after, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(after) != string(damaged) {
				t.Fatal("New modified the corrupt segment")
			}
			if _, err := os.Stat(path + ".broken"); !os.IsNotExist(err) {
				t.Fatalf("New ran a repair on a corrupt log: %v", err)
			}
		})
	}
}

// TestDiskFullFailsProposalsAndKeepsAcknowledgedEntries fills a small tmpfs under the node.
func TestDiskFullFailsProposalsAndKeepsAcknowledgedEntries(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=2m"); err != nil {
		t.Fatalf("mount tmpfs (running as root): %v", err)
	}
	// Lazy: the failed WAL may still hold descriptors (its Close cannot flush a full disk).
	t.Cleanup(func() { _ = syscall.Unmount(mnt, syscall.MNT_DETACH) })
	setSegmentSize(t, 256<<10)

	dir := filepath.Join(mnt, "node")
	sm := newKV()
	r := startNode(t, testConfig(t, dir, sm))
	waitLeaderReady(t, r.n)
	value := strings.Repeat("d", 4096)
	acked := 0
	var err error
	for ; acked < 5000; acked++ {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err = r.n.Propose(ctx, cmd("put", fmt.Sprintf("d%d", acked), value))
		cancel()
		if err != nil {
			break
		}
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("after %d proposals on a full disk, Propose = %v, want an error wrapping ENOSPC", acked, err)
	}
	var se *StorageError
	if !errors.As(err, &se) || se.Dir != dir {
		t.Fatalf("Propose error %v is not a *StorageError for %s", err, dir)
	}
	t.Logf("disk full after %d acknowledged proposals: %v", acked, err)
	if !errors.Is(r.n.Err(), syscall.ENOSPC) {
		t.Fatalf("Err() = %v", r.n.Err())
	}
	// Later proposals fail at once; applied state stays readable.
	if err := r.n.Propose(context.Background(), cmd("put", "late", "x")); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Propose on a failed node = %v", err)
	}
	requireKeys(t, sm, "d", acked)
	if r.n.AppliedIndex() < uint64(acked) {
		t.Fatalf("AppliedIndex %d < %d acknowledged", r.n.AppliedIndex(), acked)
	}
	if l, _ := r.n.Leadership(); l.IsLeader || l.Ready {
		t.Fatalf("failed node still claims leadership: %+v", l)
	}
	if err := r.stop(t); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Run returned %v, want the storage failure", err)
	}

	// The operator frees space (here: moves the directory to a roomy disk) and restarts.
	roomy := filepath.Join(t.TempDir(), "node")
	copyDir(t, dir, roomy)
	sm2 := newKV()
	r2 := startNode(t, testConfig(t, roomy, sm2))
	waitLeaderReady(t, r2.n)
	requireKeys(t, sm2, "d", acked)
	propose(t, r2.n, "put", "after", "restart")
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o600)
	})
	if err != nil {
		t.Fatalf("copy %s: %v", from, err)
	}
}

func TestDamagedNewestSnapshotFallsBackToTheOlderOne(t *testing.T) {
	setSegmentSize(t, 16<<10)
	dir := t.TempDir()
	cfg := testConfig(t, dir, newKV())
	cfg.SnapshotInterval, cfg.LogEntriesForSlowFollowers = 50, 10
	r := startNode(t, cfg)
	waitLeaderReady(t, r.n)
	proposeAll(t, r.n, "f", 400, 8, strings.Repeat("x", 256))
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	snaps, err := snapFiles(filepath.Join(dir, snapSubdir))
	if err != nil || len(snaps) != keepSnapshots {
		t.Fatalf("snapshot files %v %v", snaps, err)
	}
	newest := filepath.Join(dir, snapSubdir, snaps[len(snaps)-1].name)
	b, err := os.ReadFile(newest)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(newest, b, 0o600); err != nil {
		t.Fatal(err)
	}

	sm := newKV()
	cfg.StateMachine = sm
	n, err := New(cfg)
	if err != nil {
		t.Fatalf("New with a damaged newest snapshot: %v", err)
	}
	if older := snaps[0].index; n.AppliedIndex() != older {
		t.Fatalf("restored at %d, want the older snapshot %d", n.AppliedIndex(), older)
	}
	run(t, n)
	waitLeaderReady(t, n)
	requireKeys(t, sm, "f", 400)
}
