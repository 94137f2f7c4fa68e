// Package raft is Flotilla's consensus node: go.etcd.io/raft/v3 driven by one loop, with a
// durable log (etcd's WAL) and snapshots (etcd's snap files). Payloads are opaque bytes; the
// StateMachine gives them meaning.
//
// # The loop
//
// New opens or creates the data directory, restores the StateMachine from the newest snapshot and
// builds a raft.RawNode over a MemoryStorage filled from the log. It starts nothing. Run owns the
// RawNode: it takes events one at a time (a tick, a batch of proposals, a message from a peer),
// and after each one handles every raft Ready in the order raft's doc.go requires:
//
//  1. save an incoming snapshot (snap file, then its WAL record), if any;
//  2. save the HardState and new entries to the WAL, one fdatasync for the whole Ready;
//  3. install the incoming snapshot in MemoryStorage and the StateMachine, if any;
//  4. append the entries to MemoryStorage;
//  5. hand the messages to the Transport (only after step 2: a vote or an append
//     acknowledgement must never go out before it is durable);
//  6. apply the committed entries in log order: StateMachine.Apply for proposals,
//     ApplyConfChange for configuration changes; wake the matching Propose calls;
//  7. every SnapshotInterval applied entries, snapshot the StateMachine, make the snapshot
//     durable, compact MemoryStorage and release old WAL segments and snapshot files;
//  8. Advance.
//
// Step 1 comes before step 2 (as in etcd's raft loop, unlike the list in raft's doc.go) so that
// a HardState whose commit index points into the snapshot is never durable without it.
//
// Proposals from concurrent callers queue on a channel; the loop hands everything queued (up to
// a byte bound) to raft before taking the next Ready, so one fsync serves a whole batch.
//
// # Guarantees
//
//   - Propose returns nil or the StateMachine's Apply error only after the entry was committed,
//     fsynced to this node's WAL and applied on this node. Every other error means the outcome is
//     unknown (ctx cancelled, ErrLeadershipLost, ErrStopped, a StorageError) or the proposal was
//     refused before it reached raft (ErrNotLeader, ErrProposalTooLarge).
//   - The StateMachine sees every committed entry exactly once per process lifetime, in log
//     order, from the Run goroutine; Restore replaces its state from a snapshot (in New, or in
//     Run when the leader sends one).
//   - Leadership reports Ready only once this node is leader and has applied an entry of its own
//     term, which means everything committed before it became leader is applied: leader-only
//     work (orchestrators, scheduler, dispatcher...) must start then, not at IsLeader.
//   - A torn write at the tail of the WAL (crash mid-write) is repaired on start; anything else
//     unreadable in the WAL makes New fail with a *CorruptionError naming the file and offset.
//   - A failed WAL or snapshot write (disk full, I/O error) does not panic: the node stops taking
//     part in raft, Err and every pending and later Propose return a *StorageError, and state
//     already applied stays readable. Nothing on disk is left unreadable: the process is expected
//     to be restarted once the operator fixed the disk, and starts with every acknowledged entry.
//
// With a single voter the node campaigns as soon as it has applied its log, instead of waiting
// for an election timeout.
//
// # Several members
//
// Config.Transport carries raft's messages: NewGRPCTransport sends them over the Raft gRPC
// service (api/raft.proto), NewServer receives them for a node. Every message but a snapshot is
// one unary call; a snapshot of any size is streamed in chunks (1 MiB), each chunk with its own
// deadline on both sides. Send never blocks the loop: each member has a bounded queue, and a
// message that does not fit is dropped and the member reported unreachable to raft.
//
// Membership (membership.go): AddMember, RemoveMember and TransferLeadership run on the leader;
// Members and LeaderAddr on any member. A voter's address travels in its ConfChangeAddNode's
// Context; the addresses and the set of removed raft IDs are replicated state, rebuilt from the
// applied conf changes and kept across compaction in the snapshot's envelope, and the node tells
// the transport as it applies them. Removed IDs are never reused; messages from a removed member
// are refused (it learns it was removed from that, see Removed). A change that would leave fewer
// reachable members than a quorum is refused (ErrWouldLoseQuorum).
//
// # Joining a cluster
//
// A new member starts with no Peers and an empty data directory. etcd raft's StartNode panics
// without peers; what a joining member needs is RestartNode over empty storage, which is what New
// does here (a RawNode over an empty MemoryStorage, no Bootstrap). Such a member has no
// configuration, so it is not promotable and never campaigns; it sits at term 0 until the leader
// contacts it. The leader adds it (AddMember, reached through the Join RPC): once the
// ConfChangeAddNode is applied, raft probes the new member at the leader's last index, the empty
// member rejects it with a hint of index 0, and the leader sends its log from index 1 (the
// bootstrap conf changes onward) or, when that prefix was compacted, a snapshot (MsgSnap). raft
// makes a member restore only a snapshot whose configuration contains it, so a leader whose log
// was compacted takes a new snapshot right after applying an AddNode. The new member learns the
// others' addresses from what it applies, but it must answer the leader before that: whoever
// starts it first gives its transport the members the Join answer lists (GRPCTransport.SetPeer).
package raft

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// StateMachine is what the raft node replicates. Called only from the node's Run loop, in log
// order, except the Restore that New does from the newest snapshot.
type StateMachine interface {
	// Apply applies one committed proposal payload at the given raft index. The returned error is
	// the outcome of that proposal (e.g. an optimistic-concurrency conflict); it is delivered to
	// the proposer's Propose call when the proposal was made on this node, and is NOT fatal to
	// the node.
	Apply(index uint64, data []byte) error
	// Snapshot serializes the whole state as of the last applied index.
	Snapshot() ([]byte, error)
	// Restore replaces the whole state with a snapshot's data.
	Restore(data []byte) error
}

