// Package daemon runs a containerd of our own: swarmd's "managed containerd"
// (DESIGN.md §4) and the containerd every containerd test starts.
//
// swarmd needs a containerd. It first asks whether one answers at
// --containerd-addr (Probe). If none does (Probe's error wraps
// ErrNotRunning) and a containerd binary is on PATH, it starts its own with
// Start: a child process whose root, state and sockets are the ones given
// (under swarmd's state dir), and stops it with Stop on exit.
//
//	err := daemon.Probe(ctx, addr)
//	switch {
//	case err == nil:
//		// use the containerd at addr
//	case errors.Is(err, daemon.ErrNotRunning):
//		d, err := daemon.Start(ctx, daemon.Config{Address: addr, Root: ..., State: ...})
//		// ... watch d.Done() (an unexpected exit is fatal: d.Err() says why),
//		// and d.Stop(ctx) on shutdown
//	default:
//		// something else answers at addr: refuse to start
//	}
//
// Start writes a version 2 config.toml into the state dir that gives the
// daemon its own root, state, gRPC address and ttrpc address (Address +
// ".ttrpc"), turns off the debug and metrics listeners and disables the
// plugins swarmd never uses (CRI, the aufs/btrfs/zfs/devmapper snapshotters,
// tracing), then runs `containerd --config FILE` and returns
// once the daemon answers a Version call.
//
// Containers outlive the daemon: each task's shim (containerd-shim-runc-v2)
// is a process of its own, in its own process group, so stopping containerd
// (Stop, or a crash) leaves running containers running, and a containerd
// started again with the same root, state and address finds them again.
// That is how a restarted swarmd adopts its running tasks. The daemon itself
// is started in its own process group too, so a ^C in swarmd's terminal
// reaches swarmd only, which then stops containerd in its own order.
//
// If swarmd dies without calling Stop, its containerd keeps running; the
// next swarmd finds it answering at the same address (Probe returns nil) and
// uses it.
package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
)

// DefaultAddress is containerd's usual gRPC socket, swarmd's default
// --containerd-addr.
const DefaultAddress = "/run/containerd/containerd.sock"

// MaxSocketPath is the longest path a unix socket can have on Linux
// (sun_path is 108 bytes with its terminating NUL).
const MaxSocketPath = 107

// TTRPCSuffix is appended to the gRPC address to make the ttrpc address
// (containerd's convention; shims connect to it to publish events).
const TTRPCSuffix = ".ttrpc"

const (
	defaultStartTimeout = 10 * time.Second
	defaultStopTimeout  = 10 * time.Second
	defaultProbeTimeout = 3 * time.Second
	outputTail          = 8 << 10
)

// ErrNotRunning is wrapped by Probe's error when nothing listens at the
// address (no socket there, or a stale socket nobody accepts on): a
// containerd may be started there.
var ErrNotRunning = errors.New("no containerd is running")

// ErrBinaryNotFound is wrapped by Start's error when the containerd binary
// cannot be found.
var ErrBinaryNotFound = errors.New("containerd binary not found")

// Config says where and how to run a containerd.
type Config struct {
	// Address is the gRPC socket path (required, absolute). The ttrpc
	// socket is Address + ".ttrpc"; both must fit in MaxSocketPath bytes.
	Address string
	// Root is containerd's persistent dir (content, snapshots, metadata);
	// State its runtime dir (bundles, sockets). Both are created (0711)
	// if missing. Both required.
	Root  string
	State string
	// Binary is the containerd executable: a path, or a name looked up on
	// PATH. Default "containerd".
	Binary string
	// LogLevel is containerd's log level (trace, debug, info, warn, error).
	// Default "info".
	LogLevel string
	// LogPath, if set, is a file the daemon's output (its log) is appended
	// to. Output, if set, also receives it. Without either the output is
	// discarded, except its last few KiB, which Start's and Err's errors
	// quote.
	LogPath string
	Output  io.Writer
	// StartTimeout bounds how long Start waits for the daemon to answer
	// (default 10s; the context's deadline, if sooner, wins).
	StartTimeout time.Duration
	// StopTimeout is how long Stop waits after SIGTERM before it sends
	// SIGKILL (default 10s).
	StopTimeout time.Duration
	// DisabledPlugins are plugin IDs to disable on top of the default
	// list (DefaultDisabledPlugins).
	DisabledPlugins []string
}

