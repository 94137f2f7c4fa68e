package node

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// A first manager that crashed after writing its certificates but before
// node.json restarts as a manager with a raft ID, not as a broken worker.
func TestManagerCrashedBeforeNodeStateGetsARaftID(t *testing.T) {
	dir := t.TempDir()
	n, err := New(Config{StateDir: dir, Hostname: "m", ListenRemoteAPI: "127.0.0.1:0", Executor: "sim"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := n.loadOrCreateIdentity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, stateFile)); err != nil {
		t.Fatal(err)
	}
	again, err := n.loadOrCreateIdentity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if again.state.NodeID != first.state.NodeID || again.state.RaftID == 0 {
		t.Fatalf("after the crash: state %+v, want node %s with a raft ID", again.state, first.state.NodeID)
	}
	if again.rootKey == nil {
		t.Fatal("the root CA key kept for creating the cluster was lost")
	}
}
