package ca

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	_ "github.com/flotilla/flotilla/api/codec"
)

const (
	methodList  = "/grpc.health.v1.Health/List"
	methodCheck = "/grpc.health.v1.Health/Check"
	methodWatch = "/grpc.health.v1.Health/Watch"
)

var bothRoles = []api.NodeRole{api.NodeRoleWorker, api.NodeRoleManager}

// testPolicy: List is open to joining nodes, Check needs a manager, Watch
// (a stream) any node.
var testPolicy = Policy{
	methodList:  {AllowAnonymous: true, Roles: bothRoles},
	methodCheck: {Roles: []api.NodeRole{api.NodeRoleManager}},
	// Watch skips the check function: a service that decides membership
	// itself (raft) lets the removed node through to say so.
	methodWatch: {Roles: bothRoles, SkipCheck: true},
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines() []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// call is what a handler saw: the method and the identity the authorizer put
// in its context.
type call struct {
	method string
	id     NodeIdentity
	hasID  bool
}

type testServer struct {
	addr string
	logs *lockedBuffer

	mu    sync.Mutex
	calls []call
}

func (s *testServer) record(ctx context.Context, method string) {
	id, ok := IdentityFromContext(ctx)
	s.mu.Lock()
	s.calls = append(s.calls, call{method, id, ok})
	s.mu.Unlock()
}

func (s *testServer) lastCall() call {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.calls) == 0 {
		return call{}
	}
	return s.calls[len(s.calls)-1]
}

func (s *testServer) callCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.calls)
}

// startServer serves the gRPC health service on 127.0.0.1 with mTLS from
// creds and the authorizer; it stops with the test.
func startServer(t *testing.T, creds *Credentials, policy Policy, check CheckFunc) *testServer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{addr: lis.Addr().String(), logs: &lockedBuffer{}}
	log := slog.New(slog.NewJSONHandler(ts.logs, nil))
	clusterID := creds.Identity().ClusterID
	authz := NewAuthorizer(policy, func() string { return clusterID }, check, log)
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(creds.ServerTLSConfig())),
		grpc.ChainUnaryInterceptor(authz.Unary(), func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			ts.record(ctx, info.FullMethod)
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(authz.Stream(), func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			ts.record(ss.Context(), info.FullMethod)
			return h(srv, ss)
		}),
	)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return ts
}

func dial(t *testing.T, addr string, cfg *tls.Config) healthpb.HealthClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return healthpb.NewHealthClient(conn)
}

func newCreds(t *testing.T, rca RootCA, nodeID string, role api.NodeRole, clusterID string) *Credentials {
	t.Helper()
	certPEM, keyPEM := issueNode(t, rca, nodeID, role, clusterID, time.Hour)
	c, err := NewCredentials(rca, certPEM, keyPEM)
	if err != nil {
		t.Fatalf("NewCredentials(%s): %v", nodeID, err)
	}
	return c
}

// invoke calls method and returns the error of the call (for Watch, of the
// first message).
func invoke(ctx context.Context, c healthpb.HealthClient, method string, opts ...grpc.CallOption) error {
	switch method {
	case methodList:
		_, err := c.List(ctx, &healthpb.HealthListRequest{}, opts...)
		return err
	case methodCheck:
		_, err := c.Check(ctx, &healthpb.HealthCheckRequest{}, opts...)
		return err
	case methodWatch:
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		st, err := c.Watch(ctx, &healthpb.HealthCheckRequest{}, opts...)
		if err != nil {
			return err
		}
		_, err = st.Recv()
		return err
	}
	panic(method)
}

