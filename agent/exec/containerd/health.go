package containerd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"

	"github.com/flotilla/flotilla/agent/exec"
)

// Health checks (exec.ContainerHealth). The task's check is the service's
// (--health-cmd and friends) over the image's HEALTHCHECK (the image
// config's config.Healthcheck, as Docker writes it), merged as Docker
// merges them: a spec without a test takes the image's, each zero field
// the image's; ["NONE"] disables the check. It is resolved once per task
// and kept in the task directory (health.json), so a restarted agent checks
// the container as it was created even if the image's tag moved since.
//
// Each check is a process exec'd in the running container (containerd
// task.Exec) with the container's own process spec (user, environment,
// working directory, capabilities), the test's command line as arguments
// (CMD-SHELL: /bin/sh -c COMMAND), stdout and stderr to FIFOs read into a
// buffer that keeps their last exec.MaxHealthOutput bytes. A check still
// running when its timeout ends is killed (SIGKILL); the exec'd process is
// deleted after every check.

const (
	// healthFile is the resolved check of a task, in its directory.
	healthFile = "health.json"
	// probeCleanupTimeout bounds killing and deleting a check's process.
	probeCleanupTimeout = 10 * time.Second
)

var _ exec.ContainerHealth = (*Controller)(nil)

// imageHealthcheck is config.Healthcheck in a Docker image config (durations
// in nanoseconds).
type imageHealthcheck struct {
	Test          []string      `json:"Test,omitempty"`
	Interval      time.Duration `json:"Interval,omitempty"`
	Timeout       time.Duration `json:"Timeout,omitempty"`
	StartPeriod   time.Duration `json:"StartPeriod,omitempty"`
	StartInterval time.Duration `json:"StartInterval,omitempty"`
	Retries       int           `json:"Retries,omitempty"`
}

func (h *imageHealthcheck) config() *exec.HealthConfig {
	if h == nil {
		return nil
	}
	return &exec.HealthConfig{
		Test: h.Test, Interval: h.Interval, Timeout: h.Timeout,
		StartPeriod: h.StartPeriod, StartInterval: h.StartInterval, Retries: h.Retries,
	}
}

// parseImageHealthcheck reads config.Healthcheck from an image config blob;
// nil if it has none.
func parseImageHealthcheck(blob []byte) (*exec.HealthConfig, error) {
	var cfg struct {
		Config struct {
			Healthcheck *imageHealthcheck `json:"Healthcheck"`
		} `json:"config"`
	}
	if err := json.Unmarshal(blob, &cfg); err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	return cfg.Config.Healthcheck.config(), nil
}

// HealthCheck returns the task's health check: the service's over the
// image's; nil if neither has one or it is disabled.
func (c *Controller) HealthCheck(ctx context.Context) (*exec.HealthCheck, error) {
	cfg, err := c.healthConfig(ctx)
	if err != nil || !cfg.Enabled() {
		return nil, err
	}
	cmd, err := cfg.Command()
	if err != nil {
		return nil, err
	}
	return cfg.Check(func(ctx context.Context) (exec.ProbeResult, error) {
		return c.probe(ctx, cmd)
	}), nil
}

// healthConfig is the task's effective check, as resolved before (the
// task directory's health.json) or now.
func (c *Controller) healthConfig(ctx context.Context) (*exec.HealthConfig, error) {
	path := filepath.Join(c.e.taskDir(c.id()), healthFile)
	if b, err := os.ReadFile(path); err == nil {
		var cfg *exec.HealthConfig
		if err := json.Unmarshal(b, &cfg); err == nil {
			return cfg, nil
		}
		c.log.Warn("health check: the recorded configuration is unreadable; resolving it again", "path", path)
	}
	spec := exec.HealthConfigFromSpec(c.task.Spec.Container.Healthcheck)
	cfg := spec
	if spec == nil || len(spec.Test) == 0 || spec.Test[0] != "NONE" {
		img, err := c.imageHealthConfig(ctx)
		switch {
		case err == nil:
			cfg = spec.Merge(img)
		case spec.Enabled() && !exec.IsTemporary(err):
			// The service's check does not need the image's.
			c.log.Debug("health check: the image's cannot be read; the service's applies alone", "error", err)
		default:
			return nil, err
		}
	}
	if b, err := json.Marshal(cfg); err == nil {
		// Only into an existing task directory (Prepare made it).
		if err := os.WriteFile(path, b, 0o600); err != nil && !errors.Is(err, os.ErrNotExist) {
			c.log.Debug("health check: cannot record the configuration", "error", err)
		}
	}
	return cfg, nil
}

// imageHealthConfig reads the HEALTHCHECK of the task's image (nil if none).
func (c *Controller) imageHealthConfig(ctx context.Context) (*exec.HealthConfig, error) {
	img, err := c.e.localImage(ctx, c.ref)
	if err != nil {
		return nil, classify(err)
	}
	if img == nil {
		return nil, fmt.Errorf("image %s is no longer in namespace %s: its HEALTHCHECK cannot be read", c.ref.Name, c.e.cfg.Namespace)
	}
	desc, err := img.Config(ctx)
	if err != nil {
		return nil, classify(fmt.Errorf("image %s: config: %w", c.ref.Name, err))
	}
	blob, err := content.ReadBlob(ctx, c.e.client.ContentStore(), desc)
	if err != nil {
		return nil, classify(fmt.Errorf("image %s: read config: %w", c.ref.Name, err))
	}
	cfg, err := parseImageHealthcheck(blob)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", c.ref.Name, err)
	}
	return cfg, nil
}

