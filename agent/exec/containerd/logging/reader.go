package logging

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// TailAll as ReadOptions.Tail reads the whole log.
const TailAll = -1

// PollInterval is how often a follower looks for new lines.
const PollInterval = 100 * time.Millisecond

// ReadOptions select what Read publishes.
type ReadOptions struct {
	// Tail is how many of the last records to publish before following:
	// TailAll (any negative value) for all of them, 0 for none.
	Tail int
	// Since, if not zero, leaves out records older than it.
	Since time.Time
	// Follow keeps Read publishing records as they are written, across
	// rotations, until ctx is done or the logger has finished (the task
	// was deleted; see Closed).
	Follow bool
}

// Read publishes the records of the log in dir, oldest first, to fn: the
// last opts.Tail of them (across rotated files), then, with opts.Follow,
// those written later. It stops at fn's first error and returns it. It
// skips lines it cannot parse (a torn last record). A missing dir is an
// error wrapping fs.ErrNotExist; a dir without a log yet is an empty log.
//
// A follower polls (PollInterval). After a rotation it reads the rotated
// files it has not read yet before the new current file, so it loses
// records only if it falls behind by more than MaxFiles-1 rotations (the
// files deleted meanwhile).
func Read(ctx context.Context, dir string, opts ReadOptions, fn func(Entry) error) error {
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("read logs: %w", err)
	}
	keep := func(e Entry) bool { return opts.Since.IsZero() || !e.Time.Before(opts.Since) }

	// The current file is opened first: following goes on from where
	// reading it stopped.
	cur, err := os.Open(fileName(dir, 0))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read logs: %w", err)
	}
	f := &follower{dir: dir, cur: cur, fn: fn, keep: keep}
	defer f.close()
	var curData []byte
	var curInfo os.FileInfo
	if cur != nil {
		if curInfo, err = cur.Stat(); err != nil {
			return fmt.Errorf("read logs: %w", err)
		}
		if curData, err = io.ReadAll(cur); err != nil {
			return fmt.Errorf("read logs: %w", err)
		}
	}
	// What follows starts after the last complete line read.
	pending := curData[lastLineEnd(curData):]
	curData = curData[:lastLineEnd(curData)]

	if opts.Tail != 0 {
		entries, err := tail(dir, curData, curInfo, opts.Tail, keep)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := fn(e); err != nil {
				return err
			}
		}
	}
	if !opts.Follow {
		return nil
	}
	f.pending = append([]byte(nil), pending...)
	return f.run(ctx)
}

// lastLineEnd is the length of b up to and including its last newline.
func lastLineEnd(b []byte) int {
	return bytes.LastIndexByte(b, '\n') + 1
}

// tail returns the last n (all if n < 0) records passing keep: of the
// current file's complete lines cur (curInfo: nil if there is none), then
// of the rotated files, newest first. Rotated files newer than cur (it was
// rotated while Read started) are left to the follower.
func tail(dir string, cur []byte, curInfo os.FileInfo, n int, keep func(Entry) bool) ([]Entry, error) {
	var rotated []*os.File // older than cur, newest first
	defer func() {
		for _, f := range rotated {
			f.Close()
		}
	}()
	for i := 1; ; i++ {
		f, err := os.Open(fileName(dir, i))
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read logs: %w", err)
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("read logs: %w", err)
		}
		if curInfo != nil && os.SameFile(fi, curInfo) {
			for _, newer := range rotated {
				newer.Close()
			}
			rotated = rotated[:0]
			f.Close()
			continue
		}
		rotated = append(rotated, f)
	}

	var rev []Entry // newest first
	take := func(data []byte) bool {
		data = data[:lastLineEnd(data)]
		for end := len(data); end > 0; {
			start := bytes.LastIndexByte(data[:end-1], '\n') + 1
			if e, ok := parseRecord(data[start : end-1]); ok && keep(e) {
				rev = append(rev, e)
				if n >= 0 && len(rev) == n {
					return true
				}
			}
			end = start
		}
		return false
	}
	if !take(cur) {
		for _, f := range rotated {
			data, err := io.ReadAll(f)
			if err != nil {
				return nil, fmt.Errorf("read logs: %w", err)
			}
			if take(data) {
				break
			}
		}
	}
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	return rev, nil
}

