//go:build linux

package hostnet

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flotilla/flotilla/api"
)

// linkUpTimeout bounds the wait for a new veth to come up.
const linkUpTimeout = 3 * time.Second

// Manager is a node's task network (see the package doc). Its methods are
// safe for concurrent use; they are serialised.
type Manager struct {
	cfg      Config
	log      *slog.Logger
	gateway  netip.Prefix // the bridge's address
	netnsDir string
	state    stateStore
	nft      *nftTable

	mu     sync.Mutex
	closed bool
	gone   bool     // torn down
	lock   *os.File // flock of StateDir/lock, held until Close
	bridge netlink.Link
	recs   map[string]*record
	addrs  *addrPool
	ports  *portTable
}

// New sets up the node's task network, or adopts the one a previous swarmd
// left (running tasks keep theirs): the bridge with the gateway address,
// IPv4 forwarding, route_localnet on the bridge, the nftables table, the
// records of attached tasks and their ports. It fails, leaving nothing it
// made behind, if the subnet overlaps a route or an address of the host
// (*SubnetConflictError).
func New(ctx context.Context, cfg Config) (_ *Manager, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m := &Manager{
		cfg:      cfg,
		log:      cfg.Logger,
		gateway:  netip.PrefixFrom(gatewayOf(cfg.Subnet), cfg.Subnet.Bits()),
		netnsDir: filepath.Join(cfg.StateDir, "netns"),
		state:    stateStore{dir: filepath.Join(cfg.StateDir, "tasks")},
		recs:     make(map[string]*record),
		addrs:    newAddrPool(cfg.Subnet),
		ports:    newPortTable(cfg.PortRange),
	}
	// A failed New undoes what it did.
	var (
		stateDirMade, tableMade, bridgeMade bool
		bridge                              netlink.Link
	)
	defer func() {
		if err == nil {
			return
		}
		m.ports.closeSockets()
		if tableMade {
			_ = m.nft.delete()
		}
		if bridgeMade {
			_ = netlink.LinkDel(bridge)
		}
		if stateDirMade {
			_ = os.RemoveAll(cfg.StateDir)
		}
		if m.lock != nil {
			m.lock.Close()
		}
	}()
	if _, serr := os.Stat(cfg.StateDir); errors.Is(serr, fs.ErrNotExist) {
		stateDirMade = true
	}
	for _, d := range []string{m.netnsDir, m.state.dir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("node network state: %w", err)
		}
	}
	if m.lock, err = lockStateDir(cfg.StateDir); err != nil {
		stateDirMade = false // another Manager's
		return nil, err
	}
	recs, err := m.state.load()
	if err != nil {
		return nil, err
	}

	bridgeIndex := 0
	if l, err := netlink.LinkByName(cfg.BridgeName); err == nil {
		bridgeIndex = l.Attrs().Index
	}
	if err := checkSubnet(cfg.Subnet, bridgeIndex); err != nil {
		return nil, err
	}
	if m.nft, err = newNFTTable(cfg.BridgeName, cfg.Subnet); err != nil {
		return nil, err
	}
	tableMade = !m.nft.exists() // made below, by program

	if bridge, bridgeMade, err = ensureBridge(cfg.BridgeName, m.gateway, cfg.StateDir); err != nil {
		tableMade = false
		return nil, err
	}
	m.bridge = bridge
	// Forwarding between the bridge and the host's other links; and
	// 127.0.0.1:P -> task, whose packets leave through the bridge with a
	// loopback source after the output DNAT (masqueraded in postrouting).
	if err := setSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return nil, err
	}
	if err := setSysctl(filepath.Join("net/ipv4/conf", cfg.BridgeName, "route_localnet"), "1"); err != nil {
		return nil, err
	}
	if err := m.nft.program(); err != nil {
		return nil, err
	}

	var want []portElement
	for id, r := range recs {
		m.recs[id] = r
		if err := m.addrs.claim(r.Address, id); err != nil {
			m.log.Warn("attached task's address is not usable; the task's network will be made again or removed", "task.id", id, "err", err)
			continue
		}
		for _, p := range r.Ports {
			if err := m.ports.adopt(p.key(), id); err != nil {
				m.log.Warn("attached task's published port cannot be reserved", "task.id", id, "port", p.key().String(), "err", err)
			}
		}
		want = append(want, elementsOf(r)...)
	}
	// The map gets exactly the recorded tasks' ports: elements of tasks
	// detached while swarmd was down (or by hand) go.
	if err := m.nft.sync(want, func(portElement) bool { return true }); err != nil {
		return nil, err
	}
	m.log.Info("node task network ready", "bridge", cfg.BridgeName, "subnet", cfg.Subnet.String(),
		"gateway", m.gateway.Addr().String(), "bridge.created", bridgeMade, "tasks", len(recs))
	return m, nil
}

