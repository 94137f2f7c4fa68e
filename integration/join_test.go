package integration

import (
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/ca"
)

// startManager starts a first manager on a loopback port of its choosing
// (so no other test can take the port in between) and returns its address.
func startManager(t testing.TB, hostname string) (*swarmd, string) {
	t.Helper()
	m := startSwarmd(t, t.TempDir(), "--listen-remote-api", "127.0.0.1:0", "--hostname", hostname)
	m.waitReady()
	var nodes []struct {
		ManagerStatus struct{ Addr string } `json:"managerStatus"`
	}
	if err := json.Unmarshal([]byte(m.mustCtl("node", "ls", "--format", "json")), &nodes); err != nil || len(nodes) != 1 || nodes[0].ManagerStatus.Addr == "" {
		t.Fatalf("manager address: %v %+v", err, nodes)
	}
	return m, nodes[0].ManagerStatus.Addr
}

// startWorker starts a node that joins through addr with token.
func startWorker(t *testing.T, stateDir, hostname, addr, token string) *swarmd {
	t.Helper()
	args := []string{"--hostname", hostname}
	if token != "" {
		args = append(args, "--join-addr", addr, "--join-token", token)
	}
	return startSwarmd(t, stateDir, args...)
}

type nodeRow struct {
	ID     string                    `json:"id"`
	Role   string                    `json:"role"`
	Desc   struct{ Hostname string } `json:"description"`
	Status struct {
		State   string `json:"state"`
		Message string `json:"message"`
	} `json:"status"`
}

func (d *swarmd) nodes() []nodeRow {
	d.t.Helper()
	var rows []nodeRow
	if err := json.Unmarshal([]byte(d.mustCtl("node", "ls", "--format", "json")), &rows); err != nil {
		d.t.Fatal(err)
	}
	return rows
}

