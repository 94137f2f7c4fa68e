package raft

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

const (
	walSubdir  = "wal"
	snapSubdir = "snap"
	// While a plaintext log is being encrypted (see migrate), the encrypted copy is built in
	// walMigrateSubdir and the plaintext log is moved to walPlainSubdir before being removed.
	walMigrateSubdir  = "wal.migrate"
	walPlainSubdir    = "wal.plain"
	snapMigrateSubdir = "snap.migrate"
	// keepSnapshots snapshot files are kept, and the WAL reaches back to the oldest of them, so a
	// damaged newest snapshot file still leaves a consistent older snapshot + log to start from.
	keepSnapshots = 2
)

// StorageError is a failure to write or sync the raft log or a snapshot. It is sticky: once it
// happened the node stops driving raft and every Propose returns it. It wraps the underlying
// error, so errors.Is(err, syscall.ENOSPC) tells a full disk.
type StorageError struct {
	Dir string // the node's data directory
	Op  string // what failed, e.g. "append to the raft log"
	Err error
}

func (e *StorageError) Error() string {
	hint := "check the disk and restart swarmd"
	if errors.Is(e.Err, syscall.ENOSPC) {
		hint = "free disk space and restart swarmd"
	}
	return fmt.Sprintf("raft: %s failed in %s: %v; %s", e.Op, e.Dir, e.Err, hint)
}

func (e *StorageError) Unwrap() error { return e.Err }

// CorruptionError reports a WAL that is damaged somewhere other than a torn write at its tail.
// New refuses to start on it: the log holds acknowledged entries that can no longer be read.
type CorruptionError struct {
	File   string // path of the damaged WAL segment
	Offset int64  // byte offset in File of the first record that cannot be read
	Err    error  // what the decoder found
}

func (e *CorruptionError) Error() string {
	return fmt.Sprintf("raft: WAL file %s is corrupt at byte offset %d: %v; "+
		"the node will not start on a damaged log: restore its data directory from a backup or replace this member",
		e.File, e.Offset, e.Err)
}

func (e *CorruptionError) Unwrap() error { return e.Err }

var errTrailingData = errors.New("data after the end of the log")

// storage is the durable half of the node: etcd's WAL (entries, HardState, snapshot markers) and
// snapshot files. It is used only by New and the Run loop.
type storage struct {
	dir, walDir, snapDir string
	lg                   *slog.Logger
	zlg                  *zap.Logger
	w                    *wal.WAL
	ss                   *snap.Snapshotter
	hs                   raftpb.HardState // last HardState written, to know which Saves fsync
	syncs                atomic.Uint64
	// seal encrypts what is written and decrypts what is read; nil for a plaintext log.
	seal *sealer
}

// recovered is what a restart found on disk.
type recovered struct {
	snapshot *raftpb.Snapshot // newest snapshot the WAL knows about, nil if none
	hs       raftpb.HardState
	ents     []raftpb.Entry // entries after snapshot
}

func (r recovered) empty() bool {
	return r.snapshot == nil && raft.IsEmptyHardState(r.hs) && len(r.ents) == 0
}

// walMeta is the metadata of a member's WAL: it names the member, and says whether the log is
// encrypted (then every entry and snapshot in it is sealed, and a plaintext one is refused).
func walMeta(id uint64, encrypted bool) []byte {
	if encrypted {
		return []byte(fmt.Sprintf("flotilla raft member %x, encrypted", id))
	}
	return []byte(fmt.Sprintf("flotilla raft member %x", id))
}

