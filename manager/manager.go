// Package manager runs a manager node: a raft member holding the replicated
// store, the Control and Watch APIs on a local unix socket, and, while this
// member is the raft leader, the leader-only loops.
package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	etcdraft "go.etcd.io/raft/v3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/ca"
	"github.com/flotilla/flotilla/manager/caserver"
	"github.com/flotilla/flotilla/manager/controlapi"
	"github.com/flotilla/flotilla/manager/dispatcher"
	"github.com/flotilla/flotilla/manager/logbroker"
	"github.com/flotilla/flotilla/manager/orchestrator/global"
	"github.com/flotilla/flotilla/manager/orchestrator/replicated"
	"github.com/flotilla/flotilla/manager/orchestrator/restart"
	"github.com/flotilla/flotilla/manager/orchestrator/taskreaper"
	"github.com/flotilla/flotilla/manager/scheduler"
	"github.com/flotilla/flotilla/manager/store"
	"github.com/flotilla/flotilla/manager/watchapi"
	"github.com/flotilla/flotilla/raft"
)

// Config is what a manager needs to run.
type Config struct {
	// StateDir holds the raft log and snapshots (in StateDir/raft).
	StateDir string
	// ClusterID is the ID of the cluster; the first manager creates the
	// cluster object with it.
	ClusterID string
	// RootCA is the cluster's root CA. Its key is needed only by the first
	// manager, until the cluster object holds it; RootKeyStored is called then.
	RootCA        ca.RootCA
	RootKeyStored func()
	// Credentials are this node's TLS identity for the remote API.
	Credentials *ca.Credentials
	// JoinAddrs, for a manager that joined the cluster and has no raft log
	// yet, are managers to ask to add it to raft (the join address first).
	// Empty: a new cluster's first manager, or a manager with a log.
	JoinAddrs []string
	// NodeID is this node's ID; RaftID its raft member ID.
	NodeID string
	RaftID uint64
	// ControlSocket is the unix socket of the Control API (mode 0600).
	ControlSocket string
	// RemoteListener, if set, serves the remote API (health only for now).
	RemoteListener net.Listener
	// AdvertiseAddr is the address other nodes reach this manager at.
	AdvertiseAddr string
	// Logger should carry node.id already.
	// Description is what the node reports about itself.
	Description *api.NodeDescription
	// DataKey encrypts this manager's raft log and snapshots on disk (nil:
	// plaintext).
	DataKey *raft.DataKey
	// OnUnlockKey, if set, is called with the cluster's unlock key (nil
	// when autolock is off) each time this manager sees the cluster object,
	// so the node can seal its keys with it. It must be idempotent.
	OnUnlockKey func(ca.UnlockKey)
	// ForceNewCluster restarts the cluster from this manager's raft log as
	// its only manager (disaster recovery when a quorum of managers is lost
	// for good): the other managers are removed from raft for good, and the
	// membership sync then shows their nodes Unreachable until they are
	// removed with node rm --force. It needs an existing raft log.
	ForceNewCluster bool
	// Raft timing (zero: raft package defaults).
	TickInterval                time.Duration
	ElectionTick, HeartbeatTick int
	Logger                      *slog.Logger
}

// Manager is one manager node. New opens its state; Run serves until its
// context ends.
type Manager struct {
	cfg        Config
	log        *slog.Logger
	store      *store.MemoryStore
	raft       *raft.Node
	health     *health.Server
	control    *controlapi.Server
	watch      *watchapi.Server
	caServer   *caserver.Server
	dispatcher *dispatcher.Dispatcher
	replicated *replicated.Orchestrator
	global     *global.Orchestrator
	restarts   *restart.Supervisor
	reaper     *taskreaper.Reaper
	scheduler  *scheduler.Scheduler
	logs       *logbroker.Broker
	ready      chan struct{}
	readyOnce  sync.Once
	transport  *raft.GRPCTransport
	forward    *forwarder
	// joining: this manager has no raft log yet and asks JoinAddrs to add it.
	joining bool
	// newManagers are managers raft added (node ID -> status) whose node
	// the membership sync has yet to record.
	newManagers sync.Map
}