// Transport sends raft messages to other members. With a single member nothing is ever sent, but
// the loop still goes through it. A nil Transport in Config means "no peers reachable". Send is
// called from the Run loop: it must not block for long, nor call back into the Node synchronously.
type Transport interface {
	Send(msgs []raftpb.Message)
}

// Defaults for Config's zero values.
const (
	// DefaultTickInterval is raft's logical clock period. With the default ticks a follower
	// starts an election after 1-2 s without a leader (raft randomizes [ElectionTick,
	// 2*ElectionTick)) and the leader heartbeats every 100 ms: etcd's defaults, proven on LANs,
	// and far above the few ms an fsync takes on a healthy disk (the loop does not tick during
	// an fsync).
	DefaultTickInterval  = 100 * time.Millisecond
	DefaultElectionTick  = 10
	DefaultHeartbeatTick = 1
	// DefaultSnapshotInterval entries between snapshots bounds replay on restart to seconds.
	DefaultSnapshotInterval = 10000
	// DefaultLogEntriesForSlowFollowers entries stay in memory after a snapshot so a follower
	// a little behind catches up with entries rather than a full snapshot.
	DefaultLogEntriesForSlowFollowers = 500
	// DefaultMaxProposalBytes is the largest payload Propose accepts: 1.5 MiB, SwarmKit's
	// proven transaction bound. A raft append message carries at most maxSizePerMsg (1 MiB) of
	// entries or a single larger entry, so every message stays well under gRPC's default 4 MiB
	// receive limit, which the future transport must keep above max(MaxProposalBytes, 1 MiB)
	// plus a few KiB of framing. All members must use the same value.
	DefaultMaxProposalBytes = 3 << 19

	maxSizePerMsg     = 1 << 20
	maxInflightMsgs   = 256
	maxBatchProposals = 4096
)

var (
	// ErrNotLeader: the proposal was refused, not appended to the log. Retry on the leader.
	ErrNotLeader = errors.New("raft: this node is not the leader")
	// ErrLeadershipLost: the node lost leadership after the proposal entered its log and before it
	// was applied. The entry may still be committed by the new leader: outcome unknown.
	ErrLeadershipLost = errors.New("raft: leadership lost before the proposal was applied; it may or may not be committed")
	// ErrStopped: Run has returned.
	ErrStopped = errors.New("raft: node stopped")
	// ErrProposalTooLarge: the payload is over Config.MaxProposalBytes.
	ErrProposalTooLarge = errors.New("raft: proposal too large")
)

