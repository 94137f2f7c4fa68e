// Package node is the embedding API of Flotilla: one Node is one swarmd.
//
//	n, err := node.New(node.Config{StateDir: dir})
//	if err != nil { ... }
//	if err := n.Start(ctx); err != nil { ... }
//	<-n.Ready()          // serving: the control socket answers
//	...
//	err = n.Stop(ctx)    // or watch n.Done() and n.Err()
//
// A fresh state dir makes a new one-manager cluster; a state dir that holds a
// node restarts that node with the same identity and state.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager"
)

// Defaults of Config.
const (
	DefaultStateDir        = "/var/lib/swarmd"
	DefaultListenRemoteAPI = "0.0.0.0:4242"
	ControlSocketName      = "swarmd.sock"
)

// Config configures a node. Zero values take the defaults documented on each field.
type Config struct {
	// StateDir holds everything the node keeps (default /var/lib/swarmd).
	StateDir string
	// Hostname is the node's name (default: the OS hostname).
	Hostname string
	// ListenControlAPI is the control unix socket (default <StateDir>/swarmd.sock).
	ListenControlAPI string
	// ListenRemoteAPI is the TCP address managers listen on (default
	// 0.0.0.0:4242; "-" disables it, e.g. for tests).
	ListenRemoteAPI string
	// AdvertiseRemoteAPI is the address other nodes reach this one at
	// (default: the listen address, with the port actually bound).
	AdvertiseRemoteAPI string
	// JoinAddr and JoinToken join an existing cluster.
	JoinAddr, JoinToken string
	// Executor runs tasks: "containerd" (default) or "sim".
	Executor string
	// Raft timing; zero values take the raft package defaults.
	TickInterval                time.Duration
	ElectionTick, HeartbeatTick int
	Logger                      *slog.Logger
}

// Node is one running swarmd.
type Node struct {
	cfg   Config
	log   *slog.Logger
	state *State

	mu      sync.Mutex
	started bool
	cancel  context.CancelFunc
	lock    *os.File
	mgr     *manager.Manager
	done    chan struct{}
	err     error
}

// New checks the configuration and fills in defaults. It touches nothing.
func New(cfg Config) (*Node, error) {
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultStateDir
	}
	abs, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("state dir %q: %w", cfg.StateDir, err)
	}
	cfg.StateDir = abs
	if cfg.Hostname == "" {
		if cfg.Hostname, err = os.Hostname(); err != nil {
			return nil, fmt.Errorf("no hostname given and the OS has none: %w", err)
		}
	}
	if cfg.ListenControlAPI == "" {
		cfg.ListenControlAPI = filepath.Join(cfg.StateDir, ControlSocketName)
	}
	if cfg.ListenRemoteAPI == "" {
		cfg.ListenRemoteAPI = DefaultListenRemoteAPI
	}
	if cfg.Executor == "" {
		cfg.Executor = "containerd"
	}
	if cfg.Executor != "containerd" && cfg.Executor != "sim" {
		return nil, fmt.Errorf("executor %q is unknown: use containerd or sim", cfg.Executor)
	}
	if cfg.JoinAddr != "" || cfg.JoinToken != "" {
		return nil, errors.New("joining an existing cluster (--join-addr, --join-token) is not supported yet by this version")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Node{cfg: cfg, log: cfg.Logger.With("module", "node"), done: make(chan struct{})}, nil
}

// Start takes the state dir, loads or creates the node's identity and starts
// serving. It returns once the node runs; Ready tells when it serves.
// Start fails, leaving nothing running, when the state dir is in use or
// holds state that cannot be trusted.
func (n *Node) Start(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.started {
		return errors.New("node already started")
	}
	if err := os.MkdirAll(n.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	lock, err := lockStateDir(n.cfg.StateDir)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			lock.Close()
		}
	}()
	state, created, err := loadOrCreateState(n.cfg.StateDir)
	if err != nil {
		return err
	}
	n.state = state
	n.log = n.log.With("node.id", state.NodeID)

	var remote net.Listener
	advertise := n.cfg.AdvertiseRemoteAPI
	if n.cfg.ListenRemoteAPI != "-" {
		remote, err = net.Listen("tcp", n.cfg.ListenRemoteAPI)
		if err != nil {
			return fmt.Errorf("listen on remote API address %s: %w (set --listen-remote-api)", n.cfg.ListenRemoteAPI, err)
		}
		if advertise == "" {
			advertise = remote.Addr().String()
		}
	}
	mgr, err := manager.New(manager.Config{
		StateDir:       n.cfg.StateDir,
		NodeID:         state.NodeID,
		RaftID:         state.RaftID,
		ControlSocket:  n.cfg.ListenControlAPI,
		RemoteListener: remote,
		AdvertiseAddr:  advertise,
		Description:    n.describe(),
		TickInterval:   n.cfg.TickInterval,
		ElectionTick:   n.cfg.ElectionTick,
		HeartbeatTick:  n.cfg.HeartbeatTick,
		Logger:         n.cfg.Logger.With("node.id", state.NodeID),
	})
	if err != nil {
		if remote != nil {
			remote.Close()
		}
		return err
	}
	if created {
		n.log.Info("initialised a new node", "state_dir", n.cfg.StateDir)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	n.cancel, n.lock, n.mgr, n.started = cancel, lock, mgr, true
	ok = true
	go func() {
		err := mgr.Run(runCtx)
		n.mu.Lock()
		n.err = err
		n.lock.Close()
		n.mu.Unlock()
		close(n.done)
	}()
	return nil
}

// describe is what the node reports about itself.
func (n *Node) describe() *api.NodeDescription {
	var si syscall.Sysinfo_t
	var mem int64
	if syscall.Sysinfo(&si) == nil {
		mem = int64(si.Totalram) * int64(si.Unit)
	}
	return &api.NodeDescription{
		Hostname:  n.cfg.Hostname,
		Platform:  &api.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH},
		Resources: &api.Resources{NanoCPUs: int64(runtime.NumCPU()) * 1e9, MemoryBytes: mem},
		Engine:    &api.EngineDescription{Executor: n.cfg.Executor},
	}
}

// Ready is closed when the node serves its control API as a working manager.
func (n *Node) Ready() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.mgr == nil {
		return nil
	}
	return n.mgr.Ready()
}

// Done is closed when the node has stopped, by Stop or by a failure.
func (n *Node) Done() <-chan struct{} { return n.done }

// Err is why the node stopped: nil after Stop, else the failure.
func (n *Node) Err() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.err
}

// NodeID is the node's ID (empty before Start).
func (n *Node) NodeID() string {
	if n.state == nil {
		return ""
	}
	return n.state.NodeID
}

// ControlSocket is the path of the control API socket.
func (n *Node) ControlSocket() string { return n.cfg.ListenControlAPI }

// Stop stops the node and waits for it, or for ctx.
func (n *Node) Stop(ctx context.Context) error {
	n.mu.Lock()
	cancel := n.cancel
	n.mu.Unlock()
	if cancel == nil {
		return errors.New("node was not started")
	}
	cancel()
	select {
	case <-n.done:
		return n.Err()
	case <-ctx.Done():
		return fmt.Errorf("node did not stop in time: %w", ctx.Err())
	}
}
