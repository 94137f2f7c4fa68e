package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/defaults"
	"github.com/flotilla/flotilla/api/identity"
	"github.com/flotilla/flotilla/ca"
)

// nodeIdentity is what a node knows about itself before it runs.
type nodeIdentity struct {
	creds *ca.Credentials
	state *State
	// rootKey is set on the first manager until the cluster object holds it.
	rootKey []byte
}

// keyStore is the node's one key store: it remembers the lock and the data
// key of the node key file, which every save keeps.
func (n *Node) keyStore() *ca.KeyStore { return n.keys }

// loadOrCreateIdentity reads the node's certificate and state, or makes them:
// a new cluster when no join address is given, else by joining through it.
// Certificates are written before any other state, so a crash in the middle
// leaves a state dir that either starts or is set up again from scratch.
func (n *Node) loadOrCreateIdentity(ctx context.Context) (*nodeIdentity, error) {
	ks := n.keyStore()
	certPEM, keyPEM, err := ks.LoadNode()
	if lerr := lockError(err); lerr != err {
		return nil, lerr
	}
	switch {
	case err == nil:
		if ks.UnlockKey != nil && !ks.Locked() {
			n.log.Warn("this node's keys are not locked; --unlock-key is ignored")
		}
		if err := n.checkJoinFlagsAgainstState(ks); err != nil {
			return nil, err
		}
		return n.loadIdentity(ks, certPEM, keyPEM)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("node certificate in %s: %w", ks.Dir, err)
	}
	if _, err := os.Stat(filepath.Join(n.cfg.StateDir, "raft")); err == nil {
		return nil, fmt.Errorf("state dir %s has a raft log but no node certificate: restore %s from a backup, or move the state dir aside to start a new node", n.cfg.StateDir, ks.Dir)
	}
	if err := os.MkdirAll(ks.Dir, 0o700); err != nil {
		return nil, err
	}
	if n.cfg.JoinAddr == "" {
		return n.newCluster(ks)
	}
	return n.join(ctx, ks)
}

// checkJoinFlagsAgainstState refuses --join-token for a state dir that
// already holds a node of another cluster (a state dir copied from
// elsewhere, or the wrong --state-dir): the token pins its cluster's root
// CA. For the node's own cluster the flags are only redundant.
func (n *Node) checkJoinFlagsAgainstState(ks *ca.KeyStore) error {
	if n.cfg.JoinToken == "" {
		return nil
	}
	token, err := ca.ParseJoinToken(n.cfg.JoinToken)
	if err != nil {
		return err
	}
	rootPEM, err := ks.LoadRootCert()
	if err != nil {
		return fmt.Errorf("root CA certificate in %s: %w", ks.Dir, err)
	}
	if err := token.VerifyRootCA(rootPEM); err != nil {
		return fmt.Errorf("state dir %s already holds a node of another cluster than the join token's: "+
			"to join this cluster start with an empty --state-dir (move this one aside); to run the node it holds, start without --join-addr and --join-token",
			n.cfg.StateDir)
	}
	n.log.Info("the state dir already holds a node of this cluster: --join-addr and --join-token are ignored")
	return nil
}

