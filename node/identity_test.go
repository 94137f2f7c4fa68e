package node

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla/flotilla/ca"
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

// A state dir that holds a node of one cluster is not silently reused to
// join another: the join token pins its cluster's root CA.
func TestStateDirOfAnotherClusterIsRefused(t *testing.T) {
	dirA, dirB := t.TempDir(), t.TempDir()
	for _, dir := range []string{dirA, dirB} {
		n, err := New(Config{StateDir: dir, Hostname: "m", ListenRemoteAPI: "127.0.0.1:0", Executor: "sim"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := n.loadOrCreateIdentity(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	// A token of cluster B: its root CA's digest.
	rootB, err := os.ReadFile(filepath.Join(dirB, "certificates", ca.RootCertFile))
	if err != nil {
		t.Fatal(err)
	}
	rca, err := ca.ParseRootCA(rootB, nil)
	if err != nil {
		t.Fatal(err)
	}
	tokenB, err := ca.GenerateJoinToken(rca)
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(Config{StateDir: dirA, Hostname: "m", ListenRemoteAPI: "127.0.0.1:0", Executor: "sim", JoinAddr: "127.0.0.1:1", JoinToken: tokenB})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.loadOrCreateIdentity(context.Background()); err == nil || !strings.Contains(err.Error(), "another cluster") {
		t.Fatalf("state dir of cluster A with cluster B's token: %v, want a refusal", err)
	}
	// Its own cluster's token is only redundant.
	n, _ = New(Config{StateDir: dirB, Hostname: "m", ListenRemoteAPI: "127.0.0.1:0", Executor: "sim", JoinAddr: "127.0.0.1:1", JoinToken: tokenB})
	if _, err := n.loadOrCreateIdentity(context.Background()); err != nil {
		t.Fatalf("state dir of cluster B with its own token: %v", err)
	}
}