// New opens (or creates) the manager's raft state and restores the store.
// It starts nothing.
func New(cfg Config) (*Manager, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	m := &Manager{
		cfg:    cfg,
		log:    cfg.Logger.With("module", "manager"),
		health: health.NewServer(),
		ready:  make(chan struct{}),
	}
	var err error
	m.store = store.New(proposer{m})
	raftDir := filepath.Join(cfg.StateDir, "raft")
	peers := []etcdraft.Peer{{ID: cfg.RaftID}}
	if cfg.ForceNewCluster && !hasRaftLog(raftDir) {
		return nil, fmt.Errorf("--force-new-cluster restarts a cluster from the state of one of its managers, but %s holds no raft log: run it with the state dir of a surviving manager", cfg.StateDir)
	}
	if m.joining = len(cfg.JoinAddrs) > 0 && !hasRaftLog(raftDir); m.joining {
		peers = nil // added by the leader, which sends the log
	}
	m.transport = raft.NewGRPCTransport(raft.TransportConfig{Dial: m.dialManager, Logger: cfg.Logger})
	m.raft, err = raft.New(raft.Config{
		ID:            cfg.RaftID,
		Dir:           raftDir,
		Peers:         peers,
		Addr:          cfg.AdvertiseAddr,
		Transport:     m.transport,
		TickInterval:  cfg.TickInterval,
		ElectionTick:  cfg.ElectionTick,
		HeartbeatTick: cfg.HeartbeatTick,
		DataKey:       cfg.DataKey,
		Logger:        cfg.Logger,
		StateMachine:  m.store,
		// Disaster recovery (swarmd --force-new-cluster).
		ForceNewCluster: cfg.ForceNewCluster,
	})
	if err != nil {
		return nil, err
	}
	m.forward = &forwarder{
		isLeader:    m.raft.IsLeader,
		leaderAddr:  m.raft.LeaderAddr,
		applied:     m.raft.AppliedIndex,
		waitApplied: m.raft.WaitApplied,
		dial:        m.dialManager,
	}
	m.control = controlapi.NewServer(m.store, unavailable)
	m.control.SetMembership(m.raft)
	m.watch = watchapi.NewServer(m.store)
	m.caServer = caserver.New(m.store, cfg.Logger)
	m.dispatcher = dispatcher.New(dispatcher.Config{
		Store:    m.store,
		Identify: identifyPeer,
		Managers: m.managerPeers,
		Leader:   m.raft.LeaderAddr,
		Logger:   cfg.Logger,
	})
	m.replicated = replicated.New(m.store, replicated.Config{Logger: cfg.Logger})
	m.global = global.New(m.store, global.Config{Logger: cfg.Logger})
	m.restarts = restart.New(m.store, restart.Config{Logger: cfg.Logger})
	m.reaper = taskreaper.New(m.store, taskreaper.Config{Logger: cfg.Logger})
	m.scheduler = scheduler.New(m.store, cfg.Logger)
	m.logs = logbroker.New(logbroker.Config{Store: m.store, Identify: identifyPeer, Logger: cfg.Logger})
	return m, nil
}

// identifyPeer is the calling node's ID, from its verified certificate.
func identifyPeer(ctx context.Context) (string, error) {
	id, ok := ca.IdentityFromContext(ctx)
	if !ok {
		return "", status.Error(codes.Unauthenticated, "a node certificate is required")
	}
	return id.NodeID, nil
}

// managerPeers lists the managers agents may connect to, leader first.
func (m *Manager) managerPeers() []*api.WeightedPeer {
	var out []*api.WeightedPeer
	m.store.View(func(tx store.ReadTx) {
		nodes, _ := store.Find[*api.Node](tx, store.ByRole(api.NodeRoleManager))
		for _, n := range nodes {
			if n.ManagerStatus == nil || n.ManagerStatus.Addr == "" ||
				n.ManagerStatus.Reachability == api.ReachabilityUnreachable {
				continue // agents would only waste attempts on it
			}
			p := &api.WeightedPeer{NodeID: n.ID, Addr: n.ManagerStatus.Addr, Weight: 1}
			if n.ManagerStatus.Leader {
				out = append([]*api.WeightedPeer{p}, out...)
			} else {
				out = append(out, p)
			}
		}
	})
	return out
}

// markReady closes Ready, once.
func (m *Manager) markReady() { m.readyOnce.Do(func() { close(m.ready) }) }

// followerReady closes Ready for a manager that follows: once a leader is
// known and this manager's store holds the cluster (it has caught up far
// enough to serve reads and forward writes). It returns then, or when ctx
// ends.
func (m *Manager) followerReady(ctx context.Context) error {
	for {
		var has bool
		m.store.View(func(tx store.ReadTx) { n, _ := store.Count(tx, api.KindCluster, store.All()); has = n > 0 })
		if has && m.raft.Leader() != 0 {
			m.markReady()
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.ready:
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// dialManager opens an mTLS connection to another manager's remote API.
func (m *Manager) dialManager(_ context.Context, addr string) (*grpc.ClientConn, error) {
	if m.cfg.Credentials == nil {
		return nil, errors.New("manager: no TLS credentials to reach other managers")
	}
	return grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(m.cfg.Credentials.ClientTLSConfig())),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(api.MaxControlMessageBytes)))
}