// openStorage creates the log in dir, or opens it: verify the WAL (repairing a torn tail, refusing
// corruption), load the newest snapshot the WAL knows about, and read the entries after it.
// tornWindow bounds how many bytes a torn write at the tail may span (one unsynced batch).
// With a data key the log is encrypted; a plaintext log written without one is encrypted on the
// spot (see migrate).
func openStorage(dir string, id uint64, tornWindow int64, dek *DataKey, lg *slog.Logger) (*storage, recovered, error) {
	s := &storage{
		dir:     dir,
		walDir:  filepath.Join(dir, walSubdir),
		snapDir: filepath.Join(dir, snapSubdir),
		lg:      lg,
		zlg:     zapToSlog(lg),
	}
	reopen := func() (*storage, recovered, error) { return openStorage(dir, id, tornWindow, dek, lg) }
	if dek != nil {
		var err error
		if s.seal, err = newSealer(dek); err != nil {
			return nil, recovered{}, err
		}
		// Sealing adds recordOverhead bytes to every entry of a batch.
		tornWindow = 2*tornWindow + 2*maxBatchProposals*recordOverhead
	}
	for _, d := range []string{dir, s.snapDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, recovered{}, &StorageError{Dir: dir, Op: "create the data directory", Err: err}
		}
	}
	s.ss = snap.New(s.zlg, s.snapDir)
	if err := s.finishMigration(); err != nil {
		return nil, recovered{}, err
	}

	if !wal.Exist(s.walDir) {
		w, err := wal.Create(s.zlg, s.walDir, walMeta(id, s.seal != nil))
		if err != nil {
			return nil, recovered{}, &StorageError{Dir: dir, Op: "create the raft log", Err: err}
		}
		s.w = w
		return s, recovered{}, nil
	}

	if err := s.verifyWAL(tornWindow); err != nil {
		return nil, recovered{}, err
	}
	walSnaps, err := wal.ValidSnapshotEntries(s.zlg, s.walDir)
	if err != nil {
		return nil, recovered{}, fmt.Errorf("raft: read snapshot records from the WAL in %s: %w", s.walDir, err)
	}
	// Snapshot files are written before their WAL record, so a newer file the WAL does not know
	// about is an orphan of a crash and is ignored.
	var rec recovered
	var walsnap walpb.Snapshot
	sn, err := s.ss.LoadNewestAvailable(walSnaps)
	switch {
	case err == nil:
		rec.snapshot = sn
		walsnap = walpb.Snapshot{Index: sn.Metadata.Index, Term: sn.Metadata.Term, ConfState: &sn.Metadata.ConfState}
	case !errors.Is(err, snap.ErrNoSnapshot):
		return nil, recovered{}, fmt.Errorf("raft: load snapshot from %s: %w", s.snapDir, err)
	}
	w, err := wal.Open(s.zlg, s.walDir, walsnap)
	if err != nil {
		return nil, recovered{}, fmt.Errorf("raft: open the WAL in %s at snapshot %d: %w", s.walDir, walsnap.Index, err)
	}
	md, hs, ents, err := w.ReadAll()
	if err != nil {
		_ = w.Close()
		return nil, recovered{}, fmt.Errorf("raft: read the WAL in %s: %w", s.walDir, err)
	}
	s.w, s.hs = w, hs
	rec.hs, rec.ents = hs, ents
	switch string(md) {
	case string(walMeta(id, true)):
		if s.seal == nil {
			_ = w.Close()
			return nil, recovered{}, fmt.Errorf("raft: the log in %s is encrypted, but no data key was given to open it", dir)
		}
		if err := s.openRecovered(&rec); err != nil {
			_ = w.Close()
			return nil, recovered{}, err
		}
		return s, rec, nil
	case string(walMeta(id, false)):
		// A log from before encryption at rest. Its newest snapshot file may already be sealed
		// by a migration that a crash interrupted.
		if sn := rec.snapshot; sn != nil && isSealed(sn.Data) {
			if s.seal == nil {
				_ = w.Close()
				return nil, recovered{}, fmt.Errorf("raft: the snapshot in %s is encrypted, but no data key was given to open it", s.snapDir)
			}
			if err := s.seal.openSnapshot(dir, sn); err != nil {
				_ = w.Close()
				return nil, recovered{}, err
			}
		}
		if s.seal == nil {
			return s, rec, nil
		}
		if dek.LogEncrypted {
			_ = w.Close()
			return nil, recovered{}, fmt.Errorf("raft: the log in %s is not encrypted, but this member's log was: "+
				"it was replaced (from a backup of an earlier version, or by someone else); restore the state dir (certificates/ and raft/ together) from one backup, or replace this member", dir)
		}
		if err := s.migrate(id, rec); err != nil {
			return nil, recovered{}, err
		}
		return reopen()
	default:
		_ = w.Close()
		return nil, recovered{}, fmt.Errorf("raft: the log in %s belongs to another member (%q), not raft ID %x", s.walDir, md, id)
	}
}

