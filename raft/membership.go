package raft

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// Membership. The voters are raft's (its ConfState); this file keeps what raft does not: every
// voter's address and the set of raft IDs ever removed. Both are replicated state: they change
// only when a conf change entry is applied (ConfChangeAddNode carries the address in its
// Context), so every member computes the same, and they survive log compaction in the snapshot
// envelope (see encodeSnapshot). A removed ID is never a voter again: AddMember refuses it, and
// were such an entry ever committed every member would apply it as a no-op.

var (
	// ErrMemberRemoved: the raft ID was removed from the cluster; removed IDs are never reused.
	ErrMemberRemoved = errors.New("raft: this raft ID was removed from the cluster and cannot be reused")
	// ErrWouldLoseQuorum: the membership change would leave fewer reachable voters than a quorum.
	ErrWouldLoseQuorum = errors.New("raft: the change would leave the cluster without a quorum of reachable managers")
	// ErrUnknownMember: no voter has that raft ID.
	ErrUnknownMember = errors.New("raft: no member has this raft ID")
	// errConfChangePending: raft refused a conf change because another one is not applied yet.
	errConfChangePending = errors.New("raft: another membership change is in progress")
	// errReachabilityUnknown: this node became leader too recently to know who is reachable.
	errReachabilityUnknown = errors.New("raft: the leader is too new to know which members are reachable")
)

// Member is one manager in the raft membership.
type Member struct {
	ID   uint64
	Addr string // its remote API address (host:port), as given to AddMember / Config.Addr
	// Reachable as this node sees it: itself always; on the leader, a member it heard from
	// within the last ElectionTick ticks (and whose last message did not fail since); on a
	// follower, the leader while it hears from it (other members are not tracked there).
	Reachable bool
	Leader    bool
}

// membership is the Run loop's view of the members, written only by the loop (and New).
type membership struct {
	addrs   map[uint64]string   // address of each voter ("" when not known yet)
	removed map[uint64]struct{} // raft IDs ever removed

	ticks       uint64            // ticks handled since New
	heard       map[uint64]uint64 // tick of the last message received from each member
	unreachable map[uint64]uint64 // tick of the last failed send to each member

	// Conf change proposed by this node whose placement in the log is checked at the next Ready
	// (raft silently replaces a refused conf change with an empty entry).
	pendingCC uint64
	addrTerm  uint64 // term in which this node, as leader, checked its own address
	// leaderSince is the tick at which this node last became leader.
	leaderSince uint64
	// forceSnapshot: a member was added; snapshot at the next applied entry (see applyMembership).
	forceSnapshot bool
}

func newMembership() membership {
	return membership{
		addrs:       map[uint64]string{},
		removed:     map[uint64]struct{}{},
		heard:       map[uint64]uint64{},
		unreachable: map[uint64]uint64{},
	}
}

// snapshotMembership is the membership part of a snapshot envelope.
type snapshotMembership struct {
	Members []snapshotMember `json:"members"`
	Removed []uint64         `json:"removed,omitempty"`
}

type snapshotMember struct {
	ID   uint64 `json:"id"`
	Addr string `json:"addr,omitempty"`
}

// snapshotMagic starts a snapshot envelope. A protobuf or JSON encoding never starts with a zero
// byte, so a StateMachine snapshot written before envelopes existed is told apart.
var snapshotMagic = []byte{0, 'f', 'l', 'r', 'm', 1}

// encodeSnapshot wraps the StateMachine's snapshot with the membership:
// magic | uvarint length | membership JSON | state machine data.
func (ms *membership) encodeSnapshot(data []byte) []byte {
	sm := snapshotMembership{}
	for id, addr := range ms.addrs {
		sm.Members = append(sm.Members, snapshotMember{ID: id, Addr: addr})
	}
	slices.SortFunc(sm.Members, func(a, b snapshotMember) int { return cmpUint(a.ID, b.ID) })
	for id := range ms.removed {
		sm.Removed = append(sm.Removed, id)
	}
	slices.Sort(sm.Removed)
	meta, _ := json.Marshal(sm) // plain structs: cannot fail
	out := make([]byte, 0, len(snapshotMagic)+binary.MaxVarintLen64+len(meta)+len(data))
	out = append(out, snapshotMagic...)
	out = binary.AppendUvarint(out, uint64(len(meta)))
	out = append(out, meta...)
	return append(out, data...)
}