// Attach gives the task its network: a namespace, a veth on the bridge, an
// address, a default route, and its host-mode published ports (others are
// ignored). A port already published by another task on this node, or bound
// by a host process, is a *PortConflictError. For a task attached before
// (this swarmd or an earlier one) it returns that attachment, after putting
// back whatever is missing of it. A failed Attach leaves nothing behind.
func (m *Manager) Attach(ctx context.Context, taskID string, ports []*api.PortConfig) (*Attachment, error) {
	if err := validTaskID(taskID); err != nil {
		return nil, err
	}
	want, err := hostPorts(ports)
	if err != nil {
		return nil, fmt.Errorf("task %s: %w", taskID, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	if r, ok := m.recs[taskID]; ok {
		a, err := m.adopt(r)
		if err == nil {
			if !samePorts(r.Ports, want) {
				m.log.Warn("task attached again with other ports; it keeps those it has", "task.id", taskID)
			}
			return a, nil
		}
		m.log.Info("task's network is incomplete (swarmd or the node stopped while it was made); making it again", "task.id", taskID, "err", err)
		if err := m.detach(taskID); err != nil {
			return nil, fmt.Errorf("task %s: remove incomplete network: %w", taskID, err)
		}
	}
	return m.attach(taskID, want)
}

// attach makes a new attachment, undoing every step if one fails.
func (m *Manager) attach(taskID string, want []portRecord) (_ *Attachment, err error) {
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	r := &record{TaskID: taskID, Veth: vethName(m.cfg.BridgeName, taskID)}
	if r.Address, err = m.addrs.allocate(taskID); err != nil {
		return nil, err
	}
	undo = append(undo, func() { m.addrs.release(r.Address) })
	for _, p := range want {
		if p.Published == 0 {
			if p.Published, err = m.ports.takeAny(p.Protocol, taskID); err != nil {
				return nil, fmt.Errorf("task %s: %w", taskID, err)
			}
		} else if err = m.ports.take(p.key(), taskID); err != nil {
			return nil, fmt.Errorf("task %s: %w", taskID, err)
		}
		k := p.key()
		undo = append(undo, func() { m.ports.release(k) })
		r.Ports = append(r.Ports, p)
	}

	// The record first: a swarmd that stops in the middle finds it, and
	// cleans up (Attach again or Detach).
	if err = m.state.write(r); err != nil {
		return nil, err
	}
	m.recs[taskID] = r
	undo = append(undo, func() {
		delete(m.recs, taskID)
		if err := m.state.remove(taskID); err != nil {
			m.log.Error("remove record of failed attachment", "task.id", taskID, "err", err)
		}
	})

	nsPath := m.netnsPath(taskID)
	// Remnants of an attempt whose record is gone (they would be in the way).
	if err = errors.Join(deleteLink(r.Veth), removeNetNS(nsPath)); err != nil {
		return nil, err
	}
	if err = createNetNS(nsPath); err != nil {
		return nil, fmt.Errorf("task %s: %w", taskID, err)
	}
	undo = append(undo, func() {
		if err := removeNetNS(nsPath); err != nil {
			m.log.Error("remove namespace of failed attachment", "task.id", taskID, "err", err)
		}
	})
	if err = newVeth(m.bridge, r.Veth, taskID, nsPath, taskIfName, r.Address.Addr()); err != nil {
		return nil, fmt.Errorf("task %s: %w", taskID, err)
	}
	undo = append(undo, func() {
		if err := deleteLink(r.Veth); err != nil {
			m.log.Error("remove veth of failed attachment", "task.id", taskID, "err", err)
		}
	})
	if err = configureTaskLink(nsPath, taskIfName, r.Address, m.gateway.Addr()); err != nil {
		return nil, fmt.Errorf("task %s: %w", taskID, err)
	}
	if err = waitLinkUp(nsPath, taskIfName, r.Veth, linkUpTimeout); err != nil {
		return nil, fmt.Errorf("task %s: %w", taskID, err)
	}
	owned := func(e portElement) bool { return e.taskID == taskID }
	if err = m.nft.sync(elementsOf(r), owned); err != nil {
		return nil, fmt.Errorf("task %s: %w", taskID, err)
	}
	undo = append(undo, func() {
		if err := m.nft.sync(nil, owned); err != nil {
			m.log.Error("remove published ports of failed attachment", "task.id", taskID, "err", err)
		}
	})
	for _, p := range r.Ports {
		if err := forgetPortFlows(p.key()); err != nil {
			m.log.Debug("clear conntrack entries of published port", "task.id", taskID, "port", p.key().String(), "err", err)
		}
	}
	m.log.Debug("task attached", "task.id", taskID, "address", r.Address.String(), "ports", len(r.Ports))
	return m.attachment(r), nil
}

// adopt checks that a recorded attachment is whole (namespace mounted, veth
// on the bridge, address of the subnet) and puts back what can be missing
// after a restart: the interface's configuration, the published ports in the
// map, the port sockets.
func (m *Manager) adopt(r *record) (*Attachment, error) {
	nsPath := m.netnsPath(r.TaskID)
	if owner, ok := m.addrs.used[r.Address.Addr()]; !ok || owner != r.TaskID {
		return nil, fmt.Errorf("address %s is not a task address of %s", r.Address, m.cfg.Subnet)
	}
	if !isNetNS(nsPath) {
		return nil, fmt.Errorf("no network namespace mounted at %s", nsPath)
	}
	if !hostLinkOK(r.Veth, m.bridge.Attrs().Index) {
		return nil, fmt.Errorf("veth %s is missing or not on bridge %s", r.Veth, m.cfg.BridgeName)
	}
	if err := configureTaskLink(nsPath, taskIfName, r.Address, m.gateway.Addr()); err != nil {
		return nil, err
	}
	for _, p := range r.Ports {
		if err := m.ports.adopt(p.key(), r.TaskID); err != nil {
			m.log.Warn("attached task's published port cannot be reserved", "task.id", r.TaskID, "port", p.key().String(), "err", err)
		}
	}
	if err := m.nft.sync(elementsOf(r), func(e portElement) bool { return e.taskID == r.TaskID }); err != nil {
		return nil, err
	}
	return m.attachment(r), nil
}

// Detach removes the task's network: its published ports, its conntrack
// entries, the veth, the namespace (unmounted; it goes when the last process
// in it does) and the record, which frees the address and the ports. It also
// cleans up after an attachment that has no record any more. Detaching a
// task that has no network is not an error.
func (m *Manager) Detach(ctx context.Context, taskID string) error {
	if err := validTaskID(taskID); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	return m.detach(taskID)
}

// detach is Detach under the lock. If a step fails the record stays, so
// that the address and the ports are not given to another task, and a
// later Detach finishes the work.
func (m *Manager) detach(taskID string) error {
	r := m.recs[taskID]
	owned := func(e portElement) bool {
		return e.taskID == taskID || (r != nil && e.addr == r.Address.Addr())
	}
	err := errors.Join(
		m.nft.sync(nil, owned),
		deleteLink(vethName(m.cfg.BridgeName, taskID)),
		removeNetNS(m.netnsPath(taskID)),
	)
	if err != nil {
		return fmt.Errorf("detach task %s: %w", taskID, err)
	}
	if r == nil {
		return nil
	}
	// Conntrack entries of UDP flows to the task would keep sending a client
	// that keeps sending to its address (given to the next task). TCP flows
	// end with a reset; the dump costs ~20 µs per tracked flow, so it is
	// only done when needed.
	if slices.ContainsFunc(r.Ports, func(p portRecord) bool { return p.Protocol != "tcp" }) {
		if err := forgetTaskFlows(r.Address.Addr()); err != nil {
			m.log.Debug("clear conntrack entries of task", "task.id", taskID, "err", err)
		}
	}
	if err := m.state.remove(taskID); err != nil {
		return fmt.Errorf("detach task %s: %w", taskID, err)
	}
	for _, p := range r.Ports {
		if m.ports.owner[p.key()] == taskID {
			m.ports.release(p.key())
		}
	}
	if m.addrs.used[r.Address.Addr()] == taskID {
		m.addrs.release(r.Address)
	}
	delete(m.recs, taskID)
	m.log.Debug("task detached", "task.id", taskID)
	return nil
}

// Attachments lists the tasks that have a network on this node (a record or
// a namespace), sorted, so that the agent can detach those it no longer
// runs.
func (m *Manager) Attachments() ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	return m.taskIDs()
}

func (m *Manager) taskIDs() ([]string, error) {
	ids := make([]string, 0, len(m.recs))
	for id := range m.recs {
		ids = append(ids, id)
	}
	entries, err := os.ReadDir(m.netnsDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("list network namespaces: %w", err)
	}
	for _, e := range entries {
		if _, ok := m.recs[e.Name()]; !ok && validTaskID(e.Name()) == nil {
			ids = append(ids, e.Name())
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// Close releases the Manager's handles (the port sockets) and tears nothing
// down: tasks keep their network, and a new Manager on the same Config
// adopts it. Later calls return ErrClosed.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed {
		m.closed = true
		m.ports.closeSockets()
		m.lock.Close()
	}
	return nil
}

// Teardown removes every task's network, the nftables table, the bridge and
// the state directory's contents: for tests, and for a node that leaves the
// cluster. It works on a closed Manager too (if no other Manager has the
// state directory); the Manager is closed after.
func (m *Manager) Teardown(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.gone {
		return nil
	}
	if m.closed {
		// Closed: take the state directory again, unless a newer Manager
		// has it.
		if err := os.MkdirAll(m.cfg.StateDir, 0o700); err != nil {
			return fmt.Errorf("tear down node network: %w", err)
		}
		lock, err := lockStateDir(m.cfg.StateDir)
		if err != nil {
			return fmt.Errorf("tear down node network: %w", err)
		}
		m.lock = lock
	}
	m.closed = true
	defer m.lock.Close()
	ids, err := m.taskIDs()
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := m.detach(id); err != nil {
			errs = append(errs, err)
		}
	}
	m.ports.closeSockets()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("tear down node network: %w", err)
	}
	if err := m.nft.delete(); err != nil {
		return err
	}
	if err := deleteLink(m.cfg.BridgeName); err != nil {
		return err
	}
	if err := errors.Join(os.RemoveAll(m.netnsDir), os.RemoveAll(m.state.dir), os.Remove(m.lock.Name())); err != nil {
		return fmt.Errorf("remove node network state: %w", err)
	}
	_ = os.Remove(m.cfg.StateDir) // only if nothing else is in it
	m.gone = true
	m.log.Info("node task network removed", "bridge", m.cfg.BridgeName)
	return nil
}

