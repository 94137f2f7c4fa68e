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
	"strconv"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/flotilla/flotilla/agent"
	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/agent/exec/sim"
	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/ca"
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
	// ContainerdAddr is containerd's socket (default
	// DefaultContainerdAddr). If nothing answers there and containerd is on
	// PATH, the node runs its own, under <StateDir>/containerd.
	ContainerdAddr string
	// ContainerdNamespace holds this node's containers (default "swarmd";
	// nodes sharing one containerd need one each).
	ContainerdNamespace string
	// InsecureRegistries (HOST:PORT) are pulled from over plain HTTP;
	// loopback registries always are.
	InsecureRegistries []string
	// BridgeName and BridgeSubnet are the node-local task network (default
	// flotilla0 and 10.213.0.0/16; nodes sharing one machine need their own).
	BridgeName, BridgeSubnet string
	// LogBinary is the executable containerd runs as each container's
	// logger (default: this process's executable, which must call
	// logging.Invoked first thing in main, as swarmd does).
	LogBinary string
	// UnlockKey (SWMKEY-1-...) opens the keys of a manager locked by the
	// cluster's autolock.
	UnlockKey string
	// ForceNewCluster restarts a cluster that lost its quorum of managers
	// for good from this manager's state, as its only manager (see
	// forcenewcluster.go). It needs the state dir of a manager.
	ForceNewCluster bool
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

	creds *ca.Credentials
	keys  *ca.KeyStore

	mu      sync.Mutex
	started bool
	cancel  context.CancelFunc
	lock    *os.File
	mgr     *manager.Manager
	agent   *agent.Agent
	runtime *containerRuntime // nil with the sim executor
	roles   roleSwitch        // promotion and demotion (role.go)
	ready   <-chan struct{}
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
	if cfg.ContainerdAddr == "" {
		cfg.ContainerdAddr = DefaultContainerdAddr
	}
	if cfg.Executor != "containerd" && cfg.Executor != "sim" {
		return nil, fmt.Errorf("executor %q is unknown: use containerd or sim", cfg.Executor)
	}
	if (cfg.JoinAddr == "") != (cfg.JoinToken == "") {
		return nil, errors.New("joining needs both --join-addr and --join-token")
	}
	if cfg.ForceNewCluster && cfg.JoinAddr != "" {
		return nil, errors.New("--force-new-cluster restarts a cluster from this manager's own state: it cannot be combined with --join-addr")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	keys := &ca.KeyStore{Dir: filepath.Join(cfg.StateDir, "certificates"), Log: cfg.Logger}
	if cfg.UnlockKey != "" {
		if keys.UnlockKey, err = ca.ParseUnlockKey(cfg.UnlockKey); err != nil {
			return nil, fmt.Errorf("--unlock-key: %w", err)
		}
	}
	return &Node{cfg: cfg, log: cfg.Logger.With("module", "node"), keys: keys, done: make(chan struct{})}, nil
}