// decodeSnapshot splits a snapshot's data into membership and StateMachine data. A snapshot
// without an envelope (written before membership existed) has no addresses nor removed IDs.
func decodeSnapshot(b []byte) (*snapshotMembership, []byte, error) {
	if !bytes.HasPrefix(b, snapshotMagic) {
		return nil, b, nil
	}
	b = b[len(snapshotMagic):]
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return nil, nil, errors.New("raft: snapshot membership header is damaged")
	}
	var sm snapshotMembership
	if err := json.Unmarshal(b[k:k+int(n)], &sm); err != nil {
		return nil, nil, fmt.Errorf("raft: snapshot membership: %w", err)
	}
	return &sm, b[k+int(n):], nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// restoreMembership replaces the membership with a snapshot's (voters from its ConfState).
func (n *Node) restoreMembership(sm *snapshotMembership, cs raftpb.ConfState) {
	old := n.mem.addrs
	n.mem.addrs = map[uint64]string{}
	n.mem.removed = map[uint64]struct{}{}
	if sm != nil {
		for _, id := range sm.Removed {
			n.mem.removed[id] = struct{}{}
		}
		for _, m := range sm.Members {
			n.mem.addrs[m.ID] = m.Addr
		}
	}
	for _, id := range cs.Voters {
		if _, ok := n.mem.addrs[id]; !ok {
			n.mem.addrs[id] = old[id]
		}
	}
	for id := range n.mem.addrs {
		if !slices.Contains(cs.Voters, id) {
			delete(n.mem.addrs, id)
		}
	}
	if a := n.mem.addrs[n.id]; a == "" && n.cfg.Addr != "" && slices.Contains(cs.Voters, n.id) {
		n.mem.addrs[n.id] = n.cfg.Addr // a snapshot from before addresses were recorded
	}
	if pt, ok := n.cfg.Transport.(PeerTransport); ok {
		for id, addr := range n.mem.addrs {
			if id != n.id && addr != "" {
				pt.SetPeer(id, addr)
			}
		}
		for id := range n.mem.removed {
			pt.RemovePeer(id)
		}
	}
	if _, ok := n.mem.removed[n.id]; ok {
		n.markRemoved()
	}
	n.publishMembers()
}

// applyConfChange applies a committed conf change to raft and to the membership. A change that
// would reuse a removed ID, or remove the last voter, is applied as a no-op (NodeID 0), the same
// on every member.
func (n *Node) applyConfChange(index uint64, cc raftpb.ConfChange) *outcome {
	var refused error
	_, removed := n.mem.removed[cc.NodeID]
	switch {
	case cc.Type == raftpb.ConfChangeAddNode && removed, cc.Type == raftpb.ConfChangeAddLearnerNode && removed:
		refused = fmt.Errorf("%w: %x", ErrMemberRemoved, cc.NodeID)
	case cc.Type == raftpb.ConfChangeRemoveNode && len(n.confState.Voters) == 1 && n.confState.Voters[0] == cc.NodeID:
		refused = fmt.Errorf("raft: %x is the only member; it cannot be removed", cc.NodeID)
	}
	if refused != nil {
		n.lg.Warn("raft: conf change refused at apply", "index", index, "type", cc.Type.String(),
			"member", fmt.Sprintf("%x", cc.NodeID), "err", refused)
		nodeID := cc.NodeID
		cc.NodeID = 0
		n.confState = *n.rn.ApplyConfChange(cc)
		cc.NodeID = nodeID
	} else {
		n.confState = *n.rn.ApplyConfChange(cc)
		n.applyMembership(cc)
	}
	if cc.ID == 0 {
		return nil
	}
	return &outcome{id: cc.ID, err: refused}
}