// DefaultDisabledPlugins are the plugins a managed containerd never loads:
// swarmd talks to containerd's own API only, through the overlayfs (or
// native) snapshotter and the v2 runc runtime.
var DefaultDisabledPlugins = []string{
	"io.containerd.grpc.v1.cri",
	"io.containerd.snapshotter.v1.aufs",
	"io.containerd.snapshotter.v1.btrfs",
	"io.containerd.snapshotter.v1.zfs",
	"io.containerd.snapshotter.v1.devmapper",
	"io.containerd.tracing.processor.v1.otlp",
	"io.containerd.internal.v1.tracing",
}

// Daemon is a running containerd started by Start.
type Daemon struct {
	cfg        Config
	configPath string
	cmd        *exec.Cmd
	out        *tailWriter
	logFile    *os.File

	done chan struct{}
	mu   sync.Mutex
	// waitErr is cmd.Wait's result, set before done is closed.
	waitErr  error
	stopping bool
}

// Probe says whether a containerd answers at address (a unix socket path):
// nil if it answers a Version call in time; an error wrapping
// ErrNotRunning if there is no socket there or nobody accepts on it (a
// stale socket); another error if something is there that does not answer
// as containerd does (not a socket, a different server, a hung daemon).
// Without a deadline on ctx, Probe gives up after 3s.
func Probe(ctx context.Context, address string) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultProbeTimeout)
		defer cancel()
	}
	fi, err := os.Stat(address)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("containerd at %s: no socket there: %w", address, ErrNotRunning)
	}
	if err != nil {
		return fmt.Errorf("containerd at %s: %w", address, err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("containerd at %s: not a unix socket (%s); give --containerd-addr the path of containerd's socket", address, fi.Mode().Type())
	}
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "unix", address)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("containerd at %s: stale socket, connection refused: %w", address, ErrNotRunning)
		}
		return fmt.Errorf("containerd at %s: %w", address, err)
	}
	conn.Close()
	if _, err := version(ctx, address); err != nil {
		return fmt.Errorf("containerd at %s: something listens there but does not answer containerd's Version call: %w", address, err)
	}
	return nil
}

// version asks the containerd at address for its version.
func version(ctx context.Context, address string) (string, error) {
	client, err := containerd.New(address)
	if err != nil {
		return "", err
	}
	defer client.Close()
	v, err := client.Version(ctx)
	if err != nil {
		return "", err
	}
	return v.Version, nil
}

