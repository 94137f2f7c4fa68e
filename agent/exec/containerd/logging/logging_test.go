package logging

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	// The test binary plays the logger for TestLoggerProcess and the
	// containerd test, as swarmd does in production.
	if Invoked(os.Args[1:]) {
		os.Exit(Main(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func at(sec int) time.Time { return time.Date(2024, 1, 1, 0, 0, sec, 0, time.UTC) }

// readAll reads the log in dir with opts and no follow.
func readAll(t *testing.T, dir string, opts ReadOptions) []Entry {
	t.Helper()
	var out []Entry
	if err := Read(context.Background(), dir, opts, func(e Entry) error {
		out = append(out, e)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func lines(es []Entry) string {
	var b strings.Builder
	for _, e := range es {
		fmt.Fprintf(&b, "%s:%s", e.Stream, e.Line)
		if e.Partial {
			b.WriteString("+")
		}
		b.WriteString("|")
	}
	return b.String()
}

func TestRecordsRoundTripExactly(t *testing.T) {
	dir := t.TempDir()
	w, err := NewWriter(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{
		{Time: at(1), Stream: Stdout, Line: []byte("hello \"world\"\t\\")},
		{Time: at(2), Stream: Stderr, Line: []byte{0xff, 0xfe, 'x', 0}},
		{Time: at(3).Add(123456789), Stream: Stdout, Line: []byte{}},
		{Time: at(4), Stream: Stdout, Line: []byte("piece"), Partial: true},
	}
	for _, e := range want {
		if err := w.Write(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if !Closed(dir) {
		t.Error("Closed = false after Close")
	}
	got := readAll(t, dir, ReadOptions{Tail: TailAll})
	if len(got) != len(want) {
		t.Fatalf("read %d entries, want %d", len(got), len(want))
	}
	for i := range want {
		if !got[i].Time.Equal(want[i].Time) || got[i].Stream != want[i].Stream || !bytes.Equal(got[i].Line, want[i].Line) || got[i].Partial != want[i].Partial {
			t.Errorf("entry %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, currentFile))
	if !bytes.HasPrefix(b, []byte(`{"t":"2024-01-01T00:00:01Z","s":"stdout","l":"hello \"world\"\t\\"}`+"\n")) {
		t.Errorf("file format changed:\n%s", b)
	}
}

func TestCopySplitsLongLines(t *testing.T) {
	dir := t.TempDir()
	w, err := NewWriter(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("a", MaxLineBytes*2+10)
	in := "short\n" + long + "\nno newline at the end"
	if err := Copy(w, Stdout, strings.NewReader(in), func() time.Time { return at(1) }); err != nil {
		t.Fatal(err)
	}
	w.Close()
	got := readAll(t, dir, ReadOptions{Tail: TailAll})
	if len(got) != 5 {
		t.Fatalf("%d entries: %s", len(got), lines(got))
	}
	if !got[1].Partial || !got[2].Partial || got[3].Partial || got[0].Partial {
		t.Errorf("partial flags wrong: %v %v %v %v", got[0].Partial, got[1].Partial, got[2].Partial, got[3].Partial)
	}
	if joined := string(got[1].Line) + string(got[2].Line) + string(got[3].Line); joined != long {
		t.Errorf("long line reassembled to %d bytes, want %d", len(joined), len(long))
	}
	if string(got[4].Line) != "no newline at the end" {
		t.Errorf("last = %q", got[4].Line)
	}
}

func TestRotationKeepsTheLogBounded(t *testing.T) {
	dir := t.TempDir()
	opts := Options{MaxFileBytes: 1000, MaxFiles: 3}
	w, err := NewWriter(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	for i := 0; i < n; i++ {
		if err := w.Write(Entry{Time: at(i), Stream: Stdout, Line: fmt.Appendf(nil, "line %03d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	entries, _ := os.ReadDir(dir)
	var total int64
	names := map[string]bool{}
	for _, e := range entries {
		fi, _ := e.Info()
		names[e.Name()] = true
		if strings.HasPrefix(e.Name(), currentFile) {
			total += fi.Size()
			if fi.Size() > opts.MaxFileBytes {
				t.Errorf("%s is %d bytes, over %d", e.Name(), fi.Size(), opts.MaxFileBytes)
			}
		}
	}
	if !names[currentFile] || !names[currentFile+".1"] || !names[currentFile+".2"] || names[currentFile+".3"] {
		t.Errorf("files: %v", names)
	}

	all := readAll(t, dir, ReadOptions{Tail: TailAll})
	if len(all) == 0 || string(all[len(all)-1].Line) != "line 199" {
		t.Fatalf("all: %s", lines(all))
	}
	for i := 1; i < len(all); i++ {
		if !all[i].Time.After(all[i-1].Time) {
			t.Fatalf("out of order at %d: %s", i, lines(all))
		}
	}
	// Tail across files: more than the current file holds.
	last := readAll(t, dir, ReadOptions{Tail: 30})
	if len(last) != 30 || string(last[0].Line) != "line 170" || string(last[29].Line) != "line 199" {
		t.Errorf("tail 30: %s", lines(last))
	}
	if got := readAll(t, dir, ReadOptions{Tail: 0}); len(got) != 0 {
		t.Errorf("tail 0: %s", lines(got))
	}
	if got := readAll(t, dir, ReadOptions{Tail: 1000}); len(got) != len(all) {
		t.Errorf("tail 1000 = %d entries, want all %d", len(got), len(all))
	}
	since := readAll(t, dir, ReadOptions{Tail: TailAll, Since: at(195)})
	if lines(since) != "stdout:line 195|stdout:line 196|stdout:line 197|stdout:line 198|stdout:line 199|" {
		t.Errorf("since: %s", lines(since))
	}
	if got := readAll(t, dir, ReadOptions{Tail: 2, Since: at(195)}); lines(got) != "stdout:line 198|stdout:line 199|" {
		t.Errorf("tail 2 since: %s", lines(got))
	}

	one := t.TempDir()
	w, _ = NewWriter(one, Options{MaxFileBytes: 200, MaxFiles: 1})
	for i := 0; i < 20; i++ {
		w.Write(Entry{Time: at(i), Stream: Stdout, Line: []byte("x")})
	}
	w.Close()
	if _, err := os.Stat(filepath.Join(one, currentFile+".1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("MaxFiles 1 kept a rotated file: %v", err)
	}
	if got := readAll(t, one, ReadOptions{Tail: TailAll}); len(got) == 0 || len(got) >= 20 {
		t.Errorf("MaxFiles 1: %d entries", len(got))
	}
}

func TestTornLastLineIsSkipped(t *testing.T) {
	dir := t.TempDir()
	w, _ := NewWriter(dir, Options{})
	w.Write(Entry{Time: at(1), Stream: Stdout, Line: []byte("one")})
	w.Close()
	// A crash mid-write: half a record, no newline.
	f, _ := os.OpenFile(filepath.Join(dir, currentFile), os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"t":"2024-01-01T00:00:02Z","s":"stdo`)
	f.Close()
	if got := readAll(t, dir, ReadOptions{Tail: TailAll}); lines(got) != "stdout:one|" {
		t.Errorf("with a torn line: %s", lines(got))
	}
	// A new logger ends the torn line before writing.
	w, _ = NewWriter(dir, Options{})
	if Closed(dir) {
		t.Error("closed marker kept by a new writer")
	}
	w.Write(Entry{Time: at(3), Stream: Stderr, Line: []byte("three")})
	w.Close()
	if got := readAll(t, dir, ReadOptions{Tail: TailAll}); lines(got) != "stdout:one|stderr:three|" {
		t.Errorf("after a new writer: %s", lines(got))
	}
	if got := readAll(t, dir, ReadOptions{Tail: 1}); lines(got) != "stderr:three|" {
		t.Errorf("tail 1: %s", lines(got))
	}
}

func TestReadMissingDirIsNotExist(t *testing.T) {
	err := Read(context.Background(), filepath.Join(t.TempDir(), "none"), ReadOptions{}, func(Entry) error { return nil })
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("err = %v, want ErrNotExist", err)
	}
}

// TestFollowAcrossRotationsUntilClosed follows a log written concurrently
// with small files, and checks it sees every record once, in order, and
// returns when the writer closes.
func TestFollowAcrossRotationsUntilClosed(t *testing.T) {
	dir := t.TempDir()
	// Small files: several rotations between two polls; the follower
	// reads the rotated files it missed.
	w, err := NewWriter(dir, Options{MaxFileBytes: 2000, MaxFiles: 10})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		w.Write(Entry{Time: time.Now(), Stream: Stdout, Line: fmt.Appendf(nil, "%d", i)})
	}
	var got []string
	done := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		close(started)
		done <- Read(context.Background(), dir, ReadOptions{Tail: 2, Follow: true}, func(e Entry) error {
			got = append(got, string(e.Line))
			return nil
		})
	}()
	<-started
	const n = 300
	for i := 5; i < n; i++ {
		w.Write(Entry{Time: time.Now(), Stream: Stdout, Line: fmt.Appendf(nil, "%d", i)})
		if i%20 == 0 {
			time.Sleep(5 * time.Millisecond) // pace the writer, not a synchronisation
		}
	}
	w.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("follow did not return after the log was closed")
	}
	// The follower may have started after a few of the later writes: it
	// then tails the last two of what was there. Either way, from its
	// first record on, every record once, in order, up to the last.
	if len(got) < 2 || got[len(got)-1] != fmt.Sprint(n-1) {
		t.Fatalf("followed %d records, last %v", len(got), got[len(got)-1:])
	}
	var first int
	fmt.Sscan(got[0], &first)
	for i, s := range got {
		if s != fmt.Sprint(first+i) {
			t.Fatalf("record %d = %s, want %d (gap or duplicate)", i, s, first+i)
		}
	}
}

func TestFollowStopsOnContextAndWaitsForTheFile(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan Entry, 10)
	done := make(chan error, 1)
	go func() {
		done <- Read(ctx, dir, ReadOptions{Tail: TailAll, Follow: true}, func(e Entry) error {
			got <- e
			return nil
		})
	}()
	// The logger starts after the reader.
	w, _ := NewWriter(dir, Options{})
	defer w.Close()
	w.Write(Entry{Time: at(1), Stream: Stdout, Line: []byte("late")})
	select {
	case e := <-got:
		if string(e.Line) != "late" {
			t.Errorf("got %q", e.Line)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("follower did not pick up a file created after it started")
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("follow did not stop on cancel")
	}

	// fn's error stops Read.
	stop := errors.New("enough")
	if err := Read(context.Background(), dir, ReadOptions{Tail: TailAll, Follow: true}, func(Entry) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("err = %v, want fn's", err)
	}
}

func TestInvokedAndArgs(t *testing.T) {
	args := ShimArgs("/var/lib/swarmd/logs/t1", Options{MaxFileBytes: 5, MaxFiles: 2})
	var flat []string
	for k, v := range args {
		flat = append(flat, k, v)
	}
	// Any order, as the shim passes them.
	rand.Shuffle(len(flat)/2, func(i, j int) {
		flat[2*i], flat[2*j] = flat[2*j], flat[2*i]
		flat[2*i+1], flat[2*j+1] = flat[2*j+1], flat[2*i+1]
	})
	if !Invoked(flat) {
		t.Fatalf("Invoked(%v) = false", flat)
	}
	dir, opts, err := parseArgs(flat)
	if err != nil || dir != "/var/lib/swarmd/logs/t1" || opts.MaxFileBytes != 5 || opts.MaxFiles != 2 {
		t.Errorf("parseArgs = %q %+v %v", dir, opts, err)
	}
	for _, a := range [][]string{nil, {"--state-dir", "/x"}, {argMarker}, {"run", argMarker, "x"}} {
		if Invoked(a) {
			t.Errorf("Invoked(%q) = true", a)
		}
	}
	if _, _, err := parseArgs([]string{argMarker, "relative"}); err == nil {
		t.Error("relative dir accepted")
	}
}

// startLogger runs the test binary as the logger the way the runc shim
// does: container stdout on fd 3, stderr on fd 4, readiness pipe on fd 5,
// only CONTAINER_ID and CONTAINER_NAMESPACE in the environment, args in
// random order. It returns once the logger signalled readiness.
func startLogger(t *testing.T, dir string, opts Options) (cmd *exec.Cmd, stdout, stderr *os.File) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for k, v := range ShimArgs(dir, opts) {
		args = append(args, k, v)
	}
	outR, outW, _ := os.Pipe()
	errR, errW, _ := os.Pipe()
	readyR, readyW, _ := os.Pipe()
	cmd = exec.Command(self, args...)
	cmd.Env = []string{"CONTAINER_ID=c1", "CONTAINER_NAMESPACE=swarmd"}
	cmd.ExtraFiles = []*os.File{outR, errR, readyW}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	outR.Close()
	errR.Close()
	readyW.Close()
	// The shim blocks on the readiness pipe until the logger closes it.
	if _, err := readyR.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("readiness pipe: %v, want EOF", err)
	}
	readyR.Close()
	return cmd, outW, errW
}

func TestLoggerProcess(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "logs")
	cmd, stdout, stderr := startLogger(t, dir, Options{MaxFileBytes: 4000, MaxFiles: 3})

	var follow []string
	var mu sync.Mutex
	done := make(chan error, 1)
	go func() {
		done <- Read(context.Background(), dir, ReadOptions{Tail: TailAll, Follow: true}, func(e Entry) error {
			mu.Lock()
			follow = append(follow, e.Stream.String()+":"+string(e.Line))
			mu.Unlock()
			return nil
		})
	}()
	fmt.Fprintln(stdout, "hello")
	fmt.Fprintln(stderr, "oops")
	for i := 0; i < 100; i++ {
		fmt.Fprintf(stdout, "out %d\n", i)
	}
	// The shim closes its ends, then sends SIGTERM.
	stdout.Close()
	stderr.Close()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("logger: %v (logger-error: %s)", err, readFile(filepath.Join(dir, errorFile)))
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("follower did not return after the logger exited")
	}
	if !Closed(dir) {
		t.Error("no closed marker after the logger exited")
	}
	// The two streams are read concurrently: their records interleave in
	// any order, each stream's in its own order.
	got := readAll(t, dir, ReadOptions{Tail: TailAll})
	var lastOut string
	hasErr := false
	for _, e := range got {
		if e.Stream == Stdout {
			lastOut = string(e.Line)
		}
		hasErr = hasErr || (e.Stream == Stderr && string(e.Line) == "oops")
	}
	if lastOut != "out 99" || !hasErr {
		t.Fatalf("log: %s", lines(got))
	}
	if _, err := os.Stat(filepath.Join(dir, currentFile+".1")); err != nil {
		t.Errorf("no rotation: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, currentFile+".3")); !errors.Is(err, os.ErrNotExist) {
		t.Error("more files than MaxFiles")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(follow) != len(got) {
		t.Errorf("follower saw %d records, the files hold %d", len(follow), len(got))
	}
}

func TestLoggerThatCannotWriteStillDrains(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	// A dir under a regular file cannot be created.
	cmd, stdout, stderr := startLogger(t, filepath.Join(file, "logs"), Options{})
	// More than a pipe holds: the writer must not block.
	big := bytes.Repeat([]byte("x\n"), 1<<17)
	if _, err := stdout.Write(big); err != nil {
		t.Fatalf("write to a logger that cannot log: %v", err)
	}
	stdout.Close()
	stderr.Close()
	if err := cmd.Wait(); err == nil {
		t.Error("logger exited 0 although it could not write")
	}
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}