func TestAuthorizerOverMutualTLS(t *testing.T) {
	rca := newRoot(t)
	const cluster = "cluster1"
	server := newCreds(t, rca, "mgr1", api.NodeRoleManager, cluster)
	removed := "removed1"
	ts := startServer(t, server, testPolicy, func(ctx context.Context, id NodeIdentity) error {
		if id.NodeID == removed {
			return status.Errorf(codes.NotFound, "node %s was removed from the cluster", id.NodeID)
		}
		return nil
	})

	worker := newCreds(t, rca, "worker1", api.NodeRoleWorker, cluster)
	manager := newCreds(t, rca, "mgr2", api.NodeRoleManager, cluster)
	foreign := newCreds(t, rca, "worker9", api.NodeRoleWorker, "cluster2")
	gone := newCreds(t, rca, removed, api.NodeRoleWorker, cluster)

	// A node of another CA, that trusts our root to reach the server.
	otherCA := newRoot(t)
	intruder := newCreds(t, otherCA, "worker1", api.NodeRoleManager, cluster)
	intruderTLS := BootstrapClientTLSConfig(&rca)
	intruderTLS.Certificates = []tls.Certificate{intruder.Certificate()}

	clients := map[string]healthpb.HealthClient{
		"anonymous":     dial(t, ts.addr, BootstrapClientTLSConfig(&rca)),
		"worker":        dial(t, ts.addr, worker.ClientTLSConfig()),
		"manager":       dial(t, ts.addr, manager.ClientTLSConfig()),
		"other cluster": dial(t, ts.addr, foreign.ClientTLSConfig()),
		"removed node":  dial(t, ts.addr, gone.ClientTLSConfig()),
		"other CA":      dial(t, ts.addr, intruderTLS),
	}

	cases := []struct {
		client, method string
		wantCode       codes.Code
		wantMsg        string
		wantNode       string // identity the handler sees; "" = anonymous
	}{
		{"anonymous", methodList, codes.OK, "", ""},
		{"anonymous", methodCheck, codes.Unauthenticated, "needs a node certificate", ""},
		{"anonymous", methodWatch, codes.Unauthenticated, "needs a node certificate", ""},
		{"worker", methodList, codes.OK, "", "worker1"},
		{"worker", methodWatch, codes.OK, "", "worker1"},
		{"worker", methodCheck, codes.PermissionDenied, "worker nodes may not call /grpc.health.v1.Health/Check: it needs a manager certificate", ""},
		{"manager", methodCheck, codes.OK, "", "mgr2"},
		{"manager", methodWatch, codes.OK, "", "mgr2"},
		{"other cluster", methodList, codes.PermissionDenied, "belongs to cluster cluster2, not to this cluster cluster1", ""},
		{"removed node", methodList, codes.NotFound, "node removed1 was removed from the cluster", ""},
		{"removed node", methodWatch, codes.OK, "", "removed1"},
		{"other CA", methodList, codes.Unavailable, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.client+" calls "+tc.method, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			before := ts.callCount()
			err := invoke(ctx, clients[tc.client], tc.method)
			if got := status.Code(err); got != tc.wantCode {
				t.Fatalf("code %v (%v), want %v", got, err, tc.wantCode)
			}
			if !strings.Contains(status.Convert(err).Message(), tc.wantMsg) {
				t.Fatalf("message %q does not say %q", status.Convert(err).Message(), tc.wantMsg)
			}
			if tc.wantCode != codes.OK {
				if ts.callCount() != before {
					t.Fatal("a refused call reached the handler")
				}
				return
			}
			c := ts.lastCall()
			if c.method != tc.method || c.hasID != (tc.wantNode != "") || c.id.NodeID != tc.wantNode {
				t.Fatalf("handler saw %+v, want node %q", c, tc.wantNode)
			}
		})
	}

	// Every refusal above the TLS layer is logged at warn with what an
	// operator needs to find the caller.
	var refusals int
	for _, l := range ts.logs.lines() {
		if l["msg"] != "refused RPC" {
			continue
		}
		refusals++
		if l["level"] != "WARN" || l["module"] != "ca" || l["method"] == nil || l["peer.addr"] == nil || l["error"] == nil {
			t.Errorf("refusal log line lacks fields: %v", l)
		}
	}
	if refusals != 5 {
		t.Errorf("logged %d refusals, want 5:\n%v", refusals, ts.logs.lines())
	}
	for _, l := range ts.logs.lines() {
		if l["node.id"] == removed {
			return
		}
	}
	t.Error("the refusal of the removed node does not name it")
}

