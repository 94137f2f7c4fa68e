package node

import (
	"errors"
	"fmt"

	"github.com/flotilla/flotilla/ca"
	"github.com/flotilla/flotilla/raft"
)

// Autolock. A manager keeps its TLS key and its raft data key in one key file
// (ca.KeyStore); when the cluster turns autolock on, every manager seals that
// file with the cluster's unlock key as it applies the change, and a
// restarted manager needs the key (Config.UnlockKey) to start. Workers are
// never locked.

// ErrLocked: the node's keys are sealed with the cluster's unlock key and
// none was given.
var ErrLocked = errors.New("this manager is locked: start it with --unlock-key SWMKEY-1-... (swarmctl cluster unlock-key on another manager shows it)")

// ErrWrongUnlockKey: the unlock key given does not open the node's keys.
var ErrWrongUnlockKey = errors.New("the unlock key does not open this manager's keys")

// lockError turns the key store's lock errors into what the operator of a
// locked manager needs to read; other errors are returned as they are.
func lockError(err error) error {
	switch {
	case errors.Is(err, ca.ErrLocked):
		return ErrLocked
	case errors.Is(err, ca.ErrWrongUnlockKey):
		return fmt.Errorf("%w: give the current key (swarmctl cluster unlock-key on another manager shows it), "+
			"or, if it was rotated while this manager was stopped, the key from before the rotation", ErrWrongUnlockKey)
	}
	return err
}

// raftDataKey is this manager's raft data key, made on first use (the raft
// log of an earlier version is encrypted with it when the log opens).
func (n *Node) raftDataKey() (*raft.DataKey, error) {
	k, err := n.keys.DataKey()
	if err != nil {
		return nil, fmt.Errorf("raft data key in %s: %w", n.keys.Dir, lockError(err))
	}
	return &raft.DataKey{ID: k.ID, Key: k.Key, LogEncrypted: k.LogEncrypted}, nil
}

// raftLogOpened records, once the manager has opened its raft log with the
// data key, that the log is encrypted: a plaintext log put in its place
// later is refused.
func (n *Node) raftLogOpened() error {
	if err := n.keys.MarkLogEncrypted(); err != nil {
		return fmt.Errorf("raft data key in %s: %w", n.keys.Dir, lockError(err))
	}
	return nil
}

// unlockKeyChanged seals this manager's keys with the cluster's unlock key,
// or stores them in the clear when autolock is off (k nil). A failure leaves
// the key file as it was; the next change of the cluster object retries.
func (n *Node) unlockKeyChanged(k ca.UnlockKey) {
	changed, err := n.keys.Lock(k)
	switch {
	case err != nil:
		n.log.Error("cannot re-seal this manager's keys to follow the cluster's autolock setting; they stay as they were", "err", err)
	case changed && k == nil:
		n.log.Info("autolock is off: this manager's keys are stored unencrypted; it restarts without an unlock key")
	case changed:
		n.log.Info("autolock: this manager's keys are sealed with the cluster's unlock key; a restart needs --unlock-key")
	}
}
