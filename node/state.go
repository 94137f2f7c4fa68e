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

	"github.com/flotilla/flotilla/internal/atomicfile"
)

// State is what the node keeps about itself beside its certificate, in
// <state dir>/node.json.
type State struct {
	// NodeID is the CN of the node's certificate.
	NodeID string `json:"node_id"`
	// RaftID is a manager's raft member ID. IDs are random 64-bit numbers, so
	// a removed member's ID is never handed out again.
	RaftID uint64 `json:"raft_id,omitempty"`
	// Managers are the manager addresses a worker connects to on start.
	Managers []string `json:"managers,omitempty"`
}

const stateFile = "node.json"

// loadOrCreateState reads node.json, or makes it for nodeID (with a raft ID
// when the node is a manager). It is written after the certificates and
// before any raft state.
func loadOrCreateState(dir, nodeID string, manager bool) (*State, error) {
	path := filepath.Join(dir, stateFile)
	data, err := os.ReadFile(path)
	if err == nil {
		var s State
		if err := json.Unmarshal(data, &s); err != nil || s.NodeID == "" {
			return nil, fmt.Errorf("node state %s is damaged (%v): restore it from a backup or move the state dir aside to start a new node", path, err)
		}
		if s.NodeID != nodeID {
			return nil, fmt.Errorf("node state %s is for node %s but the certificate is for %s: restore a matching pair", path, s.NodeID, nodeID)
		}
		if manager && s.RaftID == 0 {
			s.RaftID = newRaftID()
			if err := saveState(dir, &s); err != nil {
				return nil, err
			}
		}
		return &s, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read node state: %w", err)
	}
	s := &State{NodeID: nodeID}
	if manager {
		s.RaftID = newRaftID()
	}
	if err := saveState(dir, s); err != nil {
		return nil, err
	}
	return s, nil
}

func saveState(dir string, s *State) error {
	data, _ := json.MarshalIndent(s, "", "  ")
	if err := atomicfile.WriteFile(filepath.Join(dir, stateFile), data, 0o600); err != nil {
		return fmt.Errorf("write node state: %w", err)
	}
	return nil
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
