package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager"
)

// Role switching. A node runs a manager component exactly while its
// certificate says manager; the cluster decides the role (the role manager,
// a leader loop, after `swarmctl node promote/demote`) and the CA signs it
// into the certificate when the node renews. The node follows without a
// restart:
//
//   - its agent's session shows the node record with the new Role: the node
//     renews its certificate at once (roleSwitch.nodeChanged);
//   - promoted (the certificate now says manager): it starts a manager
//     component with a new raft ID (saved in node.json before use; IDs are
//     random, so a removed one is never used again) and an empty raft dir,
//     which joins raft through the managers the node knows; the agent keeps
//     its session and its tasks;
//   - demoted: the leader removed its raft member first; the manager
//     component stops as soon as it learns that (Manager.Removed), and once
//     the certificate says worker its raft dir is moved aside (raft.removed,
//     the last one kept) and its raft ID forgotten. The agent re-homes to
//     another manager; tasks keep running.
//
// A crash at any point restarts into a state this loop completes: a manager
// certificate with a removed raft member starts that member, which learns it
// was removed and is stopped; a worker certificate with a leftover raft dir
// runs no manager, and a later promotion moves the dir aside.

// roleRenewRetry bounds the wait before renewing again when the certificate
// still does not show the node's role (the manager asked lagged behind).
const (
	roleRenewFirstRetry = 500 * time.Millisecond
	roleRenewMaxRetry   = 10 * time.Second
)

// roleSwitch is the node's side of role changes: what the loop needs beyond
// Node's fields.
type roleSwitch struct {
	once    sync.Once
	changed chan struct{} // capacity 1: the node record or the certificate changed

	// executor describes the node to a manager started on promotion.
	executor exec.Executor

	mu   sync.Mutex
	node *api.Node // the last node record the agent got
	// advertise is the running manager component's remote API address.
	advertise string

	renewMu sync.Mutex // one renewal at a time
}

func (r *roleSwitch) init() { r.once.Do(func() { r.changed = make(chan struct{}, 1) }) }