// Config configures a Node. Zero values take the defaults above.
type Config struct {
	ID    uint64      // this member's raft ID (non-zero)
	Dir   string      // data directory: holds wal/ and snap/ (created 0700)
	Peers []raft.Peer // members to bootstrap a NEW log with (ignored when a log exists); empty for a member that joins an existing cluster
	// Addr is this member's advertised address (host:port). It is recorded in the membership
	// when this member bootstraps a new cluster, and a leader whose recorded address differs
	// updates it.
	Addr string

	TickInterval  time.Duration
	ElectionTick  int
	HeartbeatTick int
	// Ticks, if set, drives raft's clock instead of a TickInterval ticker (tests).
	Ticks <-chan time.Time

	SnapshotInterval           uint64 // take a snapshot every N applied entries
	LogEntriesForSlowFollowers uint64 // entries kept in memory before the snapshot index after compaction
	MaxProposalBytes           int    // larger proposals fail with ErrProposalTooLarge

	// DataKey, if set, encrypts the log and snapshots on disk (see DataKey); a plaintext log of
	// an earlier version is encrypted when the node opens it. Nil keeps a plaintext log, and an
	// encrypted log does not open without its key.
	DataKey *DataKey

	// ForceNewCluster makes this member, from the log it already has, the only voter of its
	// cluster (disaster recovery when a quorum is lost for good): the other voters are removed,
	// durably and for good, and everything else in the log is kept and committed. New fails with
	// ErrNoClusterState when there is no log, and with ErrMemberRemoved when this member was
	// removed. See forcenewcluster.go.
	ForceNewCluster bool

	Logger       *slog.Logger
	StateMachine StateMachine
	// Transport sends messages to the other members; a PeerTransport is told their addresses.
	// A *GRPCTransport serves this node only: Run closes it when it returns.
	Transport Transport
}

// Leadership is this node's view of who leads.
type Leadership struct {
	Leader   uint64 // raft ID of the leader, 0 if none is known
	Term     uint64
	IsLeader bool // this node is the raft leader
	// Ready: IsLeader, and this node has applied an entry of its own term, hence everything
	// committed before it became leader. Leader-only loops may run exactly while Ready holds.
	Ready bool
}

// Stats are counters since New, for metrics and tests.
type Stats struct {
	Proposals uint64 // proposals handed to raft
	Readys    uint64 // raft Ready batches handled
	WALSyncs  uint64 // WAL writes that fdatasynced (one per Ready with new entries)
}

// Node is one raft member. Create it with New, drive it with Run.
type Node struct {
	cfg           Config
	id            uint64
	lg            *slog.Logger
	sm            StateMachine
	st            *storage
	ms            *raft.MemoryStorage
	maxBatchBytes int

	propc   chan *proposal
	reqc    chan request
	recvc   chan request  // messages from peers
	done    chan struct{} // closed when Run returns
	failc   chan struct{} // closed on a storage failure
	started atomic.Bool
	failure atomic.Pointer[error]

	ids        *requestIDs
	waiters    *waiters
	leadership watch[Leadership]
	applied    watch[uint64]
	committed  atomic.Uint64
	lastStatus atomic.Pointer[raft.Status]
	proposals  atomic.Uint64
	readys     atomic.Uint64
	// snapshotInterval starts as Config.SnapshotInterval; SetSnapshotInterval changes it.
	snapshotInterval atomic.Uint64

	// Owned by the Run loop (and New before it).
	rn           *raft.RawNode
	confState    raftpb.ConfState
	appliedIndex uint64
	snapIndex    uint64 // index of the newest snapshot
	snapAttempt  uint64 // applied index of the last snapshot attempt
	term         uint64
	raftState    raft.StateType
	lead         uint64
	readyTerm    uint64 // term in which this node, as leader, applied an entry of its own
	campaigned   bool
	mem          membership

	members     atomic.Pointer[[]Member]
	reports     *reports
	confMu      sync.Mutex // one membership change at a time from this node
	removedc    chan struct{}
	removedOnce sync.Once
}

type request struct {
	fn   func() error
	errc chan error
}