// TestAuthorizerFailsClosed: a method without a policy entry, or whose rule
// names no role, is refused; an anonymous rule without roles admits any node.
func TestAuthorizerFailsClosed(t *testing.T) {
	rca := newRoot(t)
	server := newCreds(t, rca, "mgr1", api.NodeRoleManager, "c1")
	ts := startServer(t, server, Policy{methodCheck: {}, methodList: {AllowAnonymous: true}}, nil)
	manager := dial(t, ts.addr, newCreds(t, rca, "mgr2", api.NodeRoleManager, "c1").ClientTLSConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cases := []struct {
		method   string
		wantCode codes.Code
		wantMsg  string
	}{
		{methodWatch, codes.PermissionDenied, "method not allowed"},
		{methodCheck, codes.PermissionDenied, "no node may call " + methodCheck},
		{methodList, codes.OK, ""},
	}
	for _, tc := range cases {
		err := invoke(ctx, manager, tc.method)
		if status.Code(err) != tc.wantCode || status.Convert(err).Message() != tc.wantMsg {
			t.Errorf("%s: %v, want %v %q", tc.method, err, tc.wantCode, tc.wantMsg)
		}
	}
}

func peerSerial(t *testing.T, p *peer.Peer) string {
	t.Helper()
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		t.Fatalf("no TLS peer certificate: %#v", p.AuthInfo)
	}
	return info.State.PeerCertificates[0].SerialNumber.String()
}