// Start runs a containerd as cfg says and returns when it answers a Version
// call. It fails if the containerd binary is missing (ErrBinaryNotFound),
// if the socket paths are too long, if a containerd already answers at
// cfg.Address, or if the daemon exits or does not answer in time (the error
// then quotes the end of its output). A failed Start leaves no process
// behind.
func Start(ctx context.Context, cfg Config) (*Daemon, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	bin, err := exec.LookPath(cfg.Binary)
	if err != nil {
		return nil, fmt.Errorf("start containerd: %w: %q: %v; install containerd (make deps, or apt-get install containerd runc)", ErrBinaryNotFound, cfg.Binary, err)
	}
	switch err := Probe(ctx, cfg.Address); {
	case err == nil:
		return nil, fmt.Errorf("start containerd: a containerd already answers at %s; use it, or stop it first", cfg.Address)
	case !errors.Is(err, ErrNotRunning):
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	for _, dir := range []string{cfg.Root, cfg.State, filepath.Dir(cfg.Address)} {
		if err := os.MkdirAll(dir, 0o711); err != nil {
			return nil, fmt.Errorf("start containerd: %w", err)
		}
	}
	configPath := filepath.Join(cfg.State, "containerd.toml")
	if err := os.WriteFile(configPath, []byte(cfg.toml()), 0o600); err != nil {
		return nil, fmt.Errorf("start containerd: write config: %w", err)
	}

	d := &Daemon{cfg: cfg, configPath: configPath, out: &tailWriter{max: outputTail}, done: make(chan struct{})}
	writers := []io.Writer{d.out}
	if cfg.LogPath != "" {
		f, err := os.OpenFile(cfg.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return nil, fmt.Errorf("start containerd: open log file: %w", err)
		}
		d.logFile = f
		writers = append(writers, f)
	}
	if cfg.Output != nil {
		writers = append(writers, cfg.Output)
	}
	out := io.MultiWriter(writers...)
	d.cmd = exec.Command(bin, "--config", configPath, "--log-level", cfg.LogLevel)
	d.cmd.Stdout = out
	d.cmd.Stderr = out
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Should anything the daemon starts keep its output pipe open, Wait
	// still returns soon after the daemon exits.
	d.cmd.WaitDelay = 2 * time.Second
	if err := d.cmd.Start(); err != nil {
		d.closeLog()
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	go d.wait()

	if err := d.waitReady(ctx); err != nil {
		d.kill()
		return nil, err
	}
	return d, nil
}

func (cfg *Config) fill() error {
	if cfg.Address == "" || cfg.Root == "" || cfg.State == "" {
		return errors.New("start containerd: Address, Root and State are required")
	}
	for _, p := range []*string{&cfg.Address, &cfg.Root, &cfg.State} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return fmt.Errorf("start containerd: %w", err)
		}
		*p = abs
	}
	if n := len(cfg.Address) + len(TTRPCSuffix); n > MaxSocketPath {
		return fmt.Errorf("start containerd: socket path %s%s is %d bytes, longer than the %d a unix socket allows; choose a shorter --containerd-addr (or state dir)", cfg.Address, TTRPCSuffix, n, MaxSocketPath)
	}
	if cfg.Binary == "" {
		cfg.Binary = "containerd"
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "info"
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = defaultStartTimeout
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = defaultStopTimeout
	}
	return nil
}

// toml renders containerd's config file (version 2).
func (cfg *Config) toml() string {
	q := strconv.Quote
	disabled := make([]string, 0, len(DefaultDisabledPlugins)+len(cfg.DisabledPlugins))
	for _, p := range append(append([]string(nil), DefaultDisabledPlugins...), cfg.DisabledPlugins...) {
		disabled = append(disabled, q(p))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by swarmd (agent/exec/containerd/daemon); rewritten at every start.\n")
	fmt.Fprintf(&b, "version = 2\nroot = %s\nstate = %s\n", q(cfg.Root), q(cfg.State))
	fmt.Fprintf(&b, "disabled_plugins = [%s]\n\n", strings.Join(disabled, ", "))
	fmt.Fprintf(&b, "[grpc]\n  address = %s\n\n", q(cfg.Address))
	fmt.Fprintf(&b, "[ttrpc]\n  address = %s\n\n", q(cfg.Address+TTRPCSuffix))
	fmt.Fprintf(&b, "[debug]\n  address = \"\"\n\n[metrics]\n  address = \"\"\n\n")
	fmt.Fprintf(&b, "[plugins]\n  [plugins.\"io.containerd.internal.v1.opt\"]\n    path = %s\n", q(filepath.Join(cfg.Root, "opt")))
	return b.String()
}

// waitReady polls the daemon until it answers, exits, or time runs out.
func (d *Daemon) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.StartTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		last = Probe(pctx, d.cfg.Address)
		pcancel()
		if last == nil {
			return nil
		}
		select {
		case <-d.done:
			return fmt.Errorf("start containerd: it exited before answering (%v); its output ends with:\n%s", d.waitErr, d.out.String())
		case <-ctx.Done():
			return fmt.Errorf("start containerd: no answer at %s within %v (%v); its output ends with:\n%s", d.cfg.Address, d.cfg.StartTimeout, last, d.out.String())
		case <-tick.C:
		}
	}
}