func (n *Node) applyMembership(cc raftpb.ConfChange) {
	pt, _ := n.cfg.Transport.(PeerTransport)
	id := cc.NodeID
	switch cc.Type {
	case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode:
		addr := string(cc.Context)
		if addr == "" {
			addr = n.mem.addrs[id]
		}
		if old, ok := n.mem.addrs[id]; !ok || old != addr {
			n.lg.Info("raft: member added", "member", fmt.Sprintf("%x", id), "addr", addr, "previous_addr", old)
		}
		if _, ok := n.mem.addrs[id]; !ok && n.snapIndex > 0 {
			// The log is compacted, so the new member will be sent a snapshot, and raft makes a
			// member restore only a snapshot whose configuration has it: take one now.
			n.mem.forceSnapshot = true
		}
		n.mem.addrs[id] = addr
		if pt != nil && id != n.id && addr != "" {
			pt.SetPeer(id, addr)
		}
	case raftpb.ConfChangeRemoveNode:
		delete(n.mem.addrs, id)
		n.mem.removed[id] = struct{}{}
		delete(n.mem.heard, id)
		delete(n.mem.unreachable, id)
		if pt != nil {
			pt.RemovePeer(id)
		}
		n.lg.Info("raft: member removed", "member", fmt.Sprintf("%x", id))
		if id == n.id {
			n.markRemoved()
		}
	}
	n.publishMembers()
}

// reachable is the loop's view of whether member id can be reached (see Member.Reachable).
func (n *Node) reachable(id uint64) bool {
	if id == n.id {
		return true
	}
	if n.raftState != raft.StateLeader && id != n.lead {
		return false
	}
	heard, ok := n.mem.heard[id]
	if !ok || n.mem.ticks-heard > uint64(n.cfg.ElectionTick) {
		return false
	}
	if failed, ok := n.mem.unreachable[id]; ok && failed >= heard {
		return false
	}
	return true
}

// publishMembers computes Members for readers outside the loop.
func (n *Node) publishMembers() {
	out := make([]Member, 0, len(n.confState.Voters))
	for _, id := range n.confState.Voters {
		out = append(out, Member{ID: id, Addr: n.mem.addrs[id], Reachable: n.reachable(id), Leader: id == n.lead})
	}
	slices.SortFunc(out, func(a, b Member) int { return cmpUint(a.ID, b.ID) })
	if old := n.members.Load(); old != nil && slices.Equal(*old, out) {
		return
	}
	n.members.Store(&out)
}

// Members returns the voters, sorted by ID, as this node sees them.
func (n *Node) Members() []Member {
	if p := n.members.Load(); p != nil {
		return slices.Clone(*p)
	}
	return nil
}

// LeaderAddr returns the leader's address, "" when no leader (or its address) is known.
func (n *Node) LeaderAddr() string {
	lead := n.Leader()
	if lead == 0 {
		return ""
	}
	for _, m := range n.Members() {
		if m.ID == lead {
			return m.Addr
		}
	}
	return ""
}

// Removed returns a channel closed once this member knows it was removed from the cluster: it
// applied its own removal, or a member refused its messages as coming from a removed member.
// The caller should then stop the node; its raft ID is never valid again.
func (n *Node) Removed() <-chan struct{} { return n.removedc }

func (n *Node) isRemoved() bool {
	select {
	case <-n.removedc:
		return true
	default:
		return false
	}
}

func (n *Node) markRemoved() {
	n.removedOnce.Do(func() {
		n.lg.Warn("raft: this member was removed from the cluster; it no longer takes part in raft")
		close(n.removedc)
	})
}

// quorumAfter checks that the voters after a change keep a quorum of reachable members. It runs
// in the loop, on the leader.
func (n *Node) quorumAfter(voters []uint64, change string) error {
	reachable := 0
	for _, id := range voters {
		if n.reachable(id) {
			reachable++
		}
	}
	need := len(voters)/2 + 1
	if reachable >= need {
		return nil
	}
	if n.mem.ticks-n.mem.leaderSince <= uint64(n.cfg.ElectionTick) {
		// A new leader has not heard from every member yet: ask again in a tick.
		return errReachabilityUnknown
	}
	return fmt.Errorf("%w: %s would leave %d of %d managers reachable and needs %d for a quorum; bring the unreachable managers back (or remove an unreachable one) first",
		ErrWouldLoseQuorum, change, reachable, len(voters), need)
}