// TestCredentialsUpdateSwapsCertificateForNewConnections: after Update,
// new handshakes present the new certificate on both sides, and connections
// open before keep working with the old one.
func TestCredentialsUpdateSwapsCertificateForNewConnections(t *testing.T) {
	rca := newRoot(t)
	server := newCreds(t, rca, "mgr1", api.NodeRoleManager, "c1")
	ts := startServer(t, server, testPolicy, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	serverSerial := func(c healthpb.HealthClient) string {
		var p peer.Peer
		if err := invoke(ctx, c, methodList, grpc.Peer(&p)); err != nil {
			t.Fatal(err)
		}
		return peerSerial(t, &p)
	}
	oldSerial := server.Certificate().Leaf.SerialNumber.String()
	before := dial(t, ts.addr, BootstrapClientTLSConfig(&rca))
	if got := serverSerial(before); got != oldSerial {
		t.Fatalf("server presented %s, want %s", got, oldSerial)
	}

	renewedCert, renewedKey := issueNode(t, rca, "mgr1", api.NodeRoleManager, "c1", 2*time.Hour)
	if err := server.Update(renewedCert, renewedKey); err != nil {
		t.Fatal(err)
	}
	newSerial := mustParseCert(t, renewedCert).SerialNumber.String()
	if got := serverSerial(before); got != oldSerial {
		t.Fatalf("open connection now reports %s, want it unaffected (%s)", got, oldSerial)
	}
	if got := serverSerial(dial(t, ts.addr, BootstrapClientTLSConfig(&rca))); got != newSerial {
		t.Fatalf("new connection got server certificate %s, want the renewed %s", got, newSerial)
	}

	// The client side swaps too: the server sees the renewed certificate's
	// validity on a new connection.
	worker := newCreds(t, rca, "worker1", api.NodeRoleWorker, "c1")
	oldConn := dial(t, ts.addr, worker.ClientTLSConfig())
	seenNotAfter := func(c healthpb.HealthClient) time.Time {
		if err := invoke(ctx, c, methodList); err != nil {
			t.Fatal(err)
		}
		return ts.lastCall().id.NotAfter
	}
	if got := seenNotAfter(oldConn); !got.Equal(worker.Identity().NotAfter) {
		t.Fatalf("server saw NotAfter %s, want %s", got, worker.Identity().NotAfter)
	}
	oldNotAfter := worker.Identity().NotAfter
	wCert, wKey := issueNode(t, rca, "worker1", api.NodeRoleWorker, "c1", 3*time.Hour)
	if err := worker.Update(wCert, wKey); err != nil {
		t.Fatal(err)
	}
	if got := seenNotAfter(dial(t, ts.addr, worker.ClientTLSConfig())); !got.Equal(worker.Identity().NotAfter) || got.Equal(oldNotAfter) {
		t.Fatalf("server saw NotAfter %s on a new connection, want the renewed %s", got, worker.Identity().NotAfter)
	}
	if got := seenNotAfter(oldConn); !got.Equal(oldNotAfter) {
		t.Fatalf("open connection now shows NotAfter %s, want it unaffected (%s)", got, oldNotAfter)
	}

	// Update refuses what would change the node's identity or break TLS.
	otherCert, otherKey := issueNode(t, rca, "worker2", api.NodeRoleWorker, "c1", time.Hour)
	foreignCert, foreignKey := issueNode(t, newRoot(t), "worker1", api.NodeRoleWorker, "c1", time.Hour)
	for name, pair := range map[string][2][]byte{
		"another node":      {otherCert, otherKey},
		"another CA":        {foreignCert, foreignKey},
		"mismatched key":    {wCert, otherKey},
		"not a certificate": {[]byte("x"), wKey},
	} {
		if err := worker.Update(pair[0], pair[1]); err == nil {
			t.Errorf("Update with %s succeeded", name)
		}
	}
	if worker.Identity().NodeID != "worker1" || !worker.Identity().NotAfter.Equal(mustParseCert(t, wCert).NotAfter) {
		t.Fatal("a refused Update changed the credentials")
	}
}

func TestTLSConfigsAreModern(t *testing.T) {
	rca := newRoot(t)
	c := newCreds(t, rca, "mgr1", api.NodeRoleManager, "c1")
	for name, cfg := range map[string]*tls.Config{
		"server":    c.ServerTLSConfig(),
		"client":    c.ClientTLSConfig(),
		"bootstrap": BootstrapClientTLSConfig(nil),
	} {
		if cfg.MinVersion != tls.VersionTLS12 || cfg.MaxVersion != tls.VersionTLS13 {
			t.Errorf("%s: versions %x-%x", name, cfg.MinVersion, cfg.MaxVersion)
		}
		for _, id := range cfg.CipherSuites {
			name := tls.CipherSuiteName(id)
			if !strings.HasPrefix(name, "TLS_ECDHE_") || !(strings.Contains(name, "GCM") || strings.Contains(name, "CHACHA20")) {
				t.Errorf("%s: weak cipher suite %s", name, name)
			}
		}
	}
	if s := c.ServerTLSConfig(); s.ClientAuth != tls.VerifyClientCertIfGiven || s.ClientCAs == nil || s.GetCertificate == nil {
		t.Error("server config does not verify given client certificates")
	}
	if cl := c.ClientTLSConfig(); cl.ServerName != ManagerServerName || cl.RootCAs == nil || cl.InsecureSkipVerify {
		t.Error("client config does not verify managers")
	}
	if b := BootstrapClientTLSConfig(&rca); b.InsecureSkipVerify || b.RootCAs == nil {
		t.Error("bootstrap config with a root must verify the server")
	}
}

// TestJoinFlow walks a joining node through the bootstrap: fetch the root
// without verification, pin it with the token, then talk to the manager on
// a verified connection.
func TestJoinFlow(t *testing.T) {
	rca := newRoot(t)
	server := newCreds(t, rca, "mgr1", api.NodeRoleManager, "c1")
	ts := startServer(t, server, testPolicy, nil)
	token, err := GenerateJoinToken(rca)
	if err != nil {
		t.Fatal(err)
	}
	jt, err := ParseJoinToken(token)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// 1. Unverified connection: the only thing taken from it is the root,
	// here the server's chain as a stand-in for the CA's GetRootCACertificate.
	var p peer.Peer
	if err := invoke(ctx, dial(t, ts.addr, BootstrapClientTLSConfig(nil)), methodList, grpc.Peer(&p)); err != nil {
		t.Fatal(err)
	}
	// 2. Pin it with the token.
	if err := jt.VerifyRootCA(rca.Cert); err != nil {
		t.Fatal(err)
	}
	if err := jt.VerifyRootCA(newRoot(t).Cert); err == nil {
		t.Fatal("a forged root passed the token check")
	}
	pinned, err := ParseRootCA(rca.Cert, nil)
	if err != nil {
		t.Fatal(err)
	}
	// 3. Verified connection to the manager.
	if err := invoke(ctx, dial(t, ts.addr, BootstrapClientTLSConfig(&pinned)), methodList); err != nil {
		t.Fatal(err)
	}
	// A server of another CA is refused by the pinned config.
	impostor := startServer(t, newCreds(t, newRoot(t), "mgr1", api.NodeRoleManager, "c1"), testPolicy, nil)
	if err := invoke(ctx, dial(t, impostor.addr, BootstrapClientTLSConfig(&pinned)), methodList); status.Code(err) != codes.Unavailable {
		t.Fatalf("pinned client reached an impostor manager: %v", err)
	}
	// A worker's certificate cannot serve as a manager.
	workerServer := startServer(t, newCreds(t, rca, "w1", api.NodeRoleWorker, "c1"), testPolicy, nil)
	if err := invoke(ctx, dial(t, workerServer.addr, BootstrapClientTLSConfig(&pinned)), methodList); status.Code(err) != codes.Unavailable {
		t.Fatalf("client accepted a worker certificate as a manager: %v", err)
	}
}