// openRecovered decrypts what an encrypted log held.
func (s *storage) openRecovered(rec *recovered) error {
	if rec.snapshot != nil {
		if err := s.seal.openSnapshot(s.dir, rec.snapshot); err != nil {
			return err
		}
	}
	return s.seal.openEntries(s.dir, rec.ents)
}

// migrate encrypts a plaintext log in place, so that nothing of it stays readable on disk: it
// seals the newest snapshot file (written beside it, then renamed over it), removes every other
// snapshot file, writes an encrypted copy of the WAL (snapshot record, entries, HardState) in
// wal.migrate, and swaps the two WAL directories. It closes s.w. A crash at any point leaves
// either the plaintext log or the encrypted one (finishMigration completes or discards the
// swap), and the plaintext WAL still opens with a sealed snapshot.
func (s *storage) migrate(id uint64, rec recovered) error {
	fail := func(op string, err error) error {
		return &StorageError{Dir: s.dir, Op: "encrypt the plaintext raft log: " + op, Err: err}
	}
	if err := s.w.Close(); err != nil {
		return fail("close the plaintext WAL", err)
	}
	s.lg.Info("raft log: encrypting the plaintext log of an earlier version", "dir", s.dir,
		"entries", len(rec.ents), "snapshot", rec.snapshot != nil)
	keep := ""
	if sn := rec.snapshot; sn != nil {
		tmpDir := filepath.Join(s.dir, snapMigrateSubdir)
		if err := os.RemoveAll(tmpDir); err != nil {
			return fail("clear "+tmpDir, err)
		}
		if err := os.Mkdir(tmpDir, 0o700); err != nil {
			return fail("create "+tmpDir, err)
		}
		if err := snap.New(s.zlg, tmpDir).SaveSnap(s.seal.sealSnapshot(*sn)); err != nil {
			return fail("write the sealed snapshot", err)
		}
		keep = fmt.Sprintf("%016x-%016x.snap", sn.Metadata.Term, sn.Metadata.Index)
		if err := os.Rename(filepath.Join(tmpDir, keep), filepath.Join(s.snapDir, keep)); err != nil {
			return fail("replace the plaintext snapshot", err)
		}
		if err := syncDir(s.snapDir); err != nil {
			return fail("sync "+s.snapDir, err)
		}
		_ = os.RemoveAll(tmpDir)
	}
	// Older snapshots, orphans and .broken copies are plaintext: none is needed any more.
	ents, err := os.ReadDir(s.snapDir)
	if err != nil {
		return fail("list "+s.snapDir, err)
	}
	for _, e := range ents {
		if e.Name() != keep {
			if err := os.RemoveAll(filepath.Join(s.snapDir, e.Name())); err != nil {
				return fail("remove a plaintext snapshot file", err)
			}
		}
	}

	tmpWAL := filepath.Join(s.dir, walMigrateSubdir)
	if err := os.RemoveAll(tmpWAL); err != nil {
		return fail("clear "+tmpWAL, err)
	}
	w, err := wal.Create(s.zlg, tmpWAL, walMeta(id, true))
	if err != nil {
		return fail("create the encrypted WAL", err)
	}
	err = func() error {
		if sn := rec.snapshot; sn != nil {
			if err := w.SaveSnapshot(walpb.Snapshot{Index: sn.Metadata.Index, Term: sn.Metadata.Term, ConfState: &sn.Metadata.ConfState}); err != nil {
				return err
			}
		}
		if err := w.Save(rec.hs, s.seal.sealEntries(rec.ents)); err != nil {
			return err
		}
		return w.Sync()
	}()
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fail("write the encrypted WAL", err)
	}
	plain := filepath.Join(s.dir, walPlainSubdir)
	_ = os.RemoveAll(plain)
	if err := os.Rename(s.walDir, plain); err != nil {
		return fail("move the plaintext WAL aside", err)
	}
	if err := os.Rename(tmpWAL, s.walDir); err != nil {
		return fail("put the encrypted WAL in place", err)
	}
	if err := syncDir(s.dir); err != nil {
		return fail("sync "+s.dir, err)
	}
	if err := os.RemoveAll(plain); err != nil {
		s.lg.Warn("raft log: remove the plaintext WAL after encrypting it", "dir", plain, "err", err)
	}
	s.lg.Info("raft log: the log is encrypted now", "dir", s.dir)
	return nil
}

