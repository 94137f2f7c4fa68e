package caserver

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/defaults"
	"github.com/flotilla/flotilla/ca"
	"github.com/flotilla/flotilla/manager/store"
	"github.com/flotilla/flotilla/manager/store/storetest"
)

type fixture struct {
	s     *Server
	store *store.MemoryStore
	root  ca.RootCA
	c     *api.Cluster
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	root, err := ca.CreateRootCA("test-root")
	if err != nil {
		t.Fatal(err)
	}
	st, _ := storetest.New()
	c := &api.Cluster{ID: "cluster1", Spec: defaults.ClusterSpec(),
		RootCA: api.RootCA{CACert: root.Cert, CAKey: root.Key, CACertHash: root.Digest()}}
	if c.RootCA.JoinTokens.Worker, err = ca.GenerateJoinToken(root); err != nil {
		t.Fatal(err)
	}
	if c.RootCA.JoinTokens.Manager, err = ca.GenerateJoinToken(root); err != nil {
		t.Fatal(err)
	}
	if err := st.Update(context.Background(), func(tx store.Tx) error { return tx.Create(c) }); err != nil {
		t.Fatal(err)
	}
	return &fixture{s: New(st, slog.New(slog.NewTextHandler(io.Discard, nil))), store: st, root: root, c: c}
}

func csr(t *testing.T) []byte {
	t.Helper()
	_, csrPEM, err := ca.GenerateKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	return csrPEM
}

func code(err error) codes.Code { return status.Code(err) }

func TestJoinWithWorkerTokenRecordsTheNode(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	resp, err := f.s.IssueNodeCertificate(ctx, &api.IssueNodeCertificateRequest{CSR: csr(t), Token: f.c.RootCA.JoinTokens.Worker})
	if err != nil {
		t.Fatal(err)
	}
	id, err := ca.ParseNodeCertificate(resp.Certificate)
	if err != nil {
		t.Fatal(err)
	}
	if id.NodeID != resp.NodeID || id.Role != api.NodeRoleWorker || id.ClusterID != "cluster1" {
		t.Fatalf("certificate identity %+v, response %+v", id, resp)
	}
	var n *api.Node
	f.store.View(func(tx store.ReadTx) { n = store.Get[*api.Node](tx, resp.NodeID) })
	if n == nil || n.Role != api.NodeRoleWorker || n.Certificate.Status != api.IssuanceStateIssued {
		t.Fatalf("node record after join: %+v", n)
	}
}

func TestJoinRefusals(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	other, _ := ca.CreateRootCA("other")
	foreign, _ := ca.GenerateJoinToken(other)
	rotated, _ := ca.GenerateJoinToken(f.root)
	for _, c := range []struct {
		name  string
		req   *api.IssueNodeCertificateRequest
		code  codes.Code
		words string
	}{
		{"no CSR", &api.IssueNodeCertificateRequest{Token: f.c.RootCA.JoinTokens.Worker}, codes.InvalidArgument, "certificate signing request"},
		{"malformed token", &api.IssueNodeCertificateRequest{CSR: csr(t), Token: "SWMTKN-1-nope"}, codes.InvalidArgument, "malformed"},
		{"foreign token", &api.IssueNodeCertificateRequest{CSR: csr(t), Token: foreign}, codes.PermissionDenied, "not valid for this cluster"},
		{"rotated token", &api.IssueNodeCertificateRequest{CSR: csr(t), Token: rotated}, codes.PermissionDenied, "rotated"},
		{"garbage CSR", &api.IssueNodeCertificateRequest{CSR: []byte("junk"), Token: f.c.RootCA.JoinTokens.Worker}, codes.InvalidArgument, "cannot sign"},
		{"no token, no certificate", &api.IssueNodeCertificateRequest{CSR: csr(t)}, codes.Unauthenticated, "join token"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := f.s.IssueNodeCertificate(ctx, c.req)
			if code(err) != c.code || !strings.Contains(err.Error(), c.words) {
				t.Fatalf("got %v, want %v containing %q", err, c.code, c.words)
			}
		})
	}
	var nodes []*api.Node
	f.store.View(func(tx store.ReadTx) { nodes, _ = store.Find[*api.Node](tx, store.All()) })
	if len(nodes) != 0 {
		t.Fatalf("refused joins left %d nodes", len(nodes))
	}
}

