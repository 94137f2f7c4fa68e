package containerd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/networking/hostnet"
)

// ErrOOMKilled is the cause of the exit (*exec.ExitError) of a task the
// kernel killed for lack of memory under its limit.
var ErrOOMKilled = errors.New("OOM killed")

const (
	// cleanupTimeout bounds the undoing of a failed step.
	cleanupTimeout = 30 * time.Second
	// waitUnavailable is how long Wait waits for an unreachable containerd
	// before it reports a temporary error (and is called again).
	waitUnavailable = time.Minute
	// killWait bounds the wait for a SIGKILLed task to be reported stopped.
	killWait = 30 * time.Second
)

// Controller runs one task as a containerd container whose ID is the
// task's ID.
type Controller struct {
	e    *Executor
	task *api.Task
	ref  imageRef
	log  *slog.Logger

	mu       sync.Mutex
	progress func(string)
}

var (
	_ exec.Controller        = (*Controller)(nil)
	_ exec.ContainerStatuser = (*Controller)(nil)
	_ exec.PortStatuser      = (*Controller)(nil)
	_ exec.Progresser        = (*Controller)(nil)
)

func (c *Controller) id() string { return c.task.ID }

// Progress registers fn for the progress of Prepare (image pulls).
func (c *Controller) Progress(fn func(message string)) {
	c.mu.Lock()
	c.progress = fn
	c.mu.Unlock()
}

func (c *Controller) report(msg string) {
	c.mu.Lock()
	fn := c.progress
	c.mu.Unlock()
	if fn != nil {
		fn(msg)
	}
}

// Prepare makes sure the image is in the namespace (pulling it if needed),
// attaches the task to the network, and creates the container (snapshot and
// OCI spec). It returns exec.ErrTaskPrepared if the container exists. A
// Prepare that fails leaves nothing behind.
func (c *Controller) Prepare(ctx context.Context) (retErr error) {
	if _, err := c.e.client.LoadContainer(ctx, c.id()); err == nil {
		return exec.ErrTaskPrepared
	} else if !errdefs.IsNotFound(err) {
		return classify(fmt.Errorf("look up container: %w", err))
	}
	cs := c.task.Spec.Container
	auth, err := parseRegistryAuth(cs.RegistryAuth)
	if err != nil {
		return err
	}
	taskDir := c.e.taskDir(c.id())
	plan, err := planMounts(cs.Mounts, filepath.Join(c.e.cfg.StateDir, "volumes"), taskDir)
	if err != nil {
		return err
	}
	img, err := c.e.ensureImage(ctx, c.ref, auth, c.report)
	if err != nil {
		return classify(err)
	}
	imgSpec, err := img.Spec(ctx)
	if err != nil {
		return classify(fmt.Errorf("image %s: read its config: %w", c.ref.Name, err))
	}
	sig, err := stopSignal(cs, imgSpec.Config)
	if err != nil {
		return err
	}

	// From here on, a failure undoes what was made.
	created := false
	defer func() {
		if !created {
			c.undoPrepare(ctx)
		}
	}()
	// A Prepare interrupted before (agent killed) may have left a snapshot.
	if err := c.removeSnapshot(ctx); err != nil {
		return classify(err)
	}
	for _, dir := range append([]string{taskDir}, plan.mkdirs...) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("prepare task directory: %w", err)
		}
	}
	att, err := c.attach(ctx)
	if err != nil {
		return err
	}
	files, err := writeNetworkFiles(taskDir, hostname(c.task), att)
	if err != nil {
		return err
	}
	mounts := mergeMounts(files, plan.mounts)

	in := specInput{
		task:   c.task,
		image:  imgSpec.Config,
		mounts: mounts,
		cgroup: "/swarmd/" + c.e.cfg.Namespace + "/" + c.id(),
	}
	if att != nil {
		in.netns = att.NetNSPath
	}
	opts, err := specOpts(in, img)
	if err != nil {
		return err
	}
	labels := c.labels(sig)
	_, err = c.e.client.NewContainer(ctx, c.id(),
		client.WithNewSnapshot(c.id(), img),
		client.WithNewSpec(opts...),
		client.WithContainerLabels(labels),
	)
	if errdefs.IsAlreadyExists(err) {
		created = true // someone else's: keep it
		return exec.ErrTaskPrepared
	}
	if err != nil {
		return classify(fmt.Errorf("create container: %w", err))
	}
	created = true
	return nil
}