// finishMigration completes or discards a migration (see migrate) that a crash interrupted.
func (s *storage) finishMigration() error {
	tmpWAL := filepath.Join(s.dir, walMigrateSubdir)
	plain := filepath.Join(s.dir, walPlainSubdir)
	_ = os.RemoveAll(filepath.Join(s.dir, snapMigrateSubdir))
	_ = os.RemoveAll(tmpWAL + ".tmp") // wal.Create's own staging directory
	if _, err := os.Stat(tmpWAL); err == nil {
		if wal.Exist(s.walDir) {
			// The encrypted copy was not finished: the plaintext log is still in place.
			if err := os.RemoveAll(tmpWAL); err != nil {
				return &StorageError{Dir: s.dir, Op: "remove an unfinished encrypted WAL", Err: err}
			}
		} else {
			// The plaintext WAL was moved aside after the encrypted copy was complete.
			_ = os.Remove(s.walDir) // an empty directory left by an earlier attempt
			if err := os.Rename(tmpWAL, s.walDir); err != nil {
				return &StorageError{Dir: s.dir, Op: "put the encrypted WAL in place", Err: err}
			}
			s.lg.Info("raft log: finished encrypting the log after an interruption", "dir", s.dir)
		}
	}
	if _, err := os.Stat(plain); err == nil && wal.Exist(s.walDir) {
		if err := os.RemoveAll(plain); err != nil {
			return &StorageError{Dir: s.dir, Op: "remove the plaintext WAL", Err: err}
		}
	}
	return nil
}

// syncDir makes renames in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return fileutil.Fsync(d)
}

// verifyWAL reads every WAL segment record by record before etcd opens them, because etcd
// repairs whatever its decoder calls a torn write by truncating, and a damaged length field in
// the middle of the log looks like one. A record that cannot be read is a torn tail only when it
// is in the newest segment, the decoder saw a short or partly-zero record, and no data follows it
// further than one unsynced write batch (tornWindow): nothing there was ever fsynced, so nothing
// acknowledged is dropped. Anything else is a *CorruptionError naming the file and offset.
func (s *storage) verifyWAL(tornWindow int64) error {
	names, err := walNames(s.walDir)
	if err != nil {
		return fmt.Errorf("raft: list the WAL in %s: %w", s.walDir, err)
	}
	if len(names) == 0 {
		return fmt.Errorf("raft: no WAL segment in %s", s.walDir)
	}
	// Fail early, before any repair, if another process has the log open.
	newest := filepath.Join(s.walDir, names[len(names)-1])
	l, err := fileutil.TryLockFile(newest, os.O_WRONLY, fileutil.PrivateFileMode)
	if err != nil {
		return fmt.Errorf("raft: the log in %s is in use by another process: %w", s.walDir, err)
	}
	_ = l.Close()

	var crc uint32
	for i, name := range names {
		path := filepath.Join(s.walDir, name)
		var torn *tornTail
		crc, torn, err = scanSegment(path, i == len(names)-1, i > 0, crc, tornWindow)
		if err != nil {
			return err
		}
		if torn == nil {
			continue
		}
		// A zeroed record header followed by unsynced bytes is cleaned by the WAL itself (it
		// zeroes everything after the last good record); a torn record needs wal.Repair, which
		// truncates the segment there and keeps a copy as <file>.broken.
		backup := ""
		if !torn.zeroHeader {
			if !wal.Repair(s.zlg, s.walDir) {
				return &CorruptionError{File: path, Offset: torn.offset, Err: fmt.Errorf("torn write could not be repaired: %w", torn.cause)}
			}
			backup = path + ".broken"
		}
		s.lg.Warn("raft log: repaired a torn write at the tail of the WAL; the dropped bytes were never fsynced, so no acknowledged entry is lost",
			"file", path, "offset", torn.offset, "dropped_bytes", torn.dataEnd-torn.offset, "backup", backup, "cause", torn.cause)
	}
	return nil
}