// AddMember adds a voter with its address (or updates the address of an existing one), on the
// leader only (ErrNotLeader otherwise), and returns once the change is applied on this node. A
// removed ID is refused with ErrMemberRemoved. Adding a new voter is refused with
// ErrWouldLoseQuorum when the reachable members would not be a quorum of the grown cluster until
// the new one catches up (etcd's strict reconfiguration check), except growing one member to two.
func (n *Node) AddMember(ctx context.Context, id uint64, addr string) error {
	if id == 0 {
		return errors.New("raft: AddMember: the raft ID must be non-zero")
	}
	if addr == "" {
		return errors.New("raft: AddMember: the member's address is required")
	}
	n.confMu.Lock()
	defer n.confMu.Unlock()
	return n.changeMembership(ctx, func() (*raftpb.ConfChange, error) {
		if _, ok := n.mem.removed[id]; ok {
			return nil, fmt.Errorf("%w: %x; give the manager a new raft ID (start it with an empty state)", ErrMemberRemoved, id)
		}
		voters := n.confState.Voters
		if slices.Contains(voters, id) {
			if n.mem.addrs[id] == addr {
				return nil, nil // already a member at that address
			}
		} else if len(voters) != 1 {
			after := append(slices.Clone(voters), id)
			if err := n.quorumAfter(after, fmt.Sprintf("adding member %x", id)); err != nil {
				return nil, err
			}
		}
		return &raftpb.ConfChange{Type: raftpb.ConfChangeAddNode, NodeID: id, Context: []byte(addr)}, nil
	})
}

// RemoveMember removes a voter, on the leader only. It is refused with ErrWouldLoseQuorum if the
// reachable members left would not be a quorum. Removing this node (the leader) first transfers
// leadership to the most up-to-date reachable member, then has the new leader remove it, and
// returns once this node applied its removal. Removing an ID already removed succeeds.
func (n *Node) RemoveMember(ctx context.Context, id uint64) error {
	n.confMu.Lock()
	defer n.confMu.Unlock()
	self := false
	err := n.changeMembership(ctx, func() (*raftpb.ConfChange, error) {
		if _, ok := n.mem.removed[id]; ok {
			return nil, nil
		}
		voters := n.confState.Voters
		if !slices.Contains(voters, id) {
			return nil, fmt.Errorf("%w: %x", ErrUnknownMember, id)
		}
		if len(voters) == 1 {
			return nil, fmt.Errorf("raft: %x is the only member; it cannot be removed", id)
		}
		after := slices.DeleteFunc(slices.Clone(voters), func(v uint64) bool { return v == id })
		if err := n.quorumAfter(after, fmt.Sprintf("removing member %x", id)); err != nil {
			return nil, err
		}
		if id == n.id {
			self = true
			return nil, nil
		}
		return &raftpb.ConfChange{Type: raftpb.ConfChangeRemoveNode, NodeID: id}, nil
	})
	if err != nil || !self {
		return err
	}
	return n.removeSelf(ctx)
}

