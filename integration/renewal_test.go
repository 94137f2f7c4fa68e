package integration

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gogo/protobuf/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/validation"
	"github.com/flotilla/flotilla/ca"
	"github.com/flotilla/flotilla/node"
)

// startNode runs an in-process node and stops it at the end of the test.
func startNode(t *testing.T, cfg node.Config) *node.Node {
	t.Helper()
	cfg.Executor = "sim"
	if cfg.ListenRemoteAPI == "" {
		cfg.ListenRemoteAPI = "127.0.0.1:0"
	}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	n, err := node.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := withTimeout(t)
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = n.Stop(sctx)
	})
	select {
	case <-n.Ready():
	case <-n.Done():
		t.Fatalf("node stopped: %v", n.Err())
	case <-ctx.Done():
		t.Fatal("node not ready in time")
	}
	return n
}

func controlClient(t testing.TB, sock string) api.ControlClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(api.MaxControlMessageBytes)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return api.NewControlClient(conn)
}

func TestShortCertificatesRenewWithoutInterruption(t *testing.T) {
	old := validation.MinNodeCertExpiry
	validation.MinNodeCertExpiry = time.Second
	t.Cleanup(func() { validation.MinNodeCertExpiry = old })

	mgr := startNode(t, node.Config{StateDir: t.TempDir(), Hostname: "mgr"})
	ctl := controlClient(t, mgr.ControlSocket())
	ctx := withTimeout(t)
	clusters, err := ctl.ListClusters(ctx, &api.ListClustersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	c := clusters.Clusters[0]
	spec := c.Spec.Copy()
	spec.CAConfig.NodeCertExpiry = types.DurationProto(6 * time.Second)
	spec.Dispatcher.HeartbeatPeriod = types.DurationProto(time.Second)
	if _, err := ctl.UpdateCluster(ctx, &api.UpdateClusterRequest{ClusterID: c.ID, ClusterVersion: c.Meta.Version, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	nodes, err := ctl.ListNodes(ctx, &api.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	addr := nodes.Nodes[0].ManagerStatus.Addr

	workerDir := t.TempDir()
	startNode(t, node.Config{StateDir: workerDir, Hostname: "w", JoinAddr: addr, JoinToken: c.RootCA.JoinTokens.Worker})
	certFile := filepath.Join(workerDir, "certificates", ca.NodeCertFile)
	first := certExpiry(t, certFile)

	// Within ~3 validities the worker renews at least twice, and the
	// cluster never sees it other than READY.
	deadline := time.Now().Add(20 * time.Second)
	renewals, last := 0, first
	for renewals < 2 && time.Now().Before(deadline) {
		resp, err := ctl.ListNodes(ctx, &api.ListNodesRequest{Filters: &api.ListNodesRequest_Filters{ListFilters: api.ListFilters{Names: []string{"w"}}}})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Nodes) != 1 || resp.Nodes[0].Status.State != api.NodeStatusReady {
			t.Fatalf("worker not READY during renewal: %+v", resp.Nodes)
		}
		if exp := certExpiry(t, certFile); exp.After(last) {
			renewals++
			last = exp
		}
		time.Sleep(100 * time.Millisecond)
	}
	if renewals < 2 {
		t.Fatalf("%d renewals in 20s of 6s certificates (first expiry %s)", renewals, first)
	}
	if time.Now().After(first) {
		t.Logf("the worker outlived its first certificate (expired %s) and stayed READY", first.Format(time.TimeOnly))
	}
}

// certExpiry reads the node certificate file (not through a KeyStore, whose
// Load would tidy files the node may be writing).
func certExpiry(t *testing.T, path string) time.Time {
	t.Helper()
	cert, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	id, err := ca.ParseNodeCertificate(cert)
	if err != nil {
		t.Fatal(err)
	}
	return id.NotAfter
}