// labels are the container's: the spec's, then the executor's own.
func (c *Controller) labels(sig syscall.Signal) map[string]string {
	l := map[string]string{}
	for k, v := range c.task.Spec.Container.Labels {
		l[k] = v
	}
	l[LabelTaskID] = c.task.ID
	l[LabelTaskSlot] = strconv.FormatUint(c.task.Slot, 10)
	l[LabelServiceID] = c.task.ServiceID
	l[LabelServiceName] = c.task.ServiceAnnotations.Name
	l[LabelNodeID] = c.task.NodeID
	l[LabelStopSignal] = strconv.Itoa(int(sig))
	return l
}

// undoPrepare removes what a failed Prepare made: snapshot, network
// attachment, task directory (named volumes stay).
func (c *Controller) undoPrepare(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if err := c.removeSnapshot(ctx); err != nil {
		c.log.Warn("failed prepare: cannot remove the container's snapshot", "error", err)
	}
	if err := c.detach(ctx); err != nil {
		c.log.Warn("failed prepare: cannot detach the task from the network", "error", err)
	}
	if err := os.RemoveAll(c.e.taskDir(c.id())); err != nil {
		c.log.Warn("failed prepare: cannot remove the task directory", "error", err)
	}
}

// removeSnapshot removes the container's snapshot; nil if there is none.
func (c *Controller) removeSnapshot(ctx context.Context) error {
	err := c.e.client.SnapshotService(c.e.snapshotter).Remove(ctx, c.id())
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("remove snapshot %s: %w", c.id(), err)
	}
	return nil
}

// hostPorts are the task's host-mode published ports.
func (c *Controller) hostPorts() []*api.PortConfig {
	ep := c.task.Endpoint
	if ep == nil {
		return nil
	}
	ports := ep.Ports
	if len(ports) == 0 && ep.Spec != nil {
		ports = ep.Spec.Ports
	}
	var out []*api.PortConfig
	for _, p := range ports {
		if p != nil && p.PublishMode == api.PublishModeHost {
			out = append(out, p.Copy())
		}
	}
	return out
}

// attach puts the task on the node network and records the attachment in
// the task directory; nil without a network.
func (c *Controller) attach(ctx context.Context) (*hostnet.Attachment, error) {
	if c.e.cfg.Network == nil {
		return nil, nil
	}
	att, err := c.e.cfg.Network.Attach(ctx, c.id(), c.hostPorts())
	if err != nil {
		return nil, classify(fmt.Errorf("attach to the node network: %w", err))
	}
	b, err := json.Marshal(att)
	if err != nil {
		return nil, fmt.Errorf("record network attachment: %w", err)
	}
	if err := os.WriteFile(filepath.Join(c.e.taskDir(c.id()), "network.json"), b, 0o600); err != nil {
		return nil, fmt.Errorf("record network attachment: %w", err)
	}
	return att, nil
}

func (c *Controller) detach(ctx context.Context) error {
	if c.e.cfg.Network == nil {
		return nil
	}
	return c.e.cfg.Network.Detach(ctx, c.id())
}

// PortStatus reports the task's host-mode published ports as the network
// programmed them (nil without a network or ports).
func (c *Controller) PortStatus(ctx context.Context) (*api.PortStatus, error) {
	b, err := os.ReadFile(filepath.Join(c.e.taskDir(c.id()), "network.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var att hostnet.Attachment
	if err := json.Unmarshal(b, &att); err != nil {
		return nil, fmt.Errorf("network attachment of task %s: %w", c.id(), err)
	}
	if len(att.Ports) == 0 {
		return nil, nil
	}
	return &api.PortStatus{Ports: att.Ports}, nil
}

// Start creates the container's task (its process, with stdout and stderr
// to the logger) and starts it; exec.ErrTaskStarted if it was started
// already.
func (c *Controller) Start(ctx context.Context) error {
	ctr, err := c.e.client.LoadContainer(ctx, c.id())
	if err != nil {
		if errdefs.IsNotFound(err) {
			return fmt.Errorf("the task's container does not exist (removed?): it cannot start")
		}
		return classify(fmt.Errorf("look up container: %w", err))
	}
	t, err := ctr.Task(ctx, nil)
	switch {
	case err == nil:
		st, err := t.Status(ctx)
		if err != nil {
			return classify(fmt.Errorf("task status: %w", err))
		}
		if st.Status != client.Created {
			return exec.ErrTaskStarted
		}
		// Created by a Start that did not get to start it.
		return c.startTask(ctx, t)
	case !errdefs.IsNotFound(err):
		return classify(fmt.Errorf("look up the container's task: %w", err))
	}
	logDir := c.e.LogDir(c.id())
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		return fmt.Errorf("log directory: %w", err)
	}
	t, err = ctr.NewTask(ctx, c.e.logIO(logDir, c.task.Spec.Container.TTY))
	if errdefs.IsAlreadyExists(err) {
		return exec.ErrTaskStarted
	}
	if err != nil {
		return classify(fmt.Errorf("create the container's process: %w", err))
	}
	return c.startTask(ctx, t)
}

// startTask starts t; if that fails, t is deleted so that a later Start can
// try again from scratch.
func (c *Controller) startTask(ctx context.Context, t client.Task) error {
	err := t.Start(ctx)
	if err == nil {
		return nil
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if _, derr := t.Delete(dctx, client.WithProcessKill); derr != nil && !errdefs.IsNotFound(derr) {
		c.log.Warn("failed start: cannot delete the container's process", "error", derr)
	}
	return classify(fmt.Errorf("start the container: %w", err))
}

// loadTask returns the container's task; an errdefs.ErrNotFound error if
// the container or its task does not exist.
func (c *Controller) loadTask(ctx context.Context) (client.Container, client.Task, error) {
	ctr, err := c.e.client.LoadContainer(ctx, c.id())
	if err != nil {
		return nil, nil, err
	}
	t, err := ctr.Task(ctx, nil)
	if err != nil {
		return ctr, nil, err
	}
	return ctr, t, nil
}

// ContainerStatus reports the container's ID and its process's PID.
func (c *Controller) ContainerStatus(ctx context.Context) (*api.ContainerStatus, error) {
	_, t, err := c.loadTask(ctx)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return &api.ContainerStatus{ContainerID: c.id()}, nil
		}
		return nil, classify(err)
	}
	return &api.ContainerStatus{ContainerID: c.id(), PID: int32(t.Pid())}, nil
}