// Start takes the state dir, loads or creates the node's identity (a new
// cluster, or a join through JoinAddr) and starts serving. It returns once
// the node runs; Ready tells when it serves. Start fails, leaving nothing
// running, when the state dir is in use, holds state that cannot be trusted,
// or the join is refused.
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
	var cleanup []func()
	ok := false
	defer func() {
		if !ok {
			for i := len(cleanup) - 1; i >= 0; i-- {
				cleanup[i]()
			}
			lock.Close()
		}
	}()
	if err := n.checkForceNewCluster(nil); err != nil {
		return err
	}
	id, err := n.loadOrCreateIdentity(ctx)
	if err != nil {
		return err
	}
	if err := n.checkForceNewCluster(id); err != nil {
		return err
	}
	n.state = id.state
	n.creds = id.creds
	me := id.creds.Identity()
	n.log = n.log.With("node.id", me.NodeID)
	logger := n.cfg.Logger.With("node.id", me.NodeID)

	var (
		executor exec.Executor
		runtime  *containerRuntime
	)
	switch n.cfg.Executor {
	case sim.Name:
		executor = sim.New(n.cfg.Hostname, nil)
	default:
		if runtime, err = n.openContainerRuntime(ctx); err != nil {
			return err
		}
		cleanup = append(cleanup, func() { runtime.close(context.WithoutCancel(ctx)) })
		executor = runtime.executor
	}
	managers := id.state.Managers
	var mgr *manager.Manager
	if me.Role == api.NodeRoleManager {
		remote, advertise, err := n.listenRemote()
		if err != nil {
			return err
		}
		cleanup = append(cleanup, func() { remote.Close() })
		rca := id.creds.RootCA()
		if id.rootKey != nil {
			if rca, err = ca.ParseRootCA(rca.Cert, id.rootKey); err != nil {
				return fmt.Errorf("root CA key in %s: %w", n.keyStore().Dir, err)
			}
		}
		ks := n.keyStore()
		mgr, err = n.newManager(ctx, managerParts{
			executor: executor, raftID: id.state.RaftID, join: id.state.Managers,
			rootCA: rca, rootKeyStored: func() { _ = ks.RemoveRootKey() },
			remote: remote, advertise: advertise,
		})
		if err != nil {
			return err
		}
		// A manager's own agent reports to the dispatcher like any other;
		// the other managers it knows are there should this one be demoted.
		managers = append([]string{advertise}, id.state.Managers...)
		n.roles.advertise = advertise
	}
	n.roles.executor = executor
	if len(managers) == 0 {
		return fmt.Errorf("worker node %s knows no manager to connect to: %s lacks the managers list", me.NodeID, filepath.Join(n.cfg.StateDir, stateFile))
	}
	ag := agent.New(agent.Config{
		Dial:            n.dial,
		Managers:        managers,
		ManagersChanged: n.rememberManagers,
		NodeChanged:     n.nodeChanged,
		Executor:        executor,
		TaskDB:          filepath.Join(n.cfg.StateDir, "worker", "tasks.db"),
		Logger:          logger,
	})
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	n.cancel, n.lock, n.mgr, n.agent, n.runtime, n.started = cancel, lock, mgr, ag, runtime, true
	n.ready = ag.Ready()
	if mgr != nil {
		n.ready = mgr.Ready()
	}
	ok = true
	go n.run(runCtx, mgr, ag)
	return nil
}

// run owns the node's components until ctx ends or one fails.
func (n *Node) run(ctx context.Context, mgr *manager.Manager, ag *agent.Agent) {
	g, gctx := errgroup.WithContext(ctx)
	// The manager component, switched on and off with the node's role.
	g.Go(func() error { return n.runRoles(gctx, mgr) })
	g.Go(func() error {
		if mgr != nil {
			// The manager records its own node when it first leads; before
			// that its dispatcher would not know this node. A manager
			// removed from raft meanwhile (demoted while this node was
			// down) never gets ready: the agent then finds the others.
			select {
			case <-mgr.Ready():
			case <-mgr.Removed():
			case <-gctx.Done():
				return nil
			}
		}
		return ag.Run(gctx)
	})
	g.Go(func() error { return n.renewLoop(gctx) })
	if n.runtime != nil {
		g.Go(func() error { return n.runtime.superviseDaemon(gctx) })
	}
	err := g.Wait()
	if n.runtime != nil {
		n.runtime.close(context.Background())
	}
	if errors.Is(err, agent.ErrNodeRemoved) {
		n.log.Error("this node was removed from the cluster", "err", err)
	}
	n.mu.Lock()
	n.err = err
	n.lock.Close()
	n.mu.Unlock()
	close(n.done)
}

// listenRemote opens the remote API listener of a manager and says the
// address other nodes reach it at.
func (n *Node) listenRemote() (net.Listener, string, error) {
	if n.cfg.ListenRemoteAPI == "-" {
		return nil, "", errors.New("a manager needs its remote API: set --listen-remote-api")
	}
	remote, err := net.Listen("tcp", n.cfg.ListenRemoteAPI)
	if err != nil {
		return nil, "", fmt.Errorf("listen on remote API address %s: %w (set --listen-remote-api)", n.cfg.ListenRemoteAPI, err)
	}
	advertise := n.cfg.AdvertiseRemoteAPI
	if advertise == "" {
		advertise = defaultAdvertiseAddr(remote.Addr().(*net.TCPAddr))
	}
	return remote, advertise, nil
}