func (d *Daemon) wait() {
	err := d.cmd.Wait()
	d.mu.Lock()
	d.waitErr = err
	d.mu.Unlock()
	d.closeLog()
	close(d.done)
}

func (d *Daemon) closeLog() {
	if d.logFile != nil {
		d.logFile.Close()
	}
}

// kill ends the daemon at once (a failed Start) and waits for it.
func (d *Daemon) kill() {
	d.mu.Lock()
	d.stopping = true
	d.mu.Unlock()
	_ = d.cmd.Process.Kill()
	<-d.done
}

// Stop stops the daemon: SIGTERM, then SIGKILL if it has not exited after
// Config.StopTimeout or when ctx is done. It returns once the process has
// exited; the error says if it had to be killed. Running containers are
// left running (their shims are separate processes). Stop on a daemon that
// has already exited returns nil.
func (d *Daemon) Stop(ctx context.Context) error {
	d.mu.Lock()
	d.stopping = true
	d.mu.Unlock()
	select {
	case <-d.done:
		return nil
	default:
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop containerd (pid %d): %w", d.PID(), err)
	}
	timer := time.NewTimer(d.cfg.StopTimeout)
	defer timer.Stop()
	select {
	case <-d.done:
		return nil
	case <-timer.C:
	case <-ctx.Done():
	}
	_ = d.cmd.Process.Kill()
	<-d.done
	return fmt.Errorf("stop containerd (pid %d): it did not exit on SIGTERM, killed it", d.PID())
}

// PID is the daemon's process ID.
func (d *Daemon) PID() int { return d.cmd.Process.Pid }

// Address is the daemon's gRPC socket path.
func (d *Daemon) Address() string { return d.cfg.Address }

// TTRPCAddress is the daemon's ttrpc socket path.
func (d *Daemon) TTRPCAddress() string { return d.cfg.Address + TTRPCSuffix }

// Root is the daemon's root dir.
func (d *Daemon) Root() string { return d.cfg.Root }

// State is the daemon's state dir.
func (d *Daemon) State() string { return d.cfg.State }

// ConfigPath is the config file Start wrote.
func (d *Daemon) ConfigPath() string { return d.configPath }

// Done is closed when the daemon process has exited, for any reason.
func (d *Daemon) Done() <-chan struct{} { return d.done }

// Err says why the daemon exited when it was not asked to: nil while it
// runs and after Stop; after an unexpected exit (a crash, a kill by
// someone else, even a clean exit nobody asked for) an error with the exit
// status and the end of its output.
func (d *Daemon) Err() error {
	select {
	case <-d.done:
	default:
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping {
		return nil
	}
	status := "exit status 0"
	if d.waitErr != nil {
		status = d.waitErr.Error()
	}
	return fmt.Errorf("containerd (pid %d) exited unexpectedly (%s); its output ends with:\n%s", d.cmd.Process.Pid, status, d.out.String())
}

// Version asks the daemon for its version string.
func (d *Daemon) Version(ctx context.Context) (string, error) {
	return version(ctx, d.cfg.Address)
}

// tailWriter keeps the last max bytes written to it.
type tailWriter struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (w *tailWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	if over := len(w.buf) - w.max; over > 0 {
		w.buf = append(w.buf[:0], w.buf[over:]...)
	}
	return len(p), nil
}

func (w *tailWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := bytes.TrimSpace(w.buf)
	if len(s) == 0 {
		return "(nothing)"
	}
	return string(s)
}