// Wait waits for the container's process to exit: nil for code 0, an
// *exec.ExitError otherwise (its Cause ErrOOMKilled if the kernel killed it
// for lack of memory). It attaches to a process that runs already (a
// restarted agent adopting its task), and reports the real exit of one that
// exited while nobody watched. When containerd goes away meanwhile it waits
// again once containerd is back.
func (c *Controller) Wait(ctx context.Context) error {
	var unavailableSince time.Time
	for attempt := 0; ; attempt++ {
		code, err := c.waitOnce(ctx)
		if err == nil {
			return c.exitResult(ctx, code)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !exec.IsTemporary(err) {
			return err
		}
		if unavailableSince.IsZero() {
			unavailableSince = time.Now()
			c.log.Warn("containerd unavailable while waiting for the task; waiting again", "error", err)
		}
		if time.Since(unavailableSince) > waitUnavailable {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(retryDelay(attempt)):
		}
	}
}

// waitOnce waits for the task's exit code.
func (c *Controller) waitOnce(ctx context.Context) (uint32, error) {
	_, t, err := c.loadTask(ctx)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return 0, fmt.Errorf("the task's container or its process is gone (removed outside the agent?): %w", err)
		}
		return 0, classify(err)
	}
	ch, err := t.Wait(ctx)
	if err != nil {
		return 0, classify(err)
	}
	select {
	case st := <-ch:
		code, _, err := st.Result()
		if err != nil {
			return 0, classify(fmt.Errorf("wait for the container: %w", err))
		}
		return code, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// exitResult is Wait's result for exit code code.
func (c *Controller) exitResult(ctx context.Context, code uint32) error {
	if code == 0 {
		return nil
	}
	exit := &exec.ExitError{Code: int(code)}
	if c.oomKilled(ctx) {
		limit := ""
		if r := c.task.Spec.Resources; r != nil && r.Limits != nil && r.Limits.MemoryBytes > 0 {
			limit = fmt.Sprintf(" (memory limit %s)", humanBytes(r.Limits.MemoryBytes))
		}
		exit.Cause = fmt.Errorf("%w%s", ErrOOMKilled, limit)
	}
	return exit
}

// retryDelay is the wait before attempt+1 of a call to an unreachable
// containerd: 250 ms doubling to 4 s.
func retryDelay(attempt int) time.Duration {
	d := 250 * time.Millisecond << min(attempt, 4)
	return d
}

// Shutdown sends the stop signal, waits up to the stop grace period, then
// kills the process; it returns once the process stopped. nil for a task
// that does not run.
func (c *Controller) Shutdown(ctx context.Context) error {
	grace := defaultStopGrace
	if g := c.task.Spec.Container.StopGracePeriod; g != nil {
		grace = time.Duration(g.Seconds)*time.Second + time.Duration(g.Nanos)
	}
	return c.stop(ctx, false, grace)
}

// Terminate kills the process at once and returns once it stopped; nil
// for a task that does not run.
func (c *Controller) Terminate(ctx context.Context) error {
	return c.stop(ctx, true, 0)
}

func (c *Controller) stop(ctx context.Context, kill bool, grace time.Duration) error {
	ctr, t, err := c.loadTask(ctx)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return nil
		}
		return classify(err)
	}
	st, err := t.Status(ctx)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return nil
		}
		return classify(fmt.Errorf("task status: %w", err))
	}
	if st.Status == client.Stopped {
		return nil
	}
	exited, err := t.Wait(ctx)
	if err != nil {
		return classify(err)
	}
	sig := syscall.SIGKILL
	if !kill && st.Status == client.Running {
		sig = c.stopSignal(ctx, ctr)
	}
	if sig != syscall.SIGKILL {
		if err := c.signal(ctx, t, sig); err != nil {
			return err
		}
		timer := time.NewTimer(grace)
		defer timer.Stop()
		select {
		case st := <-exited:
			return waitErr(st)
		case <-timer.C:
			c.log.Debug("task did not stop within its grace period: killing it", "grace", grace, "signal", sig)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := c.signal(ctx, t, syscall.SIGKILL); err != nil {
		return err
	}
	select {
	case st := <-exited:
		return waitErr(st)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitErr is the error of a wait on a process being stopped: nil once it
// exited, whatever its code.
func waitErr(st client.ExitStatus) error {
	if err := st.Error(); err != nil {
		return classify(fmt.Errorf("wait for the container to stop: %w", err))
	}
	return nil
}

// signal sends sig to the task's process; a process that is gone already is
// not an error.
func (c *Controller) signal(ctx context.Context, t client.Task, sig syscall.Signal) error {
	err := t.Kill(ctx, sig)
	if err != nil && !errdefs.IsNotFound(err) {
		return classify(fmt.Errorf("send %v to the container: %w", sig, err))
	}
	return nil
}

// stopSignal is the signal recorded on the container when it was created.
func (c *Controller) stopSignal(ctx context.Context, ctr client.Container) syscall.Signal {
	labels, err := ctr.Labels(ctx)
	if err == nil {
		if n, err := strconv.Atoi(labels[LabelStopSignal]); err == nil && n > 0 {
			return syscall.Signal(n)
		}
	}
	return syscall.SIGTERM
}

// Remove deletes the container's process (killing it if it still runs),
// the container and its snapshot, the task's directory (generated files,
// anonymous volumes, logs) and its network attachment. nil if there is
// nothing to remove.
func (c *Controller) Remove(ctx context.Context) error {
	ctr, t, err := c.loadTask(ctx)
	switch {
	case err == nil:
		if err := c.deleteTask(ctx, t); err != nil {
			return err
		}
	case !errdefs.IsNotFound(err):
		return classify(err)
	}
	if ctr != nil {
		if err := ctr.Delete(ctx, client.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
			return classify(fmt.Errorf("delete container: %w", err))
		}
	}
	if err := c.removeSnapshot(ctx); err != nil {
		return classify(err)
	}
	if err := c.detach(ctx); err != nil {
		return classify(fmt.Errorf("detach from the node network: %w", err))
	}
	// The logger finishes once the task is deleted: let it, so its last
	// writes do not race the removal.
	waitLoggerClosed(c.e.LogDir(c.id()))
	if err := os.RemoveAll(c.e.taskDir(c.id())); err != nil {
		return fmt.Errorf("remove task directory: %w", err)
	}
	return nil
}

// deleteTask kills t if it still runs, and deletes it.
func (c *Controller) deleteTask(ctx context.Context, t client.Task) error {
	st, err := t.Status(ctx)
	if err != nil && !errdefs.IsNotFound(err) {
		return classify(fmt.Errorf("task status: %w", err))
	}
	if err == nil && st.Status != client.Stopped {
		kctx, cancel := context.WithTimeout(ctx, killWait)
		defer cancel()
		if err := c.stop(kctx, true, 0); err != nil {
			return err
		}
	}
	if _, err := t.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
		return classify(fmt.Errorf("delete the container's process: %w", err))
	}
	return nil
}

// Close releases nothing: the executor owns the connection to containerd.
// The task keeps running.
func (c *Controller) Close() error { return nil }

// mergeMounts puts the generated files (hosts, resolv.conf...) and the
// task's mounts together: the task's win where both name a target.
func mergeMounts(generated, task []specs.Mount) []specs.Mount {
	taken := map[string]bool{}
	for _, m := range task {
		taken[filepath.Clean(m.Destination)] = true
	}
	var out []specs.Mount
	for _, m := range generated {
		if !taken[m.Destination] {
			out = append(out, m)
		}
	}
	out = append(out, task...)
	sortMounts(out)
	return out
}
