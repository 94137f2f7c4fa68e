// Package containerd is the executor that runs tasks as containers through
// containerd (DESIGN.md §4): one container per task, in the executor's own
// containerd namespace (default "swarmd"; one per node when several nodes
// share one containerd).
//
// # Images
//
// A task's image is used as found in the namespace (pulled earlier, or
// imported on an air-gapped node with `ctr -n swarmd images import`);
// otherwise it is pulled through containerd from the registry its reference
// names. A digest-pinned reference (name@sha256:...) runs exactly that
// digest. Registries on loopback are reached over plain HTTP (as Docker
// does), the ones listed in Config.InsecureRegistries too, all others over
// HTTPS only. Credentials come with the task in ContainerSpec.RegistryAuth,
// in Docker's X-Registry-Auth format (what `--with-registry-auth` sends):
// base64url JSON {"username","password","serveraddress"} or
// {"identitytoken","serveraddress"}; they are used for the registry
// serveraddress names (the image's own registry if empty), never logged.
//
// # Containers
//
// The container's ID is the task's ID, so an agent that restarts finds and
// adopts the containers of its tasks; labels (LabelTaskID, ...) on each
// container name its task, service and node, so orphans can be found. The
// OCI spec is the image's config overridden by the task's container spec
// (spec.go). The container's stdout and stderr go to a logging binary
// (Config.LogBinary, acting as the logger of agent/exec/containerd/logging)
// that writes bounded, rotated files in the task's log directory.
//
// # Controllers
//
// Prepare finds or pulls the image, attaches the task to the node network
// (Config.Network), writes its /etc/hostname, /etc/hosts and /etc/resolv.conf
// and creates the container; Start creates and starts its process; Wait
// reports its exit (an OOM kill as such: exit code 137, cause
// ErrOOMKilled); Shutdown sends the stop signal (spec, else image, else
// SIGTERM) and SIGKILL after the stop grace period (default 10s); Remove
// deletes everything but named volumes. Beyond exec.Controller, a Controller
// is an exec.ContainerStatuser, an exec.PortStatuser and an exec.Progresser (pull
// progress). Executor.Tasks and RemoveTask find and remove the containers of
// tasks the agent no longer knows.
//
// # State
//
// Under Config.StateDir:
//
//	tasks/<task ID>/            removed with the task (Controller.Remove)
//	    hosts, hostname, resolv.conf   generated, bind-mounted read-only
//	    network.json            the task's network attachment, if any
//	    logs/                   the logger's files
//	    volumes/<n>/            anonymous volumes (a volume mount without a source)
//	volumes/<name>/             named local volumes, made on first use, kept
//
// # Failures
//
// Errors from a containerd that does not answer (restarting, say) are
// temporary (exec.Temporary): the agent retries the step with backoff, and
// the client reconnects on its own. A Wait under way when containerd goes
// away waits again once it is back; the containers themselves keep running
// (their shims do not depend on containerd).
package containerd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/errdefs"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/agent/exec/containerd/logging"
	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/networking/hostnet"
)

// Name is the executor's name in EngineDescription.Executor.
const Name = "containerd"

// DefaultNamespace is the containerd namespace of a node's containers unless
// Config.Namespace says otherwise.
const DefaultNamespace = "swarmd"

// Labels set on every container the executor creates.
const (
	LabelTaskID      = "flotilla.task.id"
	LabelTaskSlot    = "flotilla.task.slot"
	LabelServiceID   = "flotilla.service.id"
	LabelServiceName = "flotilla.service.name"
	LabelNodeID      = "flotilla.node.id"
	// LabelStopSignal is the signal Shutdown sends first, resolved when the
	// container was created (spec, else image, else SIGTERM).
	LabelStopSignal = "flotilla.stop-signal"
)

const (
	// connectTimeout bounds New's check that containerd answers.
	connectTimeout = 10 * time.Second
	// reconnectDelay bounds the client's wait between attempts to reach a
	// containerd that went away (gRPC backoff), and each attempt.
	reconnectDelay = 2 * time.Second
	// pullTimeout bounds one image pull.
	pullTimeout = 30 * time.Minute
	// defaultStopGrace is the stop grace period of a spec without one.
	defaultStopGrace = 10 * time.Second
)