// probe runs cmd once in the task's container and returns its exit code and
// the end of its output. When ctx ends it kills the process and returns
// ctx's error. The process is deleted in any case. A container or task that
// is gone (it exited: Wait reports that) or a containerd that does not
// answer is a temporary error: not counted.
func (c *Controller) probe(ctx context.Context, cmd []string) (exec.ProbeResult, error) {
	ctr, t, err := c.loadTask(ctx)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return exec.ProbeResult{}, exec.Temporary(fmt.Errorf("health check: the container does not run: %w", err))
		}
		return exec.ProbeResult{}, classify(err)
	}
	spec, err := ctr.Spec(ctx)
	if err != nil {
		return exec.ProbeResult{}, classify(fmt.Errorf("health check: container spec: %w", err))
	}
	if spec.Process == nil {
		return exec.ProbeResult{}, errors.New("health check: the container's spec has no process")
	}
	proc := *spec.Process // user, env, cwd, capabilities, rlimits...
	proc.Args = cmd
	proc.Terminal = false
	proc.ConsoleSize = nil

	id, err := execID()
	if err != nil {
		return exec.ProbeResult{}, err
	}
	out := &tailBuffer{max: exec.MaxHealthOutput}
	// The wait for the process outlives ctx (the check's timeout): the
	// process is killed, then waited for, then deleted.
	wctx, wcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer wcancel()
	p, err := t.Exec(ctx, id, &proc, cio.NewCreator(cio.WithStreams(nil, out, out), cio.WithFIFODir(c.e.fifoDir())))
	if err != nil {
		if errdefs.IsNotFound(err) || errdefs.IsFailedPrecondition(err) {
			return exec.ProbeResult{}, exec.Temporary(fmt.Errorf("health check: the container does not run: %w", err))
		}
		return exec.ProbeResult{}, classify(fmt.Errorf("health check: exec in the container: %w", err))
	}
	// From here on the process is deleted whatever happens.
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), probeCleanupTimeout)
		defer cancel()
		if _, err := p.Delete(dctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			c.log.Warn("health check: cannot delete the check's process", "exec.id", id, "error", err)
		}
	}()
	exited, err := p.Wait(wctx)
	if err != nil {
		return exec.ProbeResult{}, classify(fmt.Errorf("health check: wait: %w", err))
	}
	if err := p.Start(ctx); err != nil {
		// Docker counts a check that cannot start (no such command) as a
		// failure, with the runtime's message as its output.
		if ctx.Err() == nil && !exec.IsTemporary(classify(err)) {
			return exec.ProbeResult{ExitCode: -1, Output: fmt.Sprintf("health check could not start: %v", err)}, nil
		}
		return exec.ProbeResult{}, classify(fmt.Errorf("health check: start: %w", err))
	}
	select {
	case st := <-exited:
		code, _, err := st.Result()
		if err != nil {
			return exec.ProbeResult{}, classify(fmt.Errorf("health check: %w", err))
		}
		// The output is complete once the process's IO is done (Delete
		// waits for it); read it after.
		if err := c.closeProbeIO(ctx, p); err != nil {
			c.log.Debug("health check: output", "error", err)
		}
		return exec.ProbeResult{ExitCode: int(code), Output: out.String()}, nil
	case <-ctx.Done():
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), probeCleanupTimeout)
		defer cancel()
		if err := p.Kill(kctx, syscall.SIGKILL); err != nil && !errdefs.IsNotFound(err) {
			c.log.Warn("health check: cannot kill the check's process", "exec.id", id, "error", err)
		}
		select {
		case <-exited:
		case <-kctx.Done():
		}
		return exec.ProbeResult{}, ctx.Err()
	}
}

// closeProbeIO waits (bounded) for the output of an exited check to be
// copied.
func (c *Controller) closeProbeIO(ctx context.Context, p interface{ IO() cio.IO }) error {
	pio := p.IO()
	if pio == nil {
		return nil
	}
	done := make(chan struct{})
	go func() { pio.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-time.After(probeCleanupTimeout):
		// A child of the check keeps its stdout open: take what came.
		pio.Cancel()
		return errors.New("the check's output is still open (a process it started holds it): kept what came")
	case <-ctx.Done():
		pio.Cancel()
		return ctx.Err()
	}
}

// fifoDir is where the FIFOs of health check processes are made.
func (e *Executor) fifoDir() string { return filepath.Join(e.cfg.StateDir, "fifo") }

// execID is a new exec process ID.
func execID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("health check: exec ID: %w", err)
	}
	return "health-" + hex.EncodeToString(b[:]), nil
}

// tailBuffer keeps the last max bytes written to it; safe for concurrent
// writers (stdout and stderr).
type tailBuffer struct {
	max int
	mu  sync.Mutex
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(p)
	if len(p) >= b.max {
		b.buf = append(b.buf[:0], p[len(p)-b.max:]...)
		return n, nil
	}
	if over := len(b.buf) + len(p) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	b.buf = append(b.buf, p...)
	return n, nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