// removeSelf hands leadership over, then asks the new leader to remove this member, and waits
// until this node applied its removal.
func (n *Node) removeSelf(ctx context.Context) error {
	if err := n.TransferLeadership(ctx, 0); err != nil {
		return fmt.Errorf("raft: removing the leader: %w", err)
	}
	lf, ok := n.cfg.Transport.(leaveForwarder)
	if !ok {
		return errors.New("raft: removing the leader needs a transport that reaches the new leader")
	}
	for {
		addr := n.LeaderAddr()
		var err error
		if addr != "" && n.Leader() != n.id {
			err = lf.forwardLeave(ctx, addr, n.id)
			if err == nil {
				break
			}
			n.lg.Warn("raft: asking the new leader to remove this member", "leader", addr, "err", err)
			if errors.Is(err, ErrWouldLoseQuorum) {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("raft: removing the leader: leadership was handed over, but the new leader (%q) did not remove this member: %w", addr, ctx.Err())
		case <-n.done:
			return ErrStopped
		case <-time.After(n.cfg.TickInterval):
		}
	}
	select {
	case <-n.removedc:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("raft: the new leader removed this member, but this node has not applied it yet: %w", ctx.Err())
	case <-n.done:
		return ErrStopped
	}
}

// changeMembership runs decide in the loop (on the leader, with raft's state) and proposes the
// conf change it returns (none: done), then waits until it is applied here. A change raft
// refuses because another one is not applied yet is retried.
func (n *Node) changeMembership(ctx context.Context, decide func() (*raftpb.ConfChange, error)) error {
	for {
		var done <-chan error
		var id uint64
		err := n.inLoop(ctx, func() error {
			if err := n.Err(); err != nil {
				return err
			}
			if n.raftState != raft.StateLeader {
				return ErrNotLeader
			}
			cc, err := decide()
			if errors.Is(err, errReachabilityUnknown) {
				return errConfChangePending // retried below
			}
			if err != nil || cc == nil {
				return err
			}
			id = n.ids.new()
			cc.ID = id
			done = n.waiters.register(id)
			if err := n.rn.ProposeConfChange(*cc); err != nil {
				n.waiters.cancel(id)
				return fmt.Errorf("%w: %w", ErrNotLeader, err)
			}
			n.mem.pendingCC = id
			return nil
		})
		if err == nil && done == nil {
			return nil
		}
		if err == nil {
			select {
			case err = <-done:
			case <-ctx.Done():
				err = ctx.Err()
			case <-n.failc:
				err = n.Err()
			case <-n.done:
				err = ErrStopped
			}
			n.waiters.cancel(id)
		}
		if !errors.Is(err, errConfChangePending) {
			return err
		}
		// Another change (e.g. a new leader's own) is not applied yet: retry after a tick.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-n.done:
			return ErrStopped
		case <-time.After(n.cfg.TickInterval):
		}
	}
}

// checkPendingConfChange runs in handleReady: a conf change this node proposed must be among the
// new entries, or raft replaced it (another change was not applied yet).
func (n *Node) checkPendingConfChange(ents []raftpb.Entry) {
	id := n.mem.pendingCC
	if id == 0 {
		return
	}
	n.mem.pendingCC = 0
	for _, e := range ents {
		var cc raftpb.ConfChange
		if e.Type == raftpb.EntryConfChange && cc.Unmarshal(e.Data) == nil && cc.ID == id {
			return
		}
	}
	n.waiters.trigger(id, errConfChangePending)
}

// maybeUpdateOwnAddr has a leader that just became ready record its Config.Addr in the
// membership if the replicated one differs (a cluster bootstrapped before addresses were
// recorded, or a manager restarted with a new address).
func (n *Node) maybeUpdateOwnAddr() {
	if n.cfg.Addr == "" || !n.leadership.Load().Ready || n.mem.addrTerm == n.term {
		return
	}
	n.mem.addrTerm = n.term
	if n.mem.addrs[n.id] == n.cfg.Addr {
		return
	}
	cc := raftpb.ConfChange{Type: raftpb.ConfChangeAddNode, NodeID: n.id, Context: []byte(n.cfg.Addr)}
	if err := n.rn.ProposeConfChange(cc); err != nil {
		n.lg.Warn("raft: recording this member's address", "addr", n.cfg.Addr, "err", err)
	}
}

