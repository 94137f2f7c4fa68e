package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flotilla/flotilla/api"
)

// binDir holds swarmd and swarmctl built once for the whole package.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "flotilla-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, cmd := range []string{"swarmd", "swarmctl"} {
		build := exec.Command("go", "build", "-o", filepath.Join(dir, cmd), "github.com/flotilla/flotilla/"+cmd)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n", cmd, err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// swarmd is one swarmd process started by a test. The test stops it by PID,
// also on failure.
type swarmd struct {
	t        testing.TB
	stateDir string
	cmd      *exec.Cmd
	out      *syncBuffer
	exited   chan struct{}
	exitErr  error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (d *swarmd) socket() string { return filepath.Join(d.stateDir, "swarmd.sock") }

// startSwarmd starts swarmd on stateDir; it does not wait for it to be ready.
func startSwarmd(t testing.TB, stateDir string, extra ...string) *swarmd {
	t.Helper()
	args := append([]string{"--state-dir", stateDir, "--listen-remote-api", "127.0.0.1:0",
		"--executor", "sim", "--hostname", "node-a"}, extra...)
	d := &swarmd{t: t, stateDir: stateDir, out: &syncBuffer{}, exited: make(chan struct{})}
	d.cmd = exec.Command(filepath.Join(binDir, "swarmd"), args...)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.exitErr = d.cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		d.kill()
		if t.Failed() {
			t.Logf("swarmd output:\n%s", d.out.String())
		}
	})
	return d
}

func (d *swarmd) kill() {
	select {
	case <-d.exited:
		return
	default:
	}
	_ = syscall.Kill(d.cmd.Process.Pid, syscall.SIGKILL)
	<-d.exited
}

// waitReady polls the control socket until the node answers, or fails.
func (d *swarmd) waitReady() {
	d.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-d.exited:
			d.t.Fatalf("swarmd exited before it was ready: %v\n%s", d.exitErr, d.out.String())
		default:
		}
		if _, _, err := d.ctl("node", "ls", "-q"); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.t.Fatalf("swarmd not ready after 30s:\n%s", d.out.String())
}

// stop sends SIGTERM and waits for a clean exit.
func (d *swarmd) stop() {
	d.t.Helper()
	_ = syscall.Kill(d.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		d.t.Fatalf("swarmd did not stop within 30s of SIGTERM")
	}
	if d.exitErr != nil {
		d.t.Fatalf("swarmd exited with %v after SIGTERM:\n%s", d.exitErr, d.out.String())
	}
}

// ctl runs swarmctl against this node.
func (d *swarmd) ctl(args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command(filepath.Join(binDir, "swarmctl"), append([]string{"--socket", d.socket()}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// mustCtl runs swarmctl and fails the test on error.
func (d *swarmd) mustCtl(args ...string) string {
	d.t.Helper()
	out, errOut, err := d.ctl(args...)
	if err != nil {
		d.t.Fatalf("swarmctl %s: %v: %s", strings.Join(args, " "), err, errOut)
	}
	return out
}

// client dials the control socket with the Go API.
func (d *swarmd) client() api.ControlClient {
	d.t.Helper()
	conn, err := grpc.NewClient("unix://"+d.socket(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(api.MaxControlMessageBytes)))
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { conn.Close() })
	return api.NewControlClient(conn)
}

func withTimeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}