// The manager token makes a manager: its certificate says so, and so does
// its node (it then joins raft through the leader).
func TestManagerTokenJoinsAManager(t *testing.T) {
	f := newFixture(t)
	resp, err := f.s.IssueNodeCertificate(context.Background(), &api.IssueNodeCertificateRequest{CSR: csr(t), Token: f.c.RootCA.JoinTokens.Manager})
	if err != nil {
		t.Fatal(err)
	}
	id, err := ca.ParseNodeCertificate(resp.Certificate)
	if err != nil || id.Role != api.NodeRoleManager || resp.Role != api.NodeRoleManager {
		t.Fatalf("certificate %+v (%v), response role %v; want a manager", id, err, resp.Role)
	}
	var node *api.Node
	f.store.View(func(tx store.ReadTx) { node = store.Get[*api.Node](tx, resp.NodeID) })
	if node == nil || node.Role != api.NodeRoleManager || node.Spec.DesiredRole != api.NodeRoleManager {
		t.Fatalf("node %+v, want a manager", node)
	}
}

func TestRenewalKeepsIdentityAndRefusesRemovedNodes(t *testing.T) {
	f := newFixture(t)
	joined, err := f.s.IssueNodeCertificate(context.Background(), &api.IssueNodeCertificateRequest{CSR: csr(t), Token: f.c.RootCA.JoinTokens.Worker})
	if err != nil {
		t.Fatal(err)
	}
	id, _ := ca.ParseNodeCertificate(joined.Certificate)
	// renew is what IssueNodeCertificate does for a caller whose certificate
	// the authorizer verified: no token needed.
	renewCtx := context.Background()
	resp, err := f.s.renew(renewCtx, id, &api.IssueNodeCertificateRequest{CSR: csr(t)})
	if err != nil {
		t.Fatal(err)
	}
	if resp.NodeID != id.NodeID || resp.Role != api.NodeRoleWorker {
		t.Fatalf("renewal changed identity: %+v", resp)
	}
	if err := f.store.Update(context.Background(), func(tx store.Tx) error { return tx.Delete(api.KindNode, id.NodeID) }); err != nil {
		t.Fatal(err)
	}
	_, err = f.s.renew(renewCtx, id, &api.IssueNodeCertificateRequest{CSR: csr(t)})
	if code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "removed") {
		t.Fatalf("renewal of a removed node: %v", err)
	}
}

// An external CA configured in the cluster signs instead of the local key;
// it is asked for the identity the manager decides, and its refusal is
// passed on.
func TestJoinThroughExternalCA(t *testing.T) {
	f := newFixture(t)
	var calls atomic.Int32
	refuse := atomic.Bool{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		var req struct {
			Request string `json:"certificate_request"`
			Subject struct {
				CN    string
				Names []struct{ O, OU string }
			} `json:"subject"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		if refuse.Load() {
			w.WriteHeader(400)
			_, _ = io.WriteString(w, `{"success":false,"errors":[{"code":1000,"message":"policy says no"}]}`)
			return
		}
		role := api.NodeRoleWorker
		if len(req.Subject.Names) > 0 && req.Subject.Names[0].OU == ca.ManagerRoleOU {
			role = api.NodeRoleManager
		}
		org := ""
		if len(req.Subject.Names) > 0 {
			org = req.Subject.Names[0].O
		}
		cert, err := f.root.IssueNodeCertificate([]byte(req.Request), req.Subject.CN, role, org, time.Hour)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		b, _ := json.Marshal(map[string]any{"success": true, "result": map[string]string{"certificate": string(cert)}})
		_, _ = w.Write(b)
	}))
	defer srv.Close()

	err := f.store.Update(context.Background(), func(tx store.Tx) error {
		c := store.Get[*api.Cluster](tx, f.c.ID)
		c.Spec.CAConfig.ExternalCAs = []*api.ExternalCA{{Protocol: api.ExternalCAProtocolCFSSL, URL: srv.URL}}
		return tx.Update(c)
	})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := f.s.IssueNodeCertificate(context.Background(), &api.IssueNodeCertificateRequest{CSR: csr(t), Token: f.c.RootCA.JoinTokens.Worker})
	if err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 1 {
		t.Fatalf("external CA called %d times, want 1", calls.Load())
	}
	id, err := ca.ParseNodeCertificate(resp.Certificate)
	if err != nil || id.NodeID != resp.NodeID || id.ClusterID != f.c.ID {
		t.Fatalf("external certificate identity %+v (%v)", id, err)
	}

	refuse.Store(true)
	_, err = f.s.IssueNodeCertificate(context.Background(), &api.IssueNodeCertificateRequest{CSR: csr(t), Token: f.c.RootCA.JoinTokens.Worker})
	if code(err) != codes.Unavailable || !strings.Contains(err.Error(), "policy says no") {
		t.Fatalf("external CA refusal: %v", err)
	}
}