// hasRaftLog reports whether dir holds a raft log (this member has been
// part of a cluster).
func hasRaftLog(dir string) bool {
	entries, err := os.ReadDir(filepath.Join(dir, "wal"))
	return err == nil && len(entries) > 0
}

// join asks the managers at JoinAddrs to add this manager to raft, then
// tells the transport where the members are (the leader then sends the
// log or a snapshot).
func (m *Manager) join(ctx context.Context) error {
	resp, err := m.joinRaft(ctx, m.cfg.JoinAddrs)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("join the managers: %w", err)
	}
	for _, mem := range resp.Members {
		if mem.RaftID != m.cfg.RaftID {
			m.transport.SetPeer(mem.RaftID, mem.Addr)
		}
	}
	m.log.Info("joined the managers", "members", len(resp.Members), "leader", fmt.Sprintf("%x", resp.Leader))
	return m.confirmJoin(ctx)
}

// confirmJoin waits until this manager's node records its raft ID: the
// leader writes it after answering the join, and a leader change in between
// loses that write. Then it joins again (a no-op for raft), so that the new
// leader records it.
func (m *Manager) confirmJoin(ctx context.Context) error {
	const check, rejoinAfter = time.Second, 10 * time.Second
	since := time.Now()
	for {
		var recorded bool
		m.store.View(func(tx store.ReadTx) {
			n := store.Get[*api.Node](tx, m.cfg.NodeID)
			recorded = n != nil && n.ManagerStatus != nil && n.ManagerStatus.RaftID == m.cfg.RaftID
		})
		if recorded {
			return nil
		}
		if time.Since(since) >= rejoinAfter {
			m.log.Info("the leader has not recorded this manager yet; joining again")
			if _, err := m.joinRaft(ctx, m.cfg.JoinAddrs); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				m.log.Warn("joining again failed", "error", err)
			}
			since = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(check):
		}
	}
}

// proposer lets the store be built before the raft node it proposes to.
type proposer struct{ m *Manager }

func (p proposer) Propose(ctx context.Context, data []byte) error { return p.m.raft.Propose(ctx, data) }

// Store is the manager's replicated store.
func (m *Manager) Store() *store.MemoryStore { return m.store }

// Ready is closed once this manager leads and has registered itself.
func (m *Manager) Ready() <-chan struct{} { return m.ready }

// unavailable recognises write-path errors that mean "cannot write now".
func unavailable(err error) (string, bool) {
	switch {
	case errors.Is(err, raft.ErrNotLeader):
		return "no leader: the cluster has not elected a leader yet or has lost quorum; retry shortly", true
	case errors.Is(err, raft.ErrLeadershipLost):
		return "this manager lost the leadership (partitioned from the others, or a new election) before the write was applied: it may or may not have been made; read it back, then retry", true
	case errors.Is(err, raft.ErrStopped):
		return "this manager is shutting down", true
	case errors.Is(err, syscall.ENOSPC):
		return fmt.Sprintf("cannot write: %v", err), true
	}
	var se *raft.StorageError
	if errors.As(err, &se) {
		return fmt.Sprintf("cannot write: %v", err), true
	}
	return "", false
}