func (r *roleSwitch) signal() {
	r.init()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// nodeChanged is the agent's NodeChanged: it keeps the record and wakes the
// role loop when the role in it may differ from the certificate's.
func (n *Node) nodeChanged(node *api.Node) {
	r := &n.roles
	r.mu.Lock()
	old := r.node
	r.node = node
	r.mu.Unlock()
	if old == nil || old.Role != node.Role || old.Spec.DesiredRole != node.Spec.DesiredRole || node.Role != n.creds.Identity().Role {
		r.signal()
	}
}

func (r *roleSwitch) lastNode() *api.Node {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.node
}

// managerComponent is a manager run by the role loop.
type managerComponent struct {
	mgr    *manager.Manager
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func runManager(ctx context.Context, mgr *manager.Manager) *managerComponent {
	cctx, cancel := context.WithCancel(ctx)
	c := &managerComponent{mgr: mgr, cancel: cancel, done: make(chan struct{})}
	go func() {
		c.err = mgr.Run(cctx)
		close(c.done)
	}()
	return c
}

func (c *managerComponent) stop() error {
	c.cancel()
	<-c.done
	return c.err
}

func (c *managerComponent) removed() bool {
	select {
	case <-c.mgr.Removed():
		return true
	default:
		return false
	}
}

// runRoles owns the node's manager component (mgr, started by Start, or
// nil) until ctx ends, switching it on and off as the certificate's role
// changes. A manager that fails on its own fails the node, as before.
func (n *Node) runRoles(ctx context.Context, mgr *manager.Manager) error {
	r := &n.roles
	r.init()
	var mc *managerComponent
	if mgr != nil {
		mc = runManager(ctx, mgr)
	}
	defer func() {
		if mc != nil {
			if err := mc.stop(); err != nil {
				n.log.Warn("manager ended with an error while stopping", "err", err)
			}
		}
	}()
	var (
		removed    bool // the manager was stopped because raft removed it
		renewAfter time.Time
		renewWait  = roleRenewFirstRetry
		timer      = time.NewTimer(time.Hour)
	)
	defer timer.Stop()
	for {
		if ctx.Err() != nil {
			return nil
		}
		me := n.creds.Identity()
		node := r.lastNode()

		if mc != nil && mc.removed() {
			n.log.Warn("this manager was removed from raft (demoted, or removed from the cluster): stopping the manager component")
			n.stopManager(mc)
			mc, removed = nil, true
		}
		switch {
		case me.Role == api.NodeRoleWorker && mc != nil:
			n.log.Info("this node's certificate says worker now: stopping the manager component")
			n.stopManager(mc)
			mc = nil
			fallthrough
		case me.Role == api.NodeRoleWorker:
			if n.currentState().RaftID != 0 {
				if err := n.retireRaftState(); err != nil {
					n.log.Error("cannot move the raft state of the former manager aside; will retry", "err", err)
				}
				// Workers are never locked: a demoted manager's keys
				// are stored in the clear (as autolock off does).
				if changed, err := n.keys.Lock(nil); err != nil {
					n.log.Error("cannot unseal the keys of the former manager; a restart needs --unlock-key until it is done", "err", err)
				} else if changed {
					n.log.Info("demoted: this node's keys are no longer sealed with the cluster's unlock key")
				}
			}
			removed = false
		case mc == nil && (!removed || wantsManager(node)):
			// Promoted (or, removed from raft, promoted again at once).
			started, err := n.startPromotedManager(ctx)
			if err != nil {
				return fmt.Errorf("this node was promoted to manager, but its manager cannot start: %w", err)
			}
			mc, removed = started, false
		}

		// Renew at once when the cluster's role is not the certificate's.
		if node != nil && node.Role != me.Role && !time.Now().Before(renewAfter) {
			n.log.Info("the cluster changed this node's role: renewing the certificate", "role", node.Role.String(), "certificate_role", me.Role.String())
			err := n.renewNow(ctx)
			if after := n.creds.Identity().Role; err != nil || after != node.Role {
				if err == nil {
					err = fmt.Errorf("the certificate still says %s", after)
				}
				n.log.Warn("renewing the certificate for the node's new role; will retry", "err", err, "in", renewWait)
				renewAfter = time.Now().Add(renewWait)
				renewWait = min(2*renewWait, roleRenewMaxRetry)
			} else {
				renewWait = roleRenewFirstRetry
			}
			continue // the role changed: look again
		}

		var (
			mgrDone    <-chan struct{}
			mgrRemoved <-chan struct{}
		)
		if mc != nil {
			mgrDone, mgrRemoved = mc.done, mc.mgr.Removed()
		}
		timer.Reset(max(time.Until(renewAfter), time.Millisecond))
		if node == nil || node.Role == me.Role {
			timer.Reset(time.Hour)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.changed:
		case <-mgrRemoved:
		case <-timer.C:
		case <-mgrDone:
			if ctx.Err() != nil {
				return nil
			}
			if mc.err == nil {
				mc.err = errors.New("the manager stopped on its own")
			}
			return mc.err
		}
	}
}

// wantsManager: the cluster still has the node as a manager that stays one.
func wantsManager(node *api.Node) bool {
	return node != nil && node.Role == api.NodeRoleManager && node.Spec.DesiredRole == api.NodeRoleManager
}

// stopManager stops the manager component and forgets it.
func (n *Node) stopManager(mc *managerComponent) {
	if err := mc.stop(); err != nil && !errors.Is(err, context.Canceled) {
		n.log.Warn("the manager ended with an error while stopping", "err", err)
	}
	n.mu.Lock()
	n.mgr = nil
	n.mu.Unlock()
	n.roles.mu.Lock()
	n.roles.advertise = ""
	n.roles.mu.Unlock()
}

func (n *Node) currentState() State {
	n.mu.Lock()
	defer n.mu.Unlock()
	return *n.state
}

// retiredRaftDir keeps the raft state of this node's last manager life.
const retiredRaftDir = "raft.removed"

// retireRaftState moves the raft dir of a manager that left raft aside (the
// previous one there is deleted) and forgets its raft ID, which is never
// used again.
func (n *Node) retireRaftState() error {
	dir := filepath.Join(n.cfg.StateDir, "raft")
	if _, err := os.Stat(dir); err == nil {
		aside := filepath.Join(n.cfg.StateDir, retiredRaftDir)
		if err := os.RemoveAll(aside); err != nil {
			return fmt.Errorf("remove %s: %w", aside, err)
		}
		if err := os.Rename(dir, aside); err != nil {
			return fmt.Errorf("move %s aside: %w", dir, err)
		}
		n.log.Info("moved the raft state of the former manager aside", "to", aside)
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	st := *n.state
	st.RaftID = 0
	if err := saveState(n.cfg.StateDir, &st); err != nil {
		return err
	}
	n.state = &st
	return nil
}

// startPromotedManager starts a manager component on a node that ran none:
// a new raft member, with a new raft ID and an empty raft dir, that joins raft
// through the managers the node knows.
func (n *Node) startPromotedManager(ctx context.Context) (*managerComponent, error) {
	if n.cfg.ListenRemoteAPI == "-" {
		// Before anything changes on disk.
		return nil, errors.New("a manager needs its remote API: restart swarmd with --listen-remote-api")
	}
	if err := n.retireRaftState(); err != nil {
		return nil, err
	}
	n.mu.Lock()
	st := *n.state
	st.RaftID = newRaftID()
	err := saveState(n.cfg.StateDir, &st)
	if err == nil {
		n.state = &st
	}
	n.mu.Unlock()
	if err != nil {
		return nil, err
	}
	remote, advertise, err := n.listenRemote()
	if err != nil {
		return nil, err
	}
	join := slices.DeleteFunc(slices.Clone(st.Managers), func(a string) bool { return a == advertise })
	if len(join) == 0 {
		remote.Close()
		return nil, fmt.Errorf("it knows no other manager to join raft through (%s lists none)", filepath.Join(n.cfg.StateDir, stateFile))
	}
	mgr, err := n.newManager(ctx, managerParts{
		executor: n.roles.executor, raftID: st.RaftID, join: join,
		rootCA: n.creds.RootCA(), rootKeyStored: func() {},
		remote: remote, advertise: advertise,
	})
	if err != nil {
		remote.Close()
		return nil, err
	}
	mc := runManager(ctx, mgr)
	n.mu.Lock()
	n.mgr = mgr
	n.mu.Unlock()
	n.roles.mu.Lock()
	n.roles.advertise = advertise
	n.roles.mu.Unlock()
	n.log.Info("promoted to manager: the manager component joins raft", "raft.id", fmt.Sprintf("%x", st.RaftID), "addr", advertise, "via", join)
	return mc, nil
}

// renewNow renews the certificate at once, through the managers the node
// knows, and wakes the role loop.
func (n *Node) renewNow(ctx context.Context) error {
	err := n.renew(ctx, n.renewTargets())
	n.roles.signal()
	return err
}

// renewTargets are the managers to renew through: this node's own manager
// while it runs, then the managers the agent last heard of (leader first).
func (n *Node) renewTargets() []string {
	n.roles.mu.Lock()
	own := n.roles.advertise
	n.roles.mu.Unlock()
	st := n.currentState()
	out := make([]string, 0, len(st.Managers)+1)
	if own != "" {
		out = append(out, own)
	}
	for _, a := range st.Managers {
		if a != own {
			out = append(out, a)
		}
	}
	return out
}
