package node

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/flotilla/flotilla/api/identity"
)

// State is the node's identity, kept in <state dir>/node.json.
type State struct {
	NodeID string `json:"node_id"`
	// RaftID is this node's raft member ID. IDs are random 64-bit numbers, so
	// a removed member's ID is never handed out again.
	RaftID uint64 `json:"raft_id"`
}

const stateFile = "node.json"

// loadOrCreateState reads the node identity, or makes and durably writes a
// new one. It is written before any raft state, so a crash never leaves a
// raft log without the identity that owns it.
func loadOrCreateState(dir string) (*State, bool, error) {
	path := filepath.Join(dir, stateFile)
	data, err := os.ReadFile(path)
	if err == nil {
		var s State
		if err := json.Unmarshal(data, &s); err != nil || s.NodeID == "" || s.RaftID == 0 {
			return nil, false, fmt.Errorf("node identity %s is damaged (%v): restore it from a backup or move the state dir aside to start a new node", path, err)
		}
		return &s, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("read node identity: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "raft")); err == nil {
		return nil, false, fmt.Errorf("state dir %s has a raft log but no %s: it is not a node's state; move it aside or restore %s", dir, stateFile, stateFile)
	}
	s := &State{NodeID: identity.NewID(), RaftID: newRaftID()}
	data, _ = json.MarshalIndent(s, "", "  ")
	if err := writeFileAtomic(path, data); err != nil {
		return nil, false, fmt.Errorf("write node identity: %w", err)
	}
	return s, true, nil
}

func newRaftID() uint64 {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic("no randomness: " + err.Error())
		}
		if id := binary.BigEndian.Uint64(b[:]); id != 0 {
			return id
		}
	}
}

// writeFileAtomic writes data so that path holds either the old or the new
// content after a crash, never a mix.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// lockStateDir takes an exclusive lock on the state dir for this process's
// lifetime, so that a second swarmd on the same dir is refused.
func lockStateDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, "swarmd.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		pid, _ := os.ReadFile(path)
		f.Close()
		holder := "another process"
		if p := strings.TrimSpace(string(pid)); p != "" {
			holder = "another swarmd (pid " + p + ")"
		}
		return nil, fmt.Errorf("state dir %s is in use by %s: stop it first, or give this one another --state-dir", dir, holder)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, nil
}