// waitNode polls until the node with hostname is in state, and returns it.
func (d *swarmd) waitNode(hostname, state string, within time.Duration) nodeRow {
	d.t.Helper()
	deadline := time.Now().Add(within)
	var last []nodeRow
	for time.Now().Before(deadline) {
		last = d.nodes()
		for _, n := range last {
			if n.Desc.Hostname == hostname && n.Status.State == state {
				return n
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	d.t.Fatalf("node %s not %s within %s; nodes: %+v", hostname, state, within, last)
	return nodeRow{}
}

func TestWorkersJoinHeartbeatAndLeave(t *testing.T) {
	m, addr := startManager(t, "mgr")
	m.mustCtl("cluster", "update", "--heartbeat-period", "1s")
	token := strings.TrimSpace(m.mustCtl("cluster", "join-token", "-q", "worker"))
	if !strings.HasPrefix(token, "SWMTKN-1-") {
		t.Fatalf("worker token %q", token)
	}

	start := time.Now()
	w1Dir, w2Dir := t.TempDir(), t.TempDir()
	w1 := startWorker(t, w1Dir, "w1", addr, token)
	w2 := startWorker(t, w2Dir, "w2", addr, token)
	m.waitNode("w1", "READY", 30*time.Second)
	m.waitNode("w2", "READY", 30*time.Second)
	t.Logf("two workers from start to READY in %s", time.Since(start).Round(time.Millisecond))
	m.waitNode("mgr", "READY", 10*time.Second)
	if n := len(m.nodes()); n != 3 {
		t.Fatalf("%d nodes, want 3", n)
	}

	// The worker's certificate chains to the root and carries CN/OU/O.
	checkCertificate(t, w1Dir)

	// kill -9: DOWN within 3 heartbeat periods (+ slack for polling).
	before := m.waitNode("w1", "READY", time.Second)
	w1.kill()
	killed := time.Now()
	m.waitNode("w1", "DOWN", 3*time.Second+2*time.Second)
	t.Logf("killed worker marked DOWN after %s (heartbeat period 1s)", time.Since(killed).Round(time.Millisecond))

	// Restarted from its state dir (no join flags): READY with the same ID.
	startWorker(t, w1Dir, "w1", addr, "")
	after := m.waitNode("w1", "READY", 30*time.Second)
	if after.ID != before.ID {
		t.Errorf("restarted worker has ID %s, want %s", after.ID, before.ID)
	}

	// Rotating the worker token: the old one no longer joins, the new one does.
	m.mustCtl("cluster", "update", "--rotate-join-token", "worker")
	newToken := strings.TrimSpace(m.mustCtl("cluster", "join-token", "-q", "worker"))
	if newToken == token {
		t.Fatal("token unchanged after rotation")
	}
	old := startWorker(t, t.TempDir(), "w3", addr, token)
	waitExit(t, old, 30*time.Second)
	if old.exitErr == nil || !strings.Contains(old.out.String(), "not valid for this cluster") {
		t.Errorf("join with a rotated token: exit %v, output:\n%s", old.exitErr, old.out.String())
	}
	startWorker(t, t.TempDir(), "w3", addr, newToken)
	m.waitNode("w3", "READY", 30*time.Second)

	// A token whose CA digest is not this cluster's is refused before joining.
	parts := strings.Split(newToken, "-")
	parts[2] = strings.Repeat("0", len(parts[2]))
	foreign := startWorker(t, t.TempDir(), "w4", addr, strings.Join(parts, "-"))
	waitExit(t, foreign, 30*time.Second)
	if foreign.exitErr == nil || !strings.Contains(foreign.out.String(), "does not match this cluster") {
		t.Errorf("join with a foreign token: exit %v, output:\n%s", foreign.exitErr, foreign.out.String())
	}

	// Garbage on the remote port is dropped; the manager keeps serving.
	garbage, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = garbage.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = garbage.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01garbage"))
	if _, err := io.ReadAll(garbage); err != nil {
		t.Errorf("manager did not close a garbage connection: %v", err)
	}
	garbage.Close()
	m.waitNode("mgr", "READY", 5*time.Second)

	// A worker's certificate is refused on the control API.
	if out, err := controlAsWorker(t, w1Dir, addr); err == nil || !strings.Contains(out, "manager certificate") {
		t.Errorf("worker calling the control API: err %v, output %q", err, out)
	}

	// node rm --force: the removed worker's next connection is refused and it stops.
	if _, errOut, err := m.ctl("node", "rm", "w2"); err == nil || !strings.Contains(errOut, "--force") {
		t.Errorf("node rm of a READY worker without --force: err %v, %q", err, errOut)
	}
	m.mustCtl("node", "rm", "--force", "w2")
	waitExit(t, w2, 30*time.Second)
	if !strings.Contains(w2.out.String(), "removed") {
		t.Errorf("removed worker's output lacks the reason:\n%s", w2.out.String())
	}
	restarted := startWorker(t, w2Dir, "w2", addr, "")
	waitExit(t, restarted, 30*time.Second)
	if restarted.exitErr == nil || !strings.Contains(restarted.out.String(), "removed") {
		t.Errorf("removed worker restarted: exit %v, output:\n%s", restarted.exitErr, restarted.out.String())
	}
}

func waitExit(t *testing.T, d *swarmd, within time.Duration) {
	t.Helper()
	select {
	case <-d.exited:
	case <-time.After(within):
		t.Fatalf("swarmd did not exit within %s:\n%s", within, d.out.String())
	}
}

// checkCertificate verifies a node's certificate with openssl.
func checkCertificate(t *testing.T, stateDir string) {
	t.Helper()
	certs := filepath.Join(stateDir, "certificates")
	root, node := filepath.Join(certs, "swarm-root-ca.crt"), filepath.Join(certs, "swarm-node.crt")
	for _, p := range []string{root, node} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("certificate file: %v", err)
		}
	}
	out, err := exec.Command("openssl", "verify", "-CAfile", root, node).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "OK") {
		t.Errorf("openssl verify: %v: %s", err, out)
	}
	subj, err := exec.Command("openssl", "x509", "-noout", "-subject", "-in", node).CombinedOutput()
	if err != nil || !strings.Contains(string(subj), "OU = swarm-worker") || !strings.Contains(string(subj), "CN = ") || !strings.Contains(string(subj), "O = ") {
		t.Errorf("openssl x509 subject: %v: %s", err, subj)
	}
}

// controlAsWorker calls the control API on the manager's remote port with
// the worker's own certificate, and returns the refusal.
func controlAsWorker(t *testing.T, workerDir, addr string) (string, error) {
	t.Helper()
	ks := &ca.KeyStore{Dir: filepath.Join(workerDir, "certificates")}
	rootPEM, err := ks.LoadRootCert()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ks.LoadNode()
	if err != nil {
		t.Fatal(err)
	}
	rca, err := ca.ParseRootCA(rootPEM, nil)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := ca.NewCredentials(rca, certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(creds.ClientTLSConfig())))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = api.NewControlClient(conn).ListNodes(withTimeout(t), &api.ListNodesRequest{})
	if err == nil {
		return "", nil
	}
	st, _ := status.FromError(err)
	return st.Code().String() + ": " + st.Message(), err
}
