package logging

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"
)

// Writer appends records to a log dir and rotates its files. It is safe
// for concurrent use.
type Writer struct {
	dir  string
	opts Options

	mu   sync.Mutex
	f    *os.File
	size int64
	buf  []byte
}

// NewWriter opens (creating it if needed) the current file of dir for
// appending and removes the closed marker. If the file does not end with
// a newline (a torn record of a crashed writer), it ends that line first.
func NewWriter(dir string, opts Options) (*Writer, error) {
	opts = opts.withDefaults()
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("log dir: %w", err)
	}
	if err := os.Remove(filepath.Join(dir, closedFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("log dir: %w", err)
	}
	w := &Writer{dir: dir, opts: opts}
	if err := w.open(); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *Writer) open() error {
	f, err := os.OpenFile(fileName(w.dir, 0), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("open log file: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("open log file: %w", err)
	}
	w.f, w.size = f, fi.Size()
	if w.size > 0 {
		last := make([]byte, 1)
		if rf, err := os.Open(fileName(w.dir, 0)); err == nil {
			_, err = rf.ReadAt(last, w.size-1)
			rf.Close()
			if err == nil && last[0] != '\n' {
				n, _ := w.f.Write([]byte{'\n'})
				w.size += int64(n)
			}
		}
	}
	return nil
}

// record is a record's JSON form.
type record struct {
	T time.Time `json:"t"`
	S string    `json:"s"`
	L *string   `json:"l,omitempty"`
	B []byte    `json:"b,omitempty"`
	P bool      `json:"p,omitempty"`
}

// appendRecord appends e's JSON line (with its newline) to b.
func appendRecord(b []byte, e Entry) []byte {
	r := record{T: e.Time.UTC(), S: e.Stream.String(), P: e.Partial}
	if utf8.Valid(e.Line) {
		s := string(e.Line)
		r.L = &s
	} else {
		r.B = e.Line
	}
	j, _ := json.Marshal(r) // cannot fail: plain types
	b = append(b, j...)
	return append(b, '\n')
}

// parseRecord parses one line of a log file (without its newline).
func parseRecord(line []byte) (Entry, bool) {
	var r struct {
		T time.Time `json:"t"`
		S string    `json:"s"`
		L *string   `json:"l"`
		B []byte    `json:"b"`
		P bool      `json:"p"`
	}
	if err := json.Unmarshal(line, &r); err != nil || r.T.IsZero() {
		return Entry{}, false
	}
	e := Entry{Time: r.T, Partial: r.P}
	switch r.S {
	case "stdout":
		e.Stream = Stdout
	case "stderr":
		e.Stream = Stderr
	default:
		return Entry{}, false
	}
	switch {
	case r.L != nil:
		e.Line = []byte(*r.L)
	case r.B != nil:
		e.Line = r.B
	default:
		e.Line = []byte{}
	}
	return e, true
}

// Write appends one record, rotating first if it would take the current
// file past MaxFileBytes.
func (w *Writer) Write(e Entry) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return errors.New("log writer is closed")
	}
	w.buf = appendRecord(w.buf[:0], e)
	if w.size > 0 && w.size+int64(len(w.buf)) > w.opts.MaxFileBytes {
		if err := w.rotate(); err != nil {
			return err
		}
	}
	n, err := w.f.Write(w.buf)
	w.size += int64(n)
	if err != nil {
		return fmt.Errorf("write log: %w", err)
	}
	return nil
}

// rotate shifts the files by one (dropping the oldest) and starts a new
// current file.
func (w *Writer) rotate() error {
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("rotate log: %w", err)
	}
	w.f = nil
	last := w.opts.MaxFiles - 1
	if err := os.Remove(fileName(w.dir, last)); err != nil && !errors.Is(err, os.ErrNotExist) && last > 0 {
		return fmt.Errorf("rotate log: %w", err)
	}
	for i := last - 1; i >= 0; i-- {
		if err := os.Rename(fileName(w.dir, i), fileName(w.dir, i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("rotate log: %w", err)
		}
	}
	if last == 0 {
		// One file only: start it again.
		if err := os.Remove(fileName(w.dir, 0)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("rotate log: %w", err)
		}
	}
	return w.open()
}