type tornTail struct {
	offset, dataEnd int64
	cause           error
	zeroHeader      bool // the record header is zero but bytes follow
}

// scanSegment decodes one segment on its own. chained says the first record must carry crc, the
// running CRC at the end of the previous segment.
func scanSegment(path string, last, chained bool, crc uint32, tornWindow int64) (uint32, *tornTail, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, fmt.Errorf("raft: open WAL segment: %w", err)
	}
	defer f.Close()
	dec := wal.NewDecoder(fileutil.NewFileReader(f))
	var rec walpb.Record
	for first := true; ; first = false {
		off := dec.LastOffset()
		err := dec.Decode(&rec)
		if err == nil {
			if rec.Type == wal.CrcType {
				if first && chained && rec.Crc != crc {
					return 0, nil, &CorruptionError{File: path, Offset: off,
						Err: fmt.Errorf("%w: segment does not continue the previous one", wal.ErrCRCMismatch)}
				}
				if c := dec.LastCRC(); c != 0 {
					if verr := rec.Validate(c); verr != nil {
						return 0, nil, &CorruptionError{File: path, Offset: off, Err: verr}
					}
				}
				dec.UpdateCRC(rec.Crc)
			}
			continue
		}
		end, rerr := lastNonZero(f, off, 2*tornWindow)
		if rerr != nil {
			return 0, nil, fmt.Errorf("raft: read WAL segment %s: %w", path, rerr)
		}
		eof := errors.Is(err, io.EOF)
		if eof {
			if end == off {
				return dec.LastCRC(), nil, nil // clean end of the segment
			}
			err = errTrailingData
		}
		if !last || end-off > tornWindow || !(eof || errors.Is(err, io.ErrUnexpectedEOF)) {
			return 0, nil, &CorruptionError{File: path, Offset: off, Err: err}
		}
		return dec.LastCRC(), &tornTail{offset: off, dataEnd: end, cause: err, zeroHeader: eof}, nil
	}
}

// lastNonZero returns the offset just past the last non-zero byte of f in [from, from+limit),
// or from if there is none.
func lastNonZero(f *os.File, from, limit int64) (int64, error) {
	end := from
	buf := make([]byte, 64<<10)
	for off := from; off < from+limit; {
		n, err := f.ReadAt(buf[:min(int64(len(buf)), from+limit-off)], off)
		for i := n - 1; i >= 0; i-- {
			if buf[i] != 0 {
				end = off + int64(i) + 1
				break
			}
		}
		off += int64(n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, err
		}
	}
	return end, nil
}