// TransferLeadership hands leadership to member to (0: the most up-to-date reachable member)
// and returns once this node knows the new leader. Leader only.
func (n *Node) TransferLeadership(ctx context.Context, to uint64) error {
	err := n.inLoop(ctx, func() error {
		if err := n.Err(); err != nil {
			return err
		}
		if n.raftState != raft.StateLeader {
			return ErrNotLeader
		}
		st := n.rn.Status()
		if to == 0 {
			var best uint64
			for id, pr := range st.Progress {
				if id == n.id || pr.IsLearner || !n.reachable(id) {
					continue
				}
				if best == 0 || pr.Match > st.Progress[best].Match || (pr.Match == st.Progress[best].Match && id < best) {
					best = id
				}
			}
			if best == 0 {
				return fmt.Errorf("%w: no other member is reachable to take over leadership", ErrWouldLoseQuorum)
			}
			to = best
		} else if to == n.id {
			return nil
		} else if !slices.Contains(n.confState.Voters, to) {
			return fmt.Errorf("%w: %x", ErrUnknownMember, to)
		}
		n.lg.Info("raft: transferring leadership", "to", fmt.Sprintf("%x", to))
		n.rn.TransferLeader(to)
		return nil
	})
	if err != nil {
		return err
	}
	if to == n.id {
		return nil
	}
	// raft aborts a transfer after an election timeout; give it two.
	timeout := time.NewTimer(2 * time.Duration(n.cfg.ElectionTick) * n.cfg.TickInterval)
	defer timeout.Stop()
	for {
		l, changed := n.Leadership()
		if !l.IsLeader && l.Leader != 0 {
			if to != 0 && l.Leader != to {
				return fmt.Errorf("raft: leadership went to %x instead of %x", l.Leader, to)
			}
			return nil
		}
		select {
		case <-changed:
		case <-timeout.C:
			return fmt.Errorf("raft: leadership transfer to %x did not complete in time; this node still leads: %w", to, context.DeadlineExceeded)
		case <-ctx.Done():
			return ctx.Err()
		case <-n.done:
			return ErrStopped
		}
	}
}

// reports are transport outcomes waiting for the Run loop; the transport never blocks on them.
type reports struct {
	mu          sync.Mutex
	unreachable map[uint64]struct{}
	snapshots   map[uint64]raft.SnapshotStatus
	signal      chan struct{} // capacity 1
}

func newReports() *reports {
	return &reports{unreachable: map[uint64]struct{}{}, snapshots: map[uint64]raft.SnapshotStatus{}, signal: make(chan struct{}, 1)}
}

func (r *reports) notify() {
	select {
	case r.signal <- struct{}{}:
	default:
	}
}

// reportUnreachable records, without blocking, that a message to id could not be delivered.
func (n *Node) reportUnreachable(id uint64) {
	n.reports.mu.Lock()
	n.reports.unreachable[id] = struct{}{}
	n.reports.mu.Unlock()
	n.reports.notify()
}

// reportSnapshot records, without blocking, how sending a snapshot to id ended.
func (n *Node) reportSnapshot(id uint64, status raft.SnapshotStatus) {
	n.reports.mu.Lock()
	n.reports.snapshots[id] = status
	n.reports.mu.Unlock()
	n.reports.notify()
}

// handleReports hands the transport's reports to raft (in the loop).
func (n *Node) handleReports() {
	n.reports.mu.Lock()
	un, sn := n.reports.unreachable, n.reports.snapshots
	n.reports.unreachable, n.reports.snapshots = map[uint64]struct{}{}, map[uint64]raft.SnapshotStatus{}
	n.reports.mu.Unlock()
	for id := range un {
		n.rn.ReportUnreachable(id)
		n.mem.unreachable[id] = n.mem.ticks
	}
	for id, st := range sn {
		n.rn.ReportSnapshot(id, st)
	}
	if len(un) > 0 {
		n.publishMembers()
	}
}

// receive steps a message that came from a peer: dropped (with an error the sender acts on) when
// it is for another raft ID or from a removed member.
func (n *Node) receive(ctx context.Context, msgs ...*raftpb.Message) error {
	return n.inLoopVia(n.recvc, ctx, func() error {
		if err := n.Err(); err != nil {
			return err
		}
		for _, m := range msgs {
			if m.To != n.id {
				return fmt.Errorf("%w: this is raft member %x, the message is for %x", errWrongMember, n.id, m.To)
			}
			if _, ok := n.mem.removed[m.From]; ok {
				return fmt.Errorf("%w: %x", ErrMemberRemoved, m.From)
			}
			n.mem.heard[m.From] = n.mem.ticks
			// A response from a member no longer in the configuration is dropped.
			if err := n.rn.Step(*m); err != nil && !errors.Is(err, raft.ErrStepPeerNotFound) {
				return err
			}
		}
		return nil
	})
}

var errWrongMember = errors.New("raft: message for another member")
