package raft

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/raft/v3/raftpb"
)

// Forcing a new cluster (Config.ForceNewCluster) is disaster recovery for a cluster that lost its
// quorum for good: one surviving member restarts from its own log as the only voter.
//
// As in etcd's force-new-cluster, New rewrites the membership by appending to the log, before raft
// starts, one ConfChangeRemoveNode per other voter, and a HardState that commits them; nothing
// already in the log or the snapshot is changed. Run then applies these entries like any other
// conf change: raft's configuration shrinks to this member, the removed IDs join the replicated
// removed set (so they are never voters again and their messages are refused), their addresses
// are dropped from the transport, and the sole voter elects itself as soon as it has applied its
// log. Because the rewrite is in the log, it is durable and replicated: a member that joins
// later learns the removals with the rest.
//
// Unlike etcd, entries after this member's commit index are kept and committed with the rest,
// which is what raft would have done had this member won an election: such an entry may have
// been committed by the lost quorum (and acknowledged to a client) without this member hearing
// of it yet, and one that was not had an unknown outcome for its proposer.

var (
	// ErrNoClusterState: ForceNewCluster was asked of a member whose data directory holds no log.
	ErrNoClusterState = errors.New("raft: there is no raft log to force a new cluster from")
)

// hasLog reports whether dir holds a raft log (a WAL, possibly mid-encryption, see migrate).
func hasLog(dir string) bool {
	return wal.Exist(filepath.Join(dir, walSubdir)) || wal.Exist(filepath.Join(dir, walMigrateSubdir))
}

// confView is the membership at the end of a log: raft's voters and the removed IDs, computed
// the way the Run loop applies conf changes (see applyConfChange).
type confView struct {
	voters  []uint64
	removed map[uint64]struct{}
}

func newConfView(rec recovered) (confView, error) {
	v := confView{removed: map[uint64]struct{}{}}
	if sn := rec.snapshot; sn != nil {
		members, _, err := decodeSnapshot(sn.Data)
		if err != nil {
			return v, fmt.Errorf("raft: snapshot %d: %w", sn.Metadata.Index, err)
		}
		v.voters = slices.Clone(sn.Metadata.ConfState.Voters)
		if members != nil {
			for _, id := range members.Removed {
				v.removed[id] = struct{}{}
			}
		}
	}
	for _, e := range rec.ents {
		switch e.Type {
		case raftpb.EntryConfChange:
			var cc raftpb.ConfChange
			if err := cc.Unmarshal(e.Data); err != nil {
				return v, fmt.Errorf("raft: entry %d: decode conf change: %w", e.Index, err)
			}
			v.apply(cc.Type, cc.NodeID)
		case raftpb.EntryConfChangeV2:
			var cc raftpb.ConfChangeV2
			if err := cc.Unmarshal(e.Data); err != nil {
				return v, fmt.Errorf("raft: entry %d: decode conf change: %w", e.Index, err)
			}
			for _, ch := range cc.Changes {
				v.apply(ch.Type, ch.NodeID)
			}
		}
	}
	slices.Sort(v.voters)
	return v, nil
}

func (v *confView) apply(typ raftpb.ConfChangeType, id uint64) {
	_, removed := v.removed[id]
	switch typ {
	case raftpb.ConfChangeAddNode:
		if !removed && id != 0 && !slices.Contains(v.voters, id) {
			v.voters = append(v.voters, id)
		}
	case raftpb.ConfChangeRemoveNode:
		if len(v.voters) == 1 && v.voters[0] == id {
			return // refused at apply: the last voter cannot be removed
		}
		v.voters = slices.DeleteFunc(v.voters, func(x uint64) bool { return x == id })
		v.removed[id] = struct{}{}
	}
}

// forceNewCluster appends to the log what makes this member the only voter, durably, and returns
// the recovered log with it (see the comment at the top of this file). It runs in New, before raft
// is built from the log.
func (n *Node) forceNewCluster(rec recovered) (recovered, error) {
	if rec.empty() {
		return rec, fmt.Errorf("%w: %s holds none; run it on the state of a manager that was a member of the cluster", ErrNoClusterState, n.cfg.Dir)
	}
	view, err := newConfView(rec)
	if err != nil {
		return rec, err
	}
	if _, ok := view.removed[n.id]; ok {
		return rec, fmt.Errorf("%w: this member (%x) was removed from its cluster, so its state is not the cluster's; force a new cluster from a manager that is still a member",
			ErrMemberRemoved, n.id)
	}
	if !slices.Contains(view.voters, n.id) {
		return rec, fmt.Errorf("%w: this member (%x) is not a voter in its own log (it never finished joining the cluster); force a new cluster from another manager's state",
			ErrNoClusterState, n.id)
	}

	last, term := uint64(0), rec.hs.Term
	if sn := rec.snapshot; sn != nil {
		last, term = sn.Metadata.Index, max(term, sn.Metadata.Term)
	}
	if k := len(rec.ents); k > 0 {
		last, term = rec.ents[k-1].Index, max(term, rec.ents[k-1].Term)
	}
	uncommitted := last - min(last, rec.hs.Commit)
	var ents []raftpb.Entry
	var removed []string
	for _, id := range view.voters {
		if id == n.id {
			continue
		}
		cc := raftpb.ConfChange{Type: raftpb.ConfChangeRemoveNode, NodeID: id}
		data, err := cc.Marshal()
		if err != nil {
			return rec, fmt.Errorf("raft: encode conf change: %w", err)
		}
		last++
		ents = append(ents, raftpb.Entry{Type: raftpb.EntryConfChange, Term: term, Index: last, Data: data})
		removed = append(removed, fmt.Sprintf("%x", id))
	}
	if len(ents) == 0 && uncommitted == 0 {
		n.lg.Info("raft: forcing a new cluster: this member is already the only voter; nothing to change")
		return rec, nil
	}
	hs := rec.hs
	if term != hs.Term {
		hs.Vote = 0 // a vote is for one term
	}
	hs.Term, hs.Commit = term, last
	// One WAL write, fsynced (it has entries, or a new commit index raft.MustSync does not see:
	// sync it explicitly).
	if err := n.st.save(hs, ents); err != nil {
		return rec, err
	}
	if err := n.st.sync(); err != nil {
		return rec, err
	}
	rec.hs = hs
	rec.ents = append(rec.ents, ents...)
	n.lg.Warn("raft: forcing a new cluster from this member's log: it is now the only voter; the other members are removed and their raft IDs can never be used again",
		"removed", removed, "commit", hs.Commit, "term", hs.Term, "previously_uncommitted_entries", uncommitted)
	return rec, nil
}