// Close closes the current file and marks the log closed: readers that
// follow it return once they have read it all.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	if cerr := os.WriteFile(filepath.Join(w.dir, closedFile), nil, 0o640); err == nil {
		err = cerr
	}
	return err
}

// Copy reads r line by line until EOF and writes each line as records of
// stream: lines longer than MaxLineBytes become several records, all but
// the last partial; a last line without a newline is written as it is.
// now gives each record's time. It returns the first write error after
// reading r to its end (so a writer never blocks on a full pipe), or a
// read error.
func Copy(w *Writer, stream Stream, r io.Reader, now func() time.Time) error {
	br := bufio.NewReaderSize(r, MaxLineBytes)
	var werr error
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			partial := false
			switch {
			case err == bufio.ErrBufferFull:
				partial = true
			case line[len(line)-1] == '\n':
				line = line[:len(line)-1]
			}
			if werr == nil {
				werr = w.Write(Entry{Time: now(), Stream: stream, Line: line, Partial: partial})
			}
		}
		switch {
		case err == nil || err == bufio.ErrBufferFull:
		case errors.Is(err, io.EOF):
			return werr
		default:
			return errors.Join(werr, err)
		}
	}
}

// Main is the logger (see the package doc). args are os.Args[1:]; the
// container's stdout is fd 3, its stderr fd 4, fd 5 the readiness pipe.
// It returns the process's exit code.
func Main(args []string) int {
	for fd := 3; fd <= 5; fd++ {
		var st syscall.Stat_t
		if err := syscall.Fstat(fd, &st); err != nil {
			fmt.Fprintf(os.Stderr, "flotilla task logger: fd %d is not open (%v): containerd's shim starts this process with the container's stdout, stderr and a readiness pipe on fds 3, 4 and 5\n", fd, err)
			return 2
		}
	}
	stdout := os.NewFile(3, "container-stdout")
	stderr := os.NewFile(4, "container-stderr")
	ready := os.NewFile(5, "ready")
	// The shim sends SIGTERM when the task is deleted, after closing its
	// ends of the pipes: go on draining them to their end, for a while.
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)

	dir, opts, err := parseArgs(args)
	var w *Writer
	if err == nil {
		w, err = NewWriter(dir, opts)
	}
	ready.Close()
	if err != nil {
		// Keep the container going: read and drop its output.
		if dir != "" {
			_ = os.WriteFile(filepath.Join(dir, errorFile), []byte(err.Error()+"\n"), 0o640)
		}
		drain(stdout, stderr)
		return 1
	}

	errs := make(chan error, 2)
	for _, s := range []struct {
		f      *os.File
		stream Stream
	}{{stdout, Stdout}, {stderr, Stderr}} {
		go func() {
			err := Copy(w, s.stream, s.f, time.Now)
			s.f.Close()
			errs <- err
		}()
	}
	var copyErrs []error
	var deadline <-chan time.Time
	for pending := 2; pending > 0; {
		select {
		case err := <-errs:
			copyErrs = append(copyErrs, err)
			pending--
		case <-term:
			if deadline == nil {
				deadline = time.After(drainAfterTerm)
			}
		case <-deadline:
			copyErrs = append(copyErrs, fmt.Errorf("output still open %v after SIGTERM; stopped logging", drainAfterTerm))
			pending = 0
		}
	}
	err = errors.Join(copyErrs...)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.WriteFile(filepath.Join(dir, errorFile), []byte(err.Error()+"\n"), 0o640)
		return 1
	}
	return 0
}

// drainAfterTerm is how long the logger goes on reading after SIGTERM (the
// shim kills it after 12s).
const drainAfterTerm = 5 * time.Second

func drain(files ...*os.File) {
	var wg sync.WaitGroup
	for _, f := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = io.Copy(io.Discard, f)
			f.Close()
		}()
	}
	wg.Wait()
}
