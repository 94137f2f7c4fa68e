package node

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/flotilla/flotilla/api"
)

// checkForceNewCluster refuses --force-new-cluster where there is no
// manager state to restart a cluster from: before the identity is loaded
// (id nil), a state dir without a raft log, which would otherwise make a new
// cluster; after, a node that is not a manager.
func (n *Node) checkForceNewCluster(id *nodeIdentity) error {
	if !n.cfg.ForceNewCluster {
		return nil
	}
	if id == nil {
		wal := filepath.Join(n.cfg.StateDir, "raft", "wal")
		if ents, err := os.ReadDir(wal); err != nil || len(ents) == 0 {
			return fmt.Errorf("--force-new-cluster restarts a cluster from the state of one of its managers, but %s holds no raft log: run it with the state dir of a surviving manager", n.cfg.StateDir)
		}
		return nil
	}
	if role := id.creds.Identity().Role; role != api.NodeRoleManager {
		return fmt.Errorf("--force-new-cluster restarts a cluster from a manager's state, but node %s in %s is a %s", id.state.NodeID, n.cfg.StateDir, role)
	}
	n.log.Warn("forcing a new cluster from this manager's state: it will be the only manager; the other managers are removed for good (remove their nodes with swarmctl node rm --force, join new managers with the manager token)")
	return nil
}