// Network gives each task a network namespace (networking/hostnet
// implements it).
type Network interface {
	// Attach makes (or, after a restart, returns) the task's network
	// namespace, address and host-mode published ports. Idempotent.
	Attach(ctx context.Context, taskID string, ports []*api.PortConfig) (*hostnet.Attachment, error)
	// Detach removes what Attach made; nil if there is nothing. Idempotent.
	Detach(ctx context.Context, taskID string) error
}

// Config configures an Executor.
type Config struct {
	// Address is containerd's socket.
	Address string
	// Namespace is the containerd namespace of the node's containers
	// (default DefaultNamespace).
	Namespace string
	// Hostname is the node's name in its description.
	Hostname string
	// StateDir is the executor's own directory: per-task state, logs,
	// volumes. Required.
	StateDir string
	// InsecureRegistries are registries (HOST:PORT) reached over plain HTTP.
	// Loopback registries always are; all others only over HTTPS.
	InsecureRegistries []string
	// Network gives tasks their network namespaces. Nil: each task has a
	// namespace of its own with only loopback (Docker's --network none).
	Network Network
	// LogBinary is the absolute path of the binary containerd's shim runs as
	// the logger of each container (swarmd's own executable).
	LogBinary string
	// Logger bounds each task's log files (size and number of the rotated
	// files; logging's defaults if zero).
	Logger logging.Options
	// Labels are the engine labels in the node's description.
	Labels map[string]string
	// Log receives the executor's logs (default slog.Default()).
	Log *slog.Logger
}

// Executor runs tasks as containerd containers.
type Executor struct {
	cfg         Config
	client      *client.Client
	snapshotter string
	log         *slog.Logger

	baseCtx context.Context // ends at Close: pulls
	cancel  context.CancelFunc

	pullMu sync.Mutex
	pulls  map[string]*pullCall // by image reference and credential
	// pullCount counts the pulls started (tests).
	pullCount int
}

var (
	_ exec.Executor    = (*Executor)(nil)
	_ exec.TaskCleaner = (*Executor)(nil)
)

var namespaceRE = regexp.MustCompile(`^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`)

// New connects to containerd at cfg.Address and returns an executor using
// namespace cfg.Namespace. It fails if containerd does not answer.
func New(ctx context.Context, cfg Config) (*Executor, error) {
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace
	}
	if !namespaceRE.MatchString(cfg.Namespace) {
		return nil, fmt.Errorf("containerd namespace %q: use letters, digits, '.', '_' and '-'", cfg.Namespace)
	}
	if cfg.Address == "" {
		return nil, errors.New("containerd address is empty: give the socket of a containerd")
	}
	if cfg.StateDir == "" || !filepath.IsAbs(cfg.StateDir) {
		return nil, fmt.Errorf("executor state directory %q: want an absolute path", cfg.StateDir)
	}
	if cfg.LogBinary == "" || !filepath.IsAbs(cfg.LogBinary) {
		return nil, fmt.Errorf("log binary %q: want the absolute path of the binary that acts as the container logger", cfg.LogBinary)
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	cfg.Labels = maps.Clone(cfg.Labels)
	cfg.InsecureRegistries = append([]string(nil), cfg.InsecureRegistries...)
	for _, dir := range []string{filepath.Join(cfg.StateDir, "tasks"), filepath.Join(cfg.StateDir, "volumes")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("executor state directory: %w", err)
		}
	}

	// containerd's dialer waits for a missing socket to appear: say at once
	// that there is none.
	if sock := strings.TrimPrefix(cfg.Address, "unix://"); filepath.IsAbs(sock) {
		if _, err := os.Stat(sock); err != nil {
			return nil, fmt.Errorf("containerd at %s: %w; start it or run swarmd without --containerd-addr to let it run its own", cfg.Address, err)
		}
	}
	c, err := client.New(cfg.Address, client.WithDefaultNamespace(cfg.Namespace), client.WithTimeout(reconnectDelay))
	if err != nil {
		return nil, fmt.Errorf("containerd at %s: %w", cfg.Address, err)
	}
	vctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	if _, err := c.Version(vctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("containerd at %s: %w; start it or run swarmd without --containerd-addr to let it run its own", cfg.Address, err)
	}
	baseCtx, stop := context.WithCancel(context.Background())
	return &Executor{
		cfg:         cfg,
		client:      c,
		snapshotter: defaults.DefaultSnapshotter,
		log:         cfg.Log.With("module", "executor"),
		baseCtx:     baseCtx,
		cancel:      stop,
		pulls:       map[string]*pullCall{},
	}, nil
}