// Run serves until ctx ends or a component fails; it always stops every
// component it started before returning.
func (m *Manager) Run(ctx context.Context) error {
	sock, err := listenUnix(m.cfg.ControlSocket)
	if err != nil {
		return err
	}
	local := grpc.NewServer(grpc.ChainUnaryInterceptor(m.forward.unary))
	api.RegisterControlServer(local, m.control)
	api.RegisterWatchServer(local, m.watch)
	api.RegisterLogsServer(local, m.logs)
	healthpb.RegisterHealthServer(local, m.health)

	var remote *grpc.Server
	if m.cfg.RemoteListener != nil {
		if m.cfg.Credentials == nil {
			sock.Close()
			return errors.New("manager: a remote listener needs TLS credentials")
		}
		policy := remotePolicy()
		remote = grpc.NewServer(
			grpc.Creds(credentials.NewTLS(m.cfg.Credentials.ServerTLSConfig())),
			grpc.ChainUnaryInterceptor(ca.UnaryAuthorizer(policy, m.clusterID, m.memberCheck, m.log), m.forward.unary),
			grpc.ChainStreamInterceptor(ca.StreamAuthorizer(policy, m.clusterID, m.memberCheck, m.log)),
		)
		registerRemote(remote, m)
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return m.raft.Run(gctx) })
	g.Go(func() error {
		if err := local.Serve(sock); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("control API on %s: %w", m.cfg.ControlSocket, err)
		}
		return nil
	})
	if remote != nil {
		g.Go(func() error {
			if err := remote.Serve(m.cfg.RemoteListener); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				return fmt.Errorf("remote API on %s: %w", m.cfg.RemoteListener.Addr(), err)
			}
			return nil
		})
	}
	g.Go(func() error { return m.leadership(gctx) })
	g.Go(func() error { return m.followerReady(gctx) })
	if m.joining {
		g.Go(func() error { return m.join(gctx) })
	}
	g.Go(func() error { return m.applyClusterSettings(gctx) })
	g.Go(func() error {
		<-gctx.Done()
		m.health.Shutdown()
		stopServer(local)
		if remote != nil {
			stopServer(remote)
		}
		return nil
	})
	err = g.Wait()
	_ = os.Remove(m.cfg.ControlSocket)
	return err
}

// stopServer lets calls in flight finish, but not streams that would run
// forever (watches): after a grace period it closes them.
func stopServer(s *grpc.Server) {
	done := make(chan struct{})
	go func() {
		s.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		s.Stop()
		<-done
	}
}

// leaderLoops are the components that run only while this manager leads.
// They are built once and run again each term.
func (m *Manager) leaderLoops() []func(context.Context) error {
	return []func(context.Context) error{
		m.dispatcher.Run,
		m.replicated.Run,
		m.global.Run,
		m.restarts.Run,
		m.reaper.Run,
		m.scheduler.Run,
		m.logs.Run,
		m.syncMembership,
		m.manageRoles,
	}
}

// listenUnix listens on a fresh unix socket that only the owner can use.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control socket directory: %w", err)
	}
	// The caller holds the state-dir lock, so a socket file here is stale.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale control socket %s: %w", path, err)
	}
	// Create the socket with no group/other bits at all, rather than chmod
	// after the fact.
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return l, nil
}

// leaderRun is one term's run of the leader-only loops.
type leaderRun struct {
	cancel context.CancelFunc
	errc   chan error
}

func (m *Manager) startLeader(ctx context.Context) *leaderRun {
	lctx, cancel := context.WithCancel(ctx)
	r := &leaderRun{cancel: cancel, errc: make(chan error, 1)}
	go func() { r.errc <- m.runLeader(lctx) }()
	return r
}

// stop cancels the loops and waits for them.
func (r *leaderRun) stop() error {
	r.cancel()
	err := <-r.errc
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// leadership runs the leader-only loops exactly while this member is a
// caught-up leader (raft's Leadership.Ready), and stops them when that ends.
// A leader loop that fails ends Run: leadership must not go on with a dead loop.
func (m *Manager) leadership(ctx context.Context) error {
	var run *leaderRun
	stop := func() {
		if run == nil {
			return
		}
		if err := run.stop(); err != nil {
			m.log.Warn("leader loops ended with an error while stopping", "err", err)
		}
		run = nil
		m.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	}
	defer stop()
	for {
		l, changed := m.raft.Leadership()
		if l.Ready && run == nil {
			run = m.startLeader(ctx)
		} else if !l.Ready && run != nil {
			m.log.Info("no longer leading; stopping leader loops", "leader", fmt.Sprintf("%x", l.Leader))
			stop()
		}
		var failed <-chan error
		if run != nil {
			failed = run.errc
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		case err := <-failed:
			run.errc <- err // for stop to collect
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("leader loop failed: %w", err)
		}
	}
}

// runLeader runs while this member leads, after everything committed before
// the election has been applied.
func (m *Manager) runLeader(ctx context.Context) error {
	if err := m.bootstrap(ctx); err != nil {
		return err
	}
	m.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	m.markReady()
	m.log.Info("leading the cluster", "raft.id", fmt.Sprintf("%x", m.cfg.RaftID))
	// Every leader-only loop runs under this group: one that fails ends the
	// term's run, and Manager.leadership turns that into a failed manager.
	g, gctx := errgroup.WithContext(ctx)
	for _, loop := range m.leaderLoops() {
		g.Go(func() error { return loop(gctx) })
	}
	if err := g.Wait(); err != nil && ctx.Err() == nil {
		return err
	}
	return ctx.Err()
}