// lockStateDir takes an exclusive flock of dir/lock: one Manager per state
// directory at a time, in this process or another.
func lockStateDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("node network state: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("node network state %s is in use by another swarmd (or an unclosed hostnet.Manager): give each node its own state directory", dir)
		}
		return nil, fmt.Errorf("lock node network state %s: %w", dir, err)
	}
	return f, nil
}

func (m *Manager) netnsPath(taskID string) string { return filepath.Join(m.netnsDir, taskID) }

func (m *Manager) attachment(r *record) *Attachment {
	a := &Attachment{NetNSPath: m.netnsPath(r.TaskID), Address: r.Address, Gateway: m.gateway.Addr()}
	for _, p := range r.Ports {
		a.Ports = append(a.Ports, p.config())
	}
	return a
}

func elementsOf(r *record) []portElement {
	out := make([]portElement, 0, len(r.Ports))
	for _, p := range r.Ports {
		out = append(out, portElement{key: p.key(), addr: r.Address.Addr(), target: p.Target, taskID: r.TaskID})
	}
	return out
}

// hostPorts validates a task's ports and keeps the host-mode ones.
func hostPorts(ports []*api.PortConfig) ([]portRecord, error) {
	var out []portRecord
	seen := make(map[portKey]bool)
	for _, p := range ports {
		if p == nil || p.PublishMode != api.PublishModeHost {
			continue
		}
		proto, err := protocolName(p.Protocol)
		if err != nil {
			return nil, err
		}
		if p.TargetPort == 0 || p.TargetPort > 65535 {
			return nil, fmt.Errorf("published port: target port %d: want 1-65535", p.TargetPort)
		}
		if p.PublishedPort > 65535 {
			return nil, fmt.Errorf("published port %d: want 1-65535, or 0 for a free one", p.PublishedPort)
		}
		r := portRecord{Name: p.Name, Protocol: proto, Target: uint16(p.TargetPort), Published: uint16(p.PublishedPort)}
		if r.Published != 0 {
			if seen[r.key()] {
				return nil, fmt.Errorf("host port %s is published twice", r.key())
			}
			seen[r.key()] = true
		}
		out = append(out, r)
	}
	return out, nil
}

// samePorts reports whether an attachment's ports are what a new request
// asks for (a requested 0 matches any published port).
func samePorts(have, want []portRecord) bool {
	if len(have) != len(want) {
		return false
	}
	for i := range have {
		h, w := have[i], want[i]
		if h.Protocol != w.Protocol || h.Target != w.Target || (w.Published != 0 && h.Published != w.Published) {
			return false
		}
	}
	return true
}