// managerParts is what differs between the manager a node starts with and
// one it starts on promotion.
type managerParts struct {
	executor      exec.Executor // describes the node
	raftID        uint64
	join          []string // managers to join raft through, if it has no log
	rootCA        ca.RootCA
	rootKeyStored func()
	remote        net.Listener
	advertise     string
}

// newManager makes this node's manager component (it starts nothing) and
// records that its raft log is open (encrypted from then on).
func (n *Node) newManager(ctx context.Context, p managerParts) (*manager.Manager, error) {
	me := n.creds.Identity()
	desc, err := p.executor.Describe(ctx)
	if err != nil {
		return nil, err
	}
	dek, err := n.raftDataKey()
	if err != nil {
		return nil, err
	}
	mgr, err := manager.New(manager.Config{
		StateDir:       n.cfg.StateDir,
		NodeID:         me.NodeID,
		RaftID:         p.raftID,
		JoinAddrs:      p.join,
		ClusterID:      me.ClusterID,
		RootCA:         p.rootCA,
		RootKeyStored:  p.rootKeyStored,
		Credentials:    n.creds,
		ControlSocket:  n.cfg.ListenControlAPI,
		RemoteListener: p.remote,
		AdvertiseAddr:  p.advertise,
		Description:    desc,
		TickInterval:   n.cfg.TickInterval,
		ElectionTick:   n.cfg.ElectionTick,
		HeartbeatTick:  n.cfg.HeartbeatTick,
		DataKey:        dek,
		OnUnlockKey:    n.unlockKeyChanged,
		Logger:         n.cfg.Logger.With("node.id", me.NodeID),
		// Disaster recovery (swarmd --force-new-cluster); only ever set on
		// a node that starts as a manager.
		ForceNewCluster: n.cfg.ForceNewCluster,
	})
	if err != nil {
		return nil, err
	}
	if err := n.raftLogOpened(); err != nil {
		return nil, err
	}
	return mgr, nil
}

// rememberManagers keeps the managers a manager last listed (leader first)
// in node.json, so that a restarted worker finds the cluster even if the
// manager it joined through is gone.
func (n *Node) rememberManagers(addrs []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := *n.state
	st.Managers = addrs
	if err := saveState(n.cfg.StateDir, &st); err != nil {
		n.log.Warn("cannot remember the managers' addresses", "error", err)
		return
	}
	n.state = &st
}

// defaultAdvertiseAddr is the bound address, or when bound to all
// interfaces, the first non-loopback IPv4 address of an interface that is up
// (what other machines can most likely reach), else loopback.
func defaultAdvertiseAddr(bound *net.TCPAddr) string {
	if !bound.IP.IsUnspecified() {
		return bound.String()
	}
	port := strconv.Itoa(bound.Port)
	ifaces, _ := net.Interfaces()
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && ipn.IP.IsGlobalUnicast() {
				return net.JoinHostPort(ipn.IP.String(), port)
			}
		}
	}
	return net.JoinHostPort("127.0.0.1", port)
}

// dial opens an mTLS connection to a manager.
func (n *Node) dial(ctx context.Context, addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(n.creds.ClientTLSConfig())))
}

// Ready is closed when the node serves: a manager's control API answers, or a
// worker's agent holds a session with a manager.
func (n *Node) Ready() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ready
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
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.state == nil {
		return ""
	}
	return n.state.NodeID
}

// IsManager reports whether the node runs as a manager (after Start).
func (n *Node) IsManager() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.mgr != nil
}

// Tasks lists the tasks this node's agent holds, with their last status
// (nil before Start).
func (n *Node) Tasks() ([]*api.Task, error) {
	n.mu.Lock()
	ag := n.agent
	n.mu.Unlock()
	if ag == nil {
		return nil, nil
	}
	return ag.Tasks()
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