// walNames lists the WAL segments in dir in log order (their names sort that way).
func walNames(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		var seq, index uint64
		if _, err := fmt.Sscanf(e.Name(), "%016x-%016x.wal", &seq, &index); err == nil && strings.HasSuffix(e.Name(), ".wal") {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	return names, nil
}

// save writes a Ready's HardState and entries; the WAL fsyncs when raft requires it (new entries,
// term or vote), so one call is one fsync for a whole batch of proposals.
func (s *storage) save(hs raftpb.HardState, ents []raftpb.Entry) error {
	if raft.IsEmptyHardState(hs) && len(ents) == 0 {
		return nil
	}
	synced := len(ents) > 0 || raft.MustSync(hs, s.hs, 0)
	if s.seal != nil && len(ents) > 0 {
		ents = s.seal.sealEntries(ents)
	}
	if err := s.w.Save(hs, ents); err != nil {
		return &StorageError{Dir: s.dir, Op: "append to the raft log", Err: err}
	}
	if !raft.IsEmptyHardState(hs) {
		s.hs = hs
	}
	if synced {
		s.syncs.Add(1)
	}
	return nil
}

// saveSnap makes snapshot sn durable. As in etcd, the snapshot file is written (and fsynced)
// before the WAL snapshot record: a crash in between leaves an orphan file that restart ignores,
// never a WAL record pointing at a missing file. The WAL record is fsynced, and with it the
// HardState written before it, whose commit index covers the snapshot.
func (s *storage) saveSnap(sn raftpb.Snapshot) error {
	disk := sn
	if s.seal != nil {
		disk = s.seal.sealSnapshot(sn)
	}
	if err := s.ss.SaveSnap(disk); err != nil {
		return &StorageError{Dir: s.dir, Op: "write a snapshot file", Err: err}
	}
	ws := walpb.Snapshot{Index: sn.Metadata.Index, Term: sn.Metadata.Term, ConfState: &sn.Metadata.ConfState}
	if err := s.w.SaveSnapshot(ws); err != nil {
		return &StorageError{Dir: s.dir, Op: "record a snapshot in the raft log", Err: err}
	}
	return nil
}

// release drops what no restart can need any more: snapshot files beyond the newest
// keepSnapshots, and WAL segments entirely before the oldest kept snapshot. Failures here only
// waste disk, so they are logged, not fatal.
func (s *storage) release() {
	snaps, err := snapFiles(s.snapDir)
	if err != nil {
		s.lg.Warn("raft log: list snapshot files", "err", err)
		return
	}
	if len(snaps) < keepSnapshots {
		return // the WAL still reaches back to "no snapshot", the fallback if the only file is damaged
	}
	for _, old := range snaps[:len(snaps)-keepSnapshots] {
		if err := os.Remove(filepath.Join(s.snapDir, old.name)); err != nil {
			s.lg.Warn("raft log: remove old snapshot file", "file", old.name, "err", err)
		}
	}
	oldest := snaps[len(snaps)-keepSnapshots].index
	if err := s.w.ReleaseLockTo(oldest); err != nil {
		s.lg.Warn("raft log: release old WAL segments", "err", err)
		return
	}
	// The WAL keeps a lock on every segment it may still need; a segment we can lock is free.
	names, err := walNames(s.walDir)
	if err != nil {
		s.lg.Warn("raft log: list WAL segments", "err", err)
		return
	}
	for _, name := range names[:max(len(names)-1, 0)] {
		path := filepath.Join(s.walDir, name)
		l, err := fileutil.TryLockFile(path, os.O_WRONLY, fileutil.PrivateFileMode)
		if err != nil {
			break // still in use, and so is every later segment
		}
		err = os.Remove(path)
		_ = l.Close()
		if err != nil {
			s.lg.Warn("raft log: remove old WAL segment", "file", path, "err", err)
			break
		}
		s.lg.Debug("raft log: removed old WAL segment", "file", path)
	}
}

type snapFile struct {
	name  string
	index uint64
}

// snapFiles lists snapshot files oldest first.
func snapFiles(dir string) ([]snapFile, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []snapFile
	for _, e := range ents {
		var term, index uint64
		if _, err := fmt.Sscanf(e.Name(), "%016x-%016x.snap", &term, &index); err == nil && strings.HasSuffix(e.Name(), ".snap") {
			out = append(out, snapFile{name: e.Name(), index: index})
		}
	}
	slices.SortFunc(out, func(a, b snapFile) int { return cmp.Compare(a.index, b.index) })
	return out, nil
}

// sync fsyncs the WAL (after an incoming snapshot, before older data is released).
func (s *storage) sync() error {
	if err := s.w.Sync(); err != nil {
		return &StorageError{Dir: s.dir, Op: "sync the raft log", Err: err}
	}
	return nil
}

func (s *storage) close() error { return s.w.Close() }