func (n *Node) loadIdentity(ks *ca.KeyStore, certPEM, keyPEM []byte) (*nodeIdentity, error) {
	rootPEM, err := ks.LoadRootCert()
	if err != nil {
		return nil, fmt.Errorf("root CA certificate in %s: %w", ks.Dir, err)
	}
	rca, err := ca.ParseRootCA(rootPEM, nil)
	if err != nil {
		return nil, err
	}
	creds, err := ca.NewCredentials(rca, certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	if err := ca.CheckNotExpired(creds.Identity(), time.Now(), ks.Dir); err != nil {
		return nil, err
	}
	// A manager that crashed between writing its certificate and node.json
	// gets its raft ID here.
	state, err := loadOrCreateState(n.cfg.StateDir, creds.Identity().NodeID, creds.Identity().Role == api.NodeRoleManager)
	if err != nil {
		return nil, err
	}
	if n.cfg.JoinAddr != "" || n.cfg.JoinToken != "" {
		n.log.Warn("this state dir already holds a node; --join-addr and --join-token are ignored", "node.id", state.NodeID)
	}
	id := &nodeIdentity{creds: creds, state: state}
	if key, err := ks.LoadRootKey(); err == nil {
		id.rootKey = key
	}
	return id, nil
}

// newCluster makes the root CA of a new cluster and this node's manager
// certificate.
func (n *Node) newCluster(ks *ca.KeyStore) (*nodeIdentity, error) {
	rca, err := ca.CreateRootCA("flotilla-root-ca")
	if err != nil {
		return nil, err
	}
	clusterID, nodeID := identity.NewID(), identity.NewID()
	keyPEM, csrPEM, err := ca.GenerateKeyAndCSR()
	if err != nil {
		return nil, err
	}
	certPEM, err := rca.IssueNodeCertificate(csrPEM, nodeID, api.NodeRoleManager, clusterID, defaults.NodeCertExpiry)
	if err != nil {
		return nil, err
	}
	// The root key first: the cluster object is made from it later.
	if err := ks.SaveRootKey(rca.Key); err != nil {
		return nil, err
	}
	if err := ks.SaveRootCert(rca.Cert); err != nil {
		return nil, err
	}
	if err := ks.SaveNode(certPEM, keyPEM); err != nil {
		return nil, err
	}
	creds, err := ca.NewCredentials(rca, certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	state, err := loadOrCreateState(n.cfg.StateDir, nodeID, true)
	if err != nil {
		return nil, err
	}
	n.log.Info("created a new cluster's root CA and this manager's certificate", "node.id", nodeID, "cluster.id", clusterID)
	return &nodeIdentity{creds: creds, state: state, rootKey: rca.Key}, nil
}

// join gets a certificate from the cluster at JoinAddr with the join token.
func (n *Node) join(ctx context.Context, ks *ca.KeyStore) (*nodeIdentity, error) {
	token, err := ca.ParseJoinToken(n.cfg.JoinToken)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// 1. The root CA, over a connection that verifies nothing; the token pins it.
	rootPEM, err := n.fetchRoot(ctx, token)
	if err != nil {
		return nil, err
	}
	rca, err := ca.ParseRootCA(rootPEM, nil)
	if err != nil {
		return nil, err
	}
	// 2. The certificate, over a connection verified against that root.
	keyPEM, csrPEM, err := ca.GenerateKeyAndCSR()
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(n.cfg.JoinAddr, grpc.WithTransportCredentials(credentials.NewTLS(ca.BootstrapClientTLSConfig(&rca))))
	if err != nil {
		return nil, fmt.Errorf("join address %s: %w", n.cfg.JoinAddr, err)
	}
	defer conn.Close()
	resp, err := api.NewNodeCAClient(conn).IssueNodeCertificate(ctx, &api.IssueNodeCertificateRequest{CSR: csrPEM, Token: n.cfg.JoinToken})
	if err != nil {
		return nil, fmt.Errorf("join %s: %s", n.cfg.JoinAddr, statusMessage(err))
	}
	// The cluster has recorded the node now: if keeping its identity here
	// fails, say how to clean up.
	orphaned := func(err error) error {
		return fmt.Errorf("joined as node %s but could not keep its identity in %s: %w; remove the node with `swarmctl node rm --force %s`, fix the state dir and join again",
			resp.NodeID, n.cfg.StateDir, err, resp.NodeID)
	}
	if err := ks.SaveRootCert(rootPEM); err != nil {
		return nil, orphaned(err)
	}
	if err := ks.SaveNode(resp.Certificate, keyPEM); err != nil {
		return nil, orphaned(err)
	}
	creds, err := ca.NewCredentials(rca, resp.Certificate, keyPEM)
	if err != nil {
		return nil, orphaned(err)
	}
	// A fresh identity: whatever an aborted earlier join left is replaced.
	state := &State{NodeID: resp.NodeID, Managers: []string{n.cfg.JoinAddr}}
	if resp.Role == api.NodeRoleManager {
		state.RaftID = newRaftID()
	}
	if err := saveState(n.cfg.StateDir, state); err != nil {
		return nil, orphaned(err)
	}
	n.log.Info("joined the cluster", "node.id", resp.NodeID, "role", resp.Role.String(), "cluster.id", resp.ClusterID, "via", n.cfg.JoinAddr)
	return &nodeIdentity{creds: creds, state: state}, nil
}

func (n *Node) fetchRoot(ctx context.Context, token ca.JoinToken) ([]byte, error) {
	conn, err := grpc.NewClient(n.cfg.JoinAddr, grpc.WithTransportCredentials(credentials.NewTLS(ca.BootstrapClientTLSConfig(nil))))
	if err != nil {
		return nil, fmt.Errorf("join address %s: %w", n.cfg.JoinAddr, err)
	}
	defer conn.Close()
	resp, err := api.NewNodeCAClient(conn).GetRootCACertificate(ctx, &api.GetRootCACertificateRequest{})
	if err != nil {
		return nil, fmt.Errorf("cannot get the cluster's root CA from %s: %s", n.cfg.JoinAddr, statusMessage(err))
	}
	if err := token.VerifyRootCA(resp.Certificate); err != nil {
		return nil, err
	}
	return resp.Certificate, nil
}