// Close ends the pulls under way and the connection to containerd. Containers
// keep running.
func (e *Executor) Close() error {
	e.cancel()
	return e.client.Close()
}

// Client is the executor's containerd client (for tests and tools).
func (e *Executor) Client() *client.Client { return e.client }

// Namespace is the executor's containerd namespace.
func (e *Executor) Namespace() string { return e.cfg.Namespace }

// Describe reports the host under the configured hostname, with engine
// "containerd", containerd's version and the configured labels. A
// containerd that does not answer is a (temporary) error.
func (e *Executor) Describe(ctx context.Context) (*api.NodeDescription, error) {
	d, err := exec.HostDescription(e.cfg.Hostname, Name)
	if err != nil {
		return nil, err
	}
	v, err := e.client.Version(ctx)
	if err != nil {
		return nil, classify(fmt.Errorf("containerd at %s: %w", e.cfg.Address, err))
	}
	d.Engine.Version = v.Version
	if len(e.cfg.Labels) > 0 {
		d.Engine.Labels = maps.Clone(e.cfg.Labels)
	}
	return d, nil
}

// Controller makes the controller of task t. It starts nothing: a task
// whose container exists is adopted by the controller's first calls.
func (e *Executor) Controller(t *api.Task) (exec.Controller, error) {
	if t.ID == "" {
		return nil, errors.New("task has no ID")
	}
	if t.Spec.Container == nil {
		return nil, fmt.Errorf("task %s has no container spec: the containerd executor runs containers only", t.ID)
	}
	ref, err := parseImageRef(t.Spec.Container.Image)
	if err != nil {
		return nil, err
	}
	return &Controller{e: e, task: t.Copy(), ref: ref, log: e.log.With("task.id", t.ID, "service.id", t.ServiceID)}, nil
}

// taskDir is where task id keeps its state.
func (e *Executor) taskDir(id string) string {
	return filepath.Join(e.cfg.StateDir, "tasks", id)
}

// LogDir is where the logger writes task id's stdout and stderr.
func (e *Executor) LogDir(id string) string {
	return filepath.Join(e.taskDir(id), "logs")
}

// classify marks errors of a containerd that does not answer as temporary.
func classify(err error) error {
	if err == nil || exec.IsTemporary(err) {
		return err
	}
	if errdefs.IsUnavailable(err) || isConnError(err) {
		return exec.Temporary(err)
	}
	return err
}

// temporary marks err as temporary.
func temporary(err error) error { return exec.Temporary(err) }

// Tasks lists the IDs of the tasks that have something on the node: a
// container in the executor's namespace (labelled LabelTaskID) or a state
// directory. An agent compares it with the tasks it knows to find orphans,
// and removes them with RemoveTask.
func (e *Executor) Tasks(ctx context.Context) ([]string, error) {
	ids := map[string]bool{}
	cs, err := e.client.Containers(ctx, "labels."+strconv.Quote(LabelTaskID))
	if err != nil {
		return nil, classify(fmt.Errorf("list containers: %w", err))
	}
	for _, c := range cs {
		ids[c.ID()] = true
	}
	entries, err := os.ReadDir(filepath.Join(e.cfg.StateDir, "tasks"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, d := range entries {
		if d.IsDir() {
			ids[d.Name()] = true
		}
	}
	return slices.Sorted(maps.Keys(ids)), nil
}

// RemoveTask removes everything task id left on the node (its process,
// container, snapshot, state directory and network attachment), as its
// controller's Remove does, for a task the agent no longer knows. nil if
// there is nothing.
func (e *Executor) RemoveTask(ctx context.Context, id string) error {
	if id == "" || strings.ContainsAny(id, "/.") {
		return fmt.Errorf("task ID %q is not one", id)
	}
	c := &Controller{
		e:    e,
		task: &api.Task{ID: id, Spec: api.TaskSpec{Container: &api.ContainerSpec{}}},
		log:  e.log.With("task.id", id),
	}
	return c.Remove(ctx)
}