// New opens the log in cfg.Dir (creating it, bootstrapped with cfg.Peers, if there is none),
// restores the StateMachine from the newest snapshot and prepares raft. Entries committed after
// that snapshot are applied by Run. It starts no goroutine.
func New(cfg Config) (*Node, error) {
	if cfg.ID == 0 {
		return nil, errors.New("raft: Config.ID must be non-zero")
	}
	if cfg.Dir == "" || cfg.StateMachine == nil {
		return nil, errors.New("raft: Config.Dir and Config.StateMachine are required")
	}
	setDefault(&cfg.TickInterval, DefaultTickInterval)
	setDefault(&cfg.ElectionTick, DefaultElectionTick)
	setDefault(&cfg.HeartbeatTick, DefaultHeartbeatTick)
	setDefault(&cfg.SnapshotInterval, DefaultSnapshotInterval)
	setDefault(&cfg.LogEntriesForSlowFollowers, DefaultLogEntriesForSlowFollowers)
	setDefault(&cfg.MaxProposalBytes, DefaultMaxProposalBytes)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	lg := cfg.Logger.With("module", "raft", "raft.id", fmt.Sprintf("%x", cfg.ID))

	// One Ready writes at most one proposal batch or one append message, so a torn write at the
	// tail spans at most two of them (the batch, and unsynced HardState records before it).
	maxBatch := max(cfg.MaxProposalBytes, maxSizePerMsg)
	if cfg.ForceNewCluster && !hasLog(cfg.Dir) {
		// Checked before openStorage, which would create an empty log.
		return nil, fmt.Errorf("%w: %s holds none; run it on the state of a manager that was a member of the cluster", ErrNoClusterState, cfg.Dir)
	}
	st, rec, err := openStorage(cfg.Dir, cfg.ID, int64(2*maxBatch+64<<10), cfg.DataKey, lg)
	if err != nil {
		return nil, err
	}
	n := &Node{
		cfg: cfg, id: cfg.ID, lg: lg, sm: cfg.StateMachine, st: st,
		ms:            raft.NewMemoryStorage(),
		maxBatchBytes: maxBatch,
		propc:         make(chan *proposal, maxBatchProposals),
		reqc:          make(chan request),
		recvc:         make(chan request),
		done:          make(chan struct{}),
		failc:         make(chan struct{}),
		ids:           newRequestIDs(),
		waiters:       newWaiters(),
		raftState:     raft.StateFollower,
		mem:           newMembership(),
		reports:       newReports(),
		removedc:      make(chan struct{}),
	}
	if t, ok := cfg.Transport.(*GRPCTransport); ok {
		t.bind(n)
	}
	n.snapshotInterval.Store(cfg.SnapshotInterval)
	if cfg.ForceNewCluster {
		if rec, err = n.forceNewCluster(rec); err != nil {
			_ = st.close()
			return nil, err
		}
	}
	if err := n.restore(rec); err != nil {
		_ = st.close()
		return nil, err
	}
	return n, nil
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

func (n *Node) restore(rec recovered) error {
	if sn := rec.snapshot; sn != nil {
		members, data, err := decodeSnapshot(sn.Data)
		if err != nil {
			return fmt.Errorf("raft: snapshot %d: %w", sn.Metadata.Index, err)
		}
		if err := n.sm.Restore(data); err != nil {
			return fmt.Errorf("raft: restore the state machine from snapshot %d: %w", sn.Metadata.Index, err)
		}
		if err := n.ms.ApplySnapshot(*sn); err != nil {
			return fmt.Errorf("raft: load snapshot %d: %w", sn.Metadata.Index, err)
		}
		n.confState = sn.Metadata.ConfState
		n.appliedIndex, n.snapIndex, n.snapAttempt = sn.Metadata.Index, sn.Metadata.Index, sn.Metadata.Index
		n.restoreMembership(members, n.confState)
	}
	if err := n.ms.SetHardState(rec.hs); err != nil {
		return fmt.Errorf("raft: load hard state: %w", err)
	}
	if err := n.ms.Append(rec.ents); err != nil {
		return fmt.Errorf("raft: load log entries: %w", err)
	}
	rn, err := raft.NewRawNode(&raft.Config{
		ID:                        n.id,
		ElectionTick:              n.cfg.ElectionTick,
		HeartbeatTick:             n.cfg.HeartbeatTick,
		Storage:                   n.ms,
		Applied:                   n.appliedIndex,
		MaxSizePerMsg:             maxSizePerMsg,
		MaxInflightMsgs:           maxInflightMsgs,
		CheckQuorum:               true, // a partitioned leader steps down, so IsLeader turns false
		PreVote:                   true, // a rejoining partitioned member does not depose a healthy leader
		DisableProposalForwarding: true, // Propose on a follower fails with ErrNotLeader; callers forward
		Logger:                    raftLogger{n.lg},
	})
	if err != nil {
		return fmt.Errorf("raft: %w", err)
	}
	n.rn = rn
	lastIndex, _ := n.ms.LastIndex()
	if rec.empty() {
		if len(n.cfg.Peers) > 0 {
			peers := slices.Clone(n.cfg.Peers)
			for i, p := range peers {
				if p.ID == n.id && len(p.Context) == 0 && n.cfg.Addr != "" {
					peers[i].Context = []byte(n.cfg.Addr)
				}
			}
			if err := rn.Bootstrap(peers); err != nil {
				return fmt.Errorf("raft: bootstrap: %w", err)
			}
		}
		n.lg.Info("raft: new log", "dir", n.cfg.Dir, "peers", len(n.cfg.Peers))
	} else {
		n.lg.Info("raft: restarting from the log", "dir", n.cfg.Dir, "snapshot_index", n.snapIndex,
			"commit", rec.hs.Commit, "term", rec.hs.Term, "last_index", lastIndex)
	}
	n.term = rec.hs.Term
	n.committed.Store(max(rec.hs.Commit, n.snapIndex))
	n.applied.Set(n.appliedIndex)
	n.leadership.Set(Leadership{Term: n.term})
	n.publishMembers()
	st := rn.Status()
	n.lastStatus.Store(&st)
	return nil
}

// Run drives the node until ctx is done; it closes the WAL before returning. It returns nil when
// ctx ends, or the sticky storage failure (see Err) if there was one: after a failure Run keeps
// running, answering callers, until ctx ends, so the process can keep serving reads. Run may be
// called once.
func (n *Node) Run(ctx context.Context) error {
	if !n.started.CompareAndSwap(false, true) {
		return errors.New("raft: Run called twice")
	}
	ticks := n.cfg.Ticks
	if ticks == nil {
		t := time.NewTicker(n.cfg.TickInterval)
		defer t.Stop()
		ticks = t.C
	}
	defer func() {
		st := n.rn.Status()
		n.lastStatus.Store(&st)
		if err := n.st.close(); err != nil && n.Err() == nil {
			n.lg.Warn("raft log: close", "err", err)
		}
		n.leadership.Set(Leadership{Term: n.term})
		close(n.done)
		if t, ok := n.cfg.Transport.(*GRPCTransport); ok {
			t.close()
		}
	}()

	n.maybeCampaign()
	for {
		if n.Err() == nil && n.rn.HasReady() {
			if err := n.handleReady(); err != nil {
				n.fail(err)
			}
			continue
		}
		select {
		case <-ctx.Done():
			return n.Err()
		case <-ticks:
			if n.Err() == nil {
				n.rn.Tick()
				n.mem.ticks++
				n.publishMembers()
			}
		case <-n.reports.signal:
			if n.Err() == nil {
				n.handleReports()
			}
		case p := <-n.propc:
			n.propose(p)
			n.drain(len(p.data))
		case r := <-n.recvc:
			r.errc <- r.fn()
			n.drain(0)
		case r := <-n.reqc:
			r.errc <- r.fn()
		}
	}
}

// drain takes, without waiting, the proposals and peer messages queued meanwhile (up to a
// batch), so that one Ready, and one fsync, serves them all.
func (n *Node) drain(size int) {
	for i := 1; i < maxBatchProposals && size < n.maxBatchBytes; i++ {
		select {
		case p := <-n.propc:
			n.propose(p)
			size += len(p.data)
		case r := <-n.recvc:
			r.errc <- r.fn()
		default:
			return
		}
	}
}

func (n *Node) propose(p *proposal) {
	if !n.waiters.pending(p.id) {
		return // the caller gave up (ctx) before the proposal reached raft: drop it
	}
	if err := n.Err(); err != nil {
		n.waiters.trigger(p.id, err)
		return
	}
	if n.raftState != raft.StateLeader {
		n.waiters.trigger(p.id, ErrNotLeader)
		return
	}
	if err := n.rn.Propose(p.data); err != nil {
		// A leader drops proposals while it transfers leadership.
		n.waiters.trigger(p.id, fmt.Errorf("%w: %w", ErrNotLeader, err))
		return
	}
	n.proposals.Add(1)
}

func (n *Node) handleReady() error {
	rd := n.rn.Ready()
	n.readys.Add(1)
	if !raft.IsEmptyHardState(rd.HardState) {
		n.term = rd.HardState.Term
	}
	lostLeadership := false
	if rd.SoftState != nil {
		lostLeadership = n.raftState == raft.StateLeader && rd.SoftState.RaftState != raft.StateLeader
		if rd.SoftState.RaftState == raft.StateLeader && n.raftState != raft.StateLeader {
			n.mem.leaderSince = n.mem.ticks
		}
		n.raftState, n.lead = rd.SoftState.RaftState, rd.SoftState.Lead
		n.publishMembers()
	}
	n.publishLeadership()

	if !raft.IsEmptySnap(rd.Snapshot) {
		if err := n.st.saveSnap(rd.Snapshot); err != nil {
			return err
		}
	}
	if err := n.st.save(rd.HardState, rd.Entries); err != nil {
		return err
	}
	if !raft.IsEmptyHardState(rd.HardState) {
		n.committed.Store(rd.HardState.Commit)
	}
	if !raft.IsEmptySnap(rd.Snapshot) {
		if err := n.installSnapshot(rd.Snapshot); err != nil {
			return err
		}
	}
	if err := n.ms.Append(rd.Entries); err != nil {
		return fmt.Errorf("raft: append to memory storage: %w", err)
	}
	n.checkPendingConfChange(rd.Entries)
	if n.cfg.Transport != nil && len(rd.Messages) > 0 {
		n.cfg.Transport.Send(rd.Messages)
	}
	if err := n.apply(rd.CommittedEntries); err != nil {
		return err
	}
	if lostLeadership {
		// Entries committed in this Ready got their outcome above; the rest is unknown.
		n.waiters.failAll(ErrLeadershipLost)
	}
	if err := n.maybeSnapshot(); err != nil {
		return err
	}
	n.maybeUpdateOwnAddr()
	n.rn.Advance(rd)
	n.maybeCampaign()
	return nil
}

// installSnapshot installs a snapshot received from the leader (already durable).
func (n *Node) installSnapshot(sn raftpb.Snapshot) error {
	// Sync the HardState written after the snapshot record before older data is released.
	if err := n.st.sync(); err != nil {
		return err
	}
	members, data, err := decodeSnapshot(sn.Data)
	if err != nil {
		return fmt.Errorf("raft: snapshot %d from the leader: %w", sn.Metadata.Index, err)
	}
	if err := n.ms.ApplySnapshot(sn); err != nil {
		return fmt.Errorf("raft: install snapshot %d: %w", sn.Metadata.Index, err)
	}
	if err := n.sm.Restore(data); err != nil {
		return fmt.Errorf("raft: restore the state machine from snapshot %d: %w", sn.Metadata.Index, err)
	}
	n.confState = sn.Metadata.ConfState
	n.restoreMembership(members, n.confState)
	n.appliedIndex, n.snapIndex, n.snapAttempt = sn.Metadata.Index, sn.Metadata.Index, sn.Metadata.Index
	n.applied.Set(n.appliedIndex)
	n.st.release()
	n.lg.Info("raft: installed snapshot from the leader", "index", sn.Metadata.Index, "bytes", len(sn.Data))
	return nil
}

func (n *Node) apply(ents []raftpb.Entry) error {
	if len(ents) == 0 {
		return nil
	}
	var outcomes []outcome
	var err error
	for _, e := range ents {
		if e.Index <= n.appliedIndex {
			continue
		}
		var o *outcome
		if o, err = n.applyEntry(e); err != nil {
			break
		}
		if o != nil {
			outcomes = append(outcomes, *o)
		}
		n.appliedIndex = e.Index
		if n.raftState == raft.StateLeader && e.Term == n.term {
			n.readyTerm = n.term
		}
	}
	// Publish the applied index before waking proposers, so AppliedIndex covers their entries.
	n.applied.Set(n.appliedIndex)
	n.publishLeadership()
	for _, o := range outcomes {
		n.waiters.trigger(o.id, o.err)
	}
	return err
}

// outcome is the result of applying a proposal made on this node.
type outcome struct {
	id  uint64
	err error
}

func (n *Node) applyEntry(e raftpb.Entry) (*outcome, error) {
	switch e.Type {
	case raftpb.EntryNormal:
		if len(e.Data) == 0 {
			return nil, nil // a new leader's empty entry
		}
		proposer, reqID, payload, err := decodeEnvelope(e.Data)
		if err != nil {
			return nil, fmt.Errorf("raft: entry %d: %w", e.Index, err)
		}
		aerr := n.sm.Apply(e.Index, payload)
		if proposer != n.id {
			return nil, nil
		}
		return &outcome{id: reqID, err: aerr}, nil
	case raftpb.EntryConfChange:
		var cc raftpb.ConfChange
		if err := cc.Unmarshal(e.Data); err != nil {
			return nil, fmt.Errorf("raft: entry %d: decode conf change: %w", e.Index, err)
		}
		return n.applyConfChange(e.Index, cc), nil
	case raftpb.EntryConfChangeV2:
		var cc raftpb.ConfChangeV2
		if err := cc.Unmarshal(e.Data); err != nil {
			return nil, fmt.Errorf("raft: entry %d: decode conf change: %w", e.Index, err)
		}
		n.confState = *n.rn.ApplyConfChange(cc)
		for _, ch := range cc.Changes { // this package writes V1 changes only
			n.applyMembership(raftpb.ConfChange{Type: ch.Type, NodeID: ch.NodeID, Context: cc.Context})
		}
	}
	return nil, nil
}

func (n *Node) publishLeadership() {
	isLeader := n.raftState == raft.StateLeader
	l := Leadership{Leader: n.lead, Term: n.term, IsLeader: isLeader, Ready: isLeader && n.readyTerm == n.term}
	if n.leadership.Load() != l {
		n.leadership.Set(l)
		if l.Ready {
			n.lg.Info("raft: leader, and caught up with the log", "term", l.Term, "applied", n.appliedIndex)
		}
	}
}

func (n *Node) maybeSnapshot() error {
	force := n.mem.forceSnapshot && n.appliedIndex > n.snapIndex
	if n.appliedIndex-max(n.snapIndex, n.snapAttempt) < n.snapshotInterval.Load() && !force {
		return nil
	}
	n.mem.forceSnapshot = false
	n.snapAttempt = n.appliedIndex
	data, err := n.sm.Snapshot()
	if err != nil {
		n.lg.Error("raft: state machine snapshot failed; will retry after SnapshotInterval more entries",
			"applied", n.appliedIndex, "err", err)
		return nil
	}
	sn, err := n.ms.CreateSnapshot(n.appliedIndex, &n.confState, n.mem.encodeSnapshot(data))
	if err != nil {
		return fmt.Errorf("raft: create snapshot at %d: %w", n.appliedIndex, err)
	}
	if err := n.st.saveSnap(sn); err != nil {
		return err
	}
	n.snapIndex = n.appliedIndex
	if keep := n.cfg.LogEntriesForSlowFollowers; n.snapIndex > keep {
		if err := n.ms.Compact(n.snapIndex - keep); err != nil && !errors.Is(err, raft.ErrCompacted) {
			return fmt.Errorf("raft: compact memory storage: %w", err)
		}
	}
	n.st.release()
	n.lg.Debug("raft: snapshot saved", "index", n.snapIndex, "bytes", len(data))
	return nil
}

// maybeCampaign makes a sole voter leader at once, when it has applied its log (raft refuses to
// campaign with configuration changes not yet applied).
func (n *Node) maybeCampaign() {
	if n.campaigned || n.raftState == raft.StateLeader || n.Err() != nil {
		return
	}
	cs := n.confState
	if len(cs.Voters) != 1 || cs.Voters[0] != n.id || len(cs.VotersOutgoing) != 0 {
		return
	}
	if bs := n.rn.BasicStatus(); bs.Applied < bs.Commit {
		return
	}
	n.campaigned = true
	if err := n.rn.Campaign(); err != nil {
		n.lg.Warn("raft: campaign", "err", err)
	}
}

// fail makes err the node's sticky failure: raft is no longer driven and every waiter gets err.
func (n *Node) fail(err error) {
	n.raftState, n.lead = raft.StateFollower, 0
	n.publishLeadership() // before anyone can see the failure
	n.failure.Store(&err)
	close(n.failc)
	n.waiters.failAll(err)
	n.lg.Error("raft: node failed and stopped taking part in raft; applied state stays readable", "err", err)
}

// Err returns the storage failure that stopped the node, or nil.
func (n *Node) Err() error {
	if p := n.failure.Load(); p != nil {
		return *p
	}
	return nil
}

// Propose replicates data and returns once it is committed, fsynced to this node's WAL and
// applied here, with the StateMachine's Apply error. See the package doc for the other errors.
func (n *Node) Propose(ctx context.Context, data []byte) error {
	if len(data) > n.cfg.MaxProposalBytes {
		return fmt.Errorf("%w: %d bytes, the limit is %d", ErrProposalTooLarge, len(data), n.cfg.MaxProposalBytes)
	}
	if err := n.Err(); err != nil {
		return err
	}
	id := n.ids.new()
	done := n.waiters.register(id)
	p := &proposal{id: id, data: encodeEnvelope(n.id, id, data)}
	var err error
	select {
	case n.propc <- p:
		select {
		case err = <-done:
			return err
		case <-ctx.Done():
			err = ctx.Err()
		case <-n.failc:
			err = n.Err()
		case <-n.done:
			err = ErrStopped
		}
	case <-ctx.Done():
		err = ctx.Err()
	case <-n.failc:
		err = n.Err()
	case <-n.done:
		err = ErrStopped
	}
	n.waiters.cancel(id)
	select {
	case derr := <-done: // the outcome arrived meanwhile: it wins
		return derr
	default:
		return err
	}
}

// inLoop runs fn in the Run loop.
func (n *Node) inLoop(ctx context.Context, fn func() error) error {
	return n.inLoopVia(n.reqc, ctx, fn)
}

// inLoopVia runs fn in the Run loop, handed over on c: reqc, or recvc for peer messages, which
// the loop batches with proposals before it handles the next Ready.
func (n *Node) inLoopVia(c chan request, ctx context.Context, fn func() error) error {
	r := request{fn: fn, errc: make(chan error, 1)}
	select {
	case c <- r:
	case <-ctx.Done():
		return ctx.Err()
	case <-n.done:
		return ErrStopped
	}
	select {
	case err := <-r.errc:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-n.done:
		return ErrStopped
	}
}

// Step hands a message received from a peer to raft (for the transport). A message for another
// raft ID, or from a removed member (ErrMemberRemoved), is dropped with an error.
func (n *Node) Step(ctx context.Context, m raftpb.Message) error { return n.receive(ctx, &m) }

// ReportUnreachable tells raft that a message to member id could not be sent (for the transport).
func (n *Node) ReportUnreachable(ctx context.Context, id uint64) error {
	return n.inLoop(ctx, func() error { n.rn.ReportUnreachable(id); return nil })
}

// ReportSnapshot tells raft how sending a snapshot to member id ended (for the transport).
func (n *Node) ReportSnapshot(ctx context.Context, id uint64, status raft.SnapshotStatus) error {
	return n.inLoop(ctx, func() error { n.rn.ReportSnapshot(id, status); return nil })
}

// Status returns raft's status: from the Run loop while it runs, else as of New or the end of Run.
func (n *Node) Status() raft.Status {
	if n.started.Load() {
		var st raft.Status
		if err := n.inLoop(context.Background(), func() error { st = n.rn.Status(); return nil }); err == nil {
			return st
		}
	}
	return *n.lastStatus.Load()
}

// Leadership returns this node's leadership and a channel closed at its next change. A manager
// runs its leader-only loops while Ready holds:
//
//	for {
//		l, changed := n.Leadership()
//		if l.Ready { startLeaderLoops() } else { stopLeaderLoops() }
//		select { case <-changed: case <-ctx.Done(): return }
//	}
func (n *Node) Leadership() (Leadership, <-chan struct{}) { return n.leadership.Get() }

// IsLeader reports whether this node is the raft leader (see Leadership.Ready for leader loops).
func (n *Node) IsLeader() bool { return n.leadership.Load().IsLeader }

// Leader returns the raft ID of the current leader, 0 if none is known.
func (n *Node) Leader() uint64 { return n.leadership.Load().Leader }

// AppliedIndex returns the index of the last entry applied to the StateMachine.
func (n *Node) AppliedIndex() uint64 { return n.applied.Load() }

// CommittedIndex returns the highest index this node knows to be committed.
func (n *Node) CommittedIndex() uint64 { return n.committed.Load() }

// WaitApplied returns once the StateMachine has applied index, or with ctx's error, ErrStopped or
// the node's failure.
func (n *Node) WaitApplied(ctx context.Context, index uint64) error {
	for {
		v, changed := n.applied.Get()
		if v >= index {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-n.failc:
			return n.Err()
		case <-n.done:
			return ErrStopped
		}
	}
}

// SetSnapshotInterval changes how many applied entries separate snapshots
// (0: the default). It takes effect at the next applied entry.
func (n *Node) SetSnapshotInterval(entries uint64) {
	if entries == 0 {
		entries = DefaultSnapshotInterval
	}
	n.snapshotInterval.Store(entries)
}

// Stats returns the node's counters.
func (n *Node) Stats() Stats {
	return Stats{Proposals: n.proposals.Load(), Readys: n.readys.Load(), WALSyncs: n.st.syncs.Load()}
}