// follower publishes records as they are appended to the current file.
type follower struct {
	dir     string
	cur     *os.File // nil until the current file exists
	pending []byte   // an incomplete last line
	fn      func(Entry) error
	keep    func(Entry) bool
	buf     [64 << 10]byte
}

func (f *follower) close() {
	if f.cur != nil {
		f.cur.Close()
	}
}

func (f *follower) run(ctx context.Context) error {
	ticker := time.NewTicker(PollInterval)
	defer ticker.Stop()
	closedSeen := false
	for {
		if err := f.readToEOF(); err != nil {
			return err
		}
		switched, err := f.switchIfRotated()
		if err != nil {
			return err
		}
		if switched {
			continue
		}
		if closedSeen {
			// Everything written before the marker has been read.
			return nil
		}
		if Closed(f.dir) {
			// One more round: read what came before the marker, in
			// this file or a new one.
			closedSeen = true
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
		}
	}
}

// readToEOF publishes the complete lines appended to the current file.
func (f *follower) readToEOF() error {
	if f.cur == nil {
		return nil
	}
	for {
		n, err := f.cur.Read(f.buf[:])
		if n > 0 {
			f.pending = append(f.pending, f.buf[:n]...)
			end := lastLineEnd(f.pending)
			for start := 0; start < end; {
				nl := start + bytes.IndexByte(f.pending[start:end], '\n')
				if e, ok := parseRecord(f.pending[start:nl]); ok && f.keep(e) {
					if err := f.fn(e); err != nil {
						return err
					}
				}
				start = nl + 1
			}
			f.pending = append(f.pending[:0], f.pending[end:]...)
		}
		if errors.Is(err, io.EOF) || (err == nil && n == 0) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("follow logs: %w", err)
		}
	}
}

// readMissed publishes the rotated files newer than the one whose info is
// old (all of them if old is gone), oldest first.
func (f *follower) readMissed(old os.FileInfo) error {
	var newer []*os.File
	defer func() {
		for _, nf := range newer {
			nf.Close()
		}
	}()
	for i := 1; ; i++ {
		nf, err := os.Open(fileName(f.dir, i))
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if err != nil {
			return fmt.Errorf("follow logs: %w", err)
		}
		fi, err := nf.Stat()
		if err != nil || os.SameFile(fi, old) {
			nf.Close()
			break
		}
		newer = append(newer, nf)
	}
	for i := len(newer) - 1; i >= 0; i-- {
		// A torn line at the end of the previous file stays torn.
		f.pending = f.pending[:0]
		f.cur = newer[i]
		err := f.readToEOF()
		f.cur = nil
		if err != nil {
			return err
		}
	}
	f.pending = f.pending[:0]
	return nil
}

// switchIfRotated moves to the new current file when the one being read
// has been rotated away (after it has been read to its end), or opens the
// current file once it exists.
func (f *follower) switchIfRotated() (bool, error) {
	fi, err := os.Stat(fileName(f.dir, 0))
	if errors.Is(err, os.ErrNotExist) {
		// Between a rotation's rename and the new file, or no log yet.
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("follow logs: %w", err)
	}
	if f.cur != nil {
		ofi, err := f.cur.Stat()
		if err != nil {
			return false, fmt.Errorf("follow logs: %w", err)
		}
		if os.SameFile(fi, ofi) {
			return false, nil
		}
		// Rotated: the file read so far is now .k, or gone; what was
		// appended to it since the last read is still to read.
		if err := f.readToEOF(); err != nil {
			return false, err
		}
		// The files rotated since then, .k-1 ... .1, are
		// complete: read them, oldest first, before the new current one.
		if err := f.readMissed(ofi); err != nil {
			return false, err
		}
		f.cur.Close()
		f.cur = nil
	}
	nf, err := os.Open(fileName(f.dir, 0))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("follow logs: %w", err)
	}
	f.cur = nf
	return true, nil
}
