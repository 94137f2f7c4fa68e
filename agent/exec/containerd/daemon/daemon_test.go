package daemon

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
)

// requireContainerd fails (as root, where CI runs) or skips (otherwise)
// when the containerd binary is missing.
func requireContainerd(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("containerd"); err != nil {
		if os.Geteuid() == 0 {
			t.Fatalf("containerd is not installed: run make deps (%v)", err)
		}
		t.Skipf("containerd is not installed and not root: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("containerd needs root")
	}
}

func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "ctrd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func testConfig(dir string) Config {
	return Config{
		Address:  filepath.Join(dir, "c.sock"),
		Root:     filepath.Join(dir, "root"),
		State:    filepath.Join(dir, "state"),
		LogLevel: "warn",
		LogPath:  filepath.Join(dir, "containerd.log"),
	}
}

func TestStartAnswersAndStopEndsTheProcess(t *testing.T) {
	requireContainerd(t)
	ctx := context.Background()
	dir := shortDir(t)
	cfg := testConfig(dir)
	t0 := time.Now()
	d, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("containerd answered %v after start", time.Since(t0))
	t.Cleanup(func() { _ = syscall.Kill(d.PID(), syscall.SIGKILL) })

	if err := Probe(ctx, d.Address()); err != nil {
		t.Fatalf("Probe of a running daemon: %v", err)
	}
	v, err := d.Version(ctx)
	if err != nil || v == "" {
		t.Fatalf("Version = %q, %v", v, err)
	}
	conf, err := os.ReadFile(d.ConfigPath())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"version = 2", `"io.containerd.grpc.v1.cri"`, cfg.Root, cfg.Address + ".ttrpc"} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("config lacks %q:\n%s", want, conf)
		}
	}
	// The plugins swarmd needs are loaded, CRI is not.
	client, err := containerd.New(d.Address())
	if err != nil {
		t.Fatal(err)
	}
	plugins, err := client.IntrospectionService().Plugins(ctx)
	client.Close()
	if err != nil {
		t.Fatal(err)
	}
	loaded := map[string]bool{}
	for _, p := range plugins.Plugins {
		if p.InitErr == nil {
			loaded[p.Type+"."+p.ID] = true
		}
	}
	for _, want := range []string{"io.containerd.grpc.v1.tasks", "io.containerd.grpc.v1.images", "io.containerd.snapshotter.v1.overlayfs", "io.containerd.runtime.v2.task", "io.containerd.grpc.v1.leases"} {
		if !loaded[want] {
			t.Errorf("plugin %s not loaded", want)
		}
	}
	if loaded["io.containerd.grpc.v1.cri"] {
		t.Error("CRI plugin loaded")
	}
	if _, err := os.Stat(d.TTRPCAddress()); err != nil {
		t.Errorf("ttrpc socket: %v", err)
	}
	if _, err := Start(ctx, cfg); err == nil || !strings.Contains(err.Error(), "already answers") {
		t.Errorf("second Start at the same address: %v, want already answers", err)
	}

	if err := d.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
	if err := d.Err(); err != nil {
		t.Errorf("Err after Stop = %v, want nil", err)
	}
	if err := syscall.Kill(d.PID(), 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("process %d still exists after Stop (kill 0: %v)", d.PID(), err)
	}
	if err := Probe(ctx, d.Address()); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Probe after Stop = %v, want ErrNotRunning", err)
	}

	// Same root, state and address again: it starts over the old state.
	d2, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("restart on the same dirs: %v", err)
	}
	if err := d2.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestUnexpectedExitIsReported(t *testing.T) {
	requireContainerd(t)
	ctx := context.Background()
	d, err := Start(ctx, testConfig(shortDir(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Stop(ctx) })
	if err := d.Err(); err != nil {
		t.Fatalf("Err while running = %v", err)
	}
	if err := syscall.Kill(d.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed after the daemon was killed")
	}
	if err := d.Err(); err == nil || !strings.Contains(err.Error(), "exited unexpectedly") {
		t.Errorf("Err = %v, want exited unexpectedly", err)
	}
}

func TestProbe(t *testing.T) {
	ctx := context.Background()
	dir := shortDir(t)

	if err := Probe(ctx, filepath.Join(dir, "none.sock")); !errors.Is(err, ErrNotRunning) || !strings.Contains(err.Error(), "no socket") {
		t.Errorf("no socket: %v", err)
	}

	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if err := Probe(ctx, stale); !errors.Is(err, ErrNotRunning) || !strings.Contains(err.Error(), "refused") {
		t.Errorf("stale socket: %v", err)
	}

	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Probe(ctx, file); err == nil || errors.Is(err, ErrNotRunning) || !strings.Contains(err.Error(), "not a unix socket") {
		t.Errorf("plain file: %v", err)
	}

	// A listener that accepts and says nothing is not containerd.
	mute := filepath.Join(dir, "mute.sock")
	ml, err := net.Listen("unix", mute)
	if err != nil {
		t.Fatal(err)
	}
	defer ml.Close()
	go func() {
		for {
			c, err := ml.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := Probe(pctx, mute); err == nil || errors.Is(err, ErrNotRunning) || !strings.Contains(err.Error(), "does not answer") {
		t.Errorf("mute server: %v", err)
	}
}

func TestStartFailuresLeaveNothingBehind(t *testing.T) {
	ctx := context.Background()
	dir := shortDir(t)

	cfg := testConfig(dir)
	cfg.Binary = "no-such-containerd"
	if _, err := Start(ctx, cfg); !errors.Is(err, ErrBinaryNotFound) || !strings.Contains(err.Error(), "make deps") {
		t.Errorf("missing binary: %v", err)
	}

	cfg = testConfig(dir)
	cfg.Address = "/tmp/" + strings.Repeat("x", 100) + ".sock"
	if _, err := Start(ctx, cfg); err == nil || !strings.Contains(err.Error(), "longer than the 107") {
		t.Errorf("long socket path: %v", err)
	}

	// A "containerd" that prints something and exits: the error quotes it.
	script := filepath.Join(dir, "fake-containerd")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho 'fatal: cannot start, bad config' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg = testConfig(dir)
	cfg.Binary = script
	if _, err := Start(ctx, cfg); err == nil || !strings.Contains(err.Error(), "bad config") || !strings.Contains(err.Error(), "exited before answering") {
		t.Errorf("daemon that exits: %v", err)
	}

	// One that never answers: Start gives up and kills it.
	pidFile := filepath.Join(dir, "pid")
	hang := filepath.Join(dir, "hang-containerd")
	if err := os.WriteFile(hang, []byte("#!/bin/sh\necho $$ > "+pidFile+"\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg = testConfig(dir)
	cfg.Binary = hang
	cfg.StartTimeout = 300 * time.Millisecond
	if _, err := Start(ctx, cfg); err == nil || !strings.Contains(err.Error(), "no answer") {
		t.Errorf("daemon that hangs: %v", err)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	for _, c := range strings.TrimSpace(string(b)) {
		pid = pid*10 + int(c-'0')
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		t.Errorf("hung daemon %d left running after a failed Start", pid)
	}
}
