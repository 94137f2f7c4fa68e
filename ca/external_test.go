package ca

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
)

var (
	cfsslOnce sync.Once
	cfsslPath string
	cfsslErr  error
)

// cfsslBinary builds cfssl from the module (pinned in go.mod) once per test
// process; if that fails it falls back to a cfssl on PATH (Debian's
// golang-cfssl).
func cfsslBinary(t *testing.T) string {
	t.Helper()
	cfsslOnce.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		out := filepath.Join(toolDir, "cfssl")
		cmd := exec.Command(goBin, "build", "-o", out, "github.com/cloudflare/cfssl/cmd/cfssl")
		cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
		buildOut, err := cmd.CombinedOutput()
		if err == nil {
			cfsslPath = out
			return
		}
		if p, lerr := exec.LookPath("cfssl"); lerr == nil {
			t.Logf("building cfssl failed (%v), using %s", err, p)
			cfsslPath = p
			return
		}
		cfsslErr = fmt.Errorf("build cfssl: %v\n%s", err, buildOut)
	})
	if cfsslErr != nil {
		t.Fatal(cfsslErr)
	}
	return cfsslPath
}

// The external CA's policy: the default profile and "node" allow what a
// node certificate needs; "restricted" only names no node can have.
const cfsslConfig = `{
  "signing": {
    "default": {
      "expiry": "2160h",
      "usages": ["signing", "key encipherment", "server auth", "client auth"]
    },
    "profiles": {
      "node": {
        "expiry": "720h",
        "usages": ["signing", "key encipherment", "server auth", "client auth"]
      },
      "restricted": {
        "expiry": "1h",
        "usages": ["signing", "key encipherment", "server auth", "client auth"],
        "name_whitelist": "^nobody$"
      }
    }
  }
}`

// startCFSSL runs `cfssl serve` on a free 127.0.0.1 port with rca as its
// signing CA and returns its base URL. The process is killed (by PID) when
// the test ends, passed or failed.
func startCFSSL(t *testing.T, rca RootCA) string {
	t.Helper()
	bin := cfsslBinary(t)
	dir := t.TempDir()
	caFile := writeTemp(t, dir, "ca.pem", rca.Cert)
	keyFile := writeTemp(t, dir, "ca-key.pem", rca.Key)
	cfgFile := writeTemp(t, dir, "config.json", []byte(cfsslConfig))

	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		addr, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		host, port, _ := net.SplitHostPort(addr)
		cmd := exec.Command(bin, "serve", "-address", host, "-port", port,
			"-ca", caFile, "-ca-key", keyFile, "-config", cfgFile, "-loglevel", "1")
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start cfssl: %v", err)
		}
		pid := cmd.Process.Pid
		exited := make(chan struct{})
		listening := make(chan struct{}, 1)
		var logMu sync.Mutex
		var logTail []string
		go func() {
			sc := bufio.NewScanner(stderr)
			for sc.Scan() {
				logMu.Lock()
				logTail = append(logTail, sc.Text())
				logMu.Unlock()
				if strings.Contains(sc.Text(), "Now listening on") {
					select {
					case listening <- struct{}{}:
					default:
					}
				}
			}
			_ = cmd.Wait()
			close(exited)
		}()
		stop := func() {
			if p, err := os.FindProcess(pid); err == nil {
				_ = p.Kill()
			}
			<-exited
		}
		readyErr := waitListening(addr, listening, exited)
		if readyErr == nil {
			t.Cleanup(stop)
			return "http://" + addr
		}
		stop()
		logMu.Lock()
		lastErr = fmt.Errorf("%v; cfssl said:\n%s", readyErr, strings.Join(logTail, "\n"))
		logMu.Unlock()
	}
	t.Fatalf("cfssl serve did not come up: %v", lastErr)
	return ""
}

// waitListening waits for cfssl's "Now listening" line, then for the socket
// to accept (cfssl logs just before it listens).
func waitListening(addr string, listening, exited <-chan struct{}) error {
	deadline := time.After(60 * time.Second)
	select {
	case <-listening:
	case <-exited:
		return errors.New("cfssl exited")
	case <-deadline:
		return errors.New("timed out waiting for cfssl to listen")
	}
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-exited:
			return errors.New("cfssl exited")
		case <-deadline:
			return fmt.Errorf("cfssl does not accept on %s: %v", addr, err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func TestExternalCASignsThroughCFSSL(t *testing.T) {
	rca := newRoot(t)
	base := startCFSSL(t, rca)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The URL without a path gets cfssl's sign endpoint.
	ext, err := NewExternalSigner(api.ExternalCA{Protocol: api.ExternalCAProtocolCFSSL, URL: base}, rca)
	if err != nil {
		t.Fatal(err)
	}
	if ext.URL != base+CFSSLSignPath {
		t.Fatalf("URL %s, want %s", ext.URL, base+CFSSLSignPath)
	}

	// The subject is set by the request even though the CSR asks for
	// CN=admin,OU=swarm-manager.
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr := csrFor(t, priv, &x509.CertificateRequest{Subject: hostileSubject, DNSNames: []string{"evil.example"}})
	certPEM, err := ext.Sign(ctx, csr, "node1", api.NodeRoleWorker, "cluster1", 0)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	id, err := ParseNodeCertificate(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	if id.NodeID != "node1" || id.Role != api.NodeRoleWorker || id.ClusterID != "cluster1" {
		t.Fatalf("identity %+v, want node1/worker/cluster1", id)
	}
	cert := mustParseCert(t, certPEM)
	if !slices.Equal(cert.DNSNames, []string{WorkerRoleOU, "node1"}) {
		t.Fatalf("SANs %v, want [swarm-worker node1]", cert.DNSNames)
	}
	if _, err := NewCredentials(rca, certPEM, mustKeyPEM(t, priv)); err != nil {
		t.Fatalf("the external CA's certificate is not usable for mTLS: %v", err)
	}
	if v := cert.NotAfter.Sub(cert.NotBefore); v != 2160*time.Hour {
		t.Fatalf("validity %s, want the default profile's 2160h", v)
	}

	// A profile from the cluster's external CA options.
	ext, err = NewExternalSigner(api.ExternalCA{URL: base + CFSSLSignPath, Options: map[string]string{"profile": "node"}}, rca)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err = ext.Sign(ctx, csr, "node2", api.NodeRoleManager, "cluster1", time.Hour)
	if err != nil {
		t.Fatalf("Sign with profile node: %v", err)
	}
	if cert := mustParseCert(t, certPEM); cert.NotAfter.Sub(cert.NotBefore) != 720*time.Hour || cert.VerifyHostname(ManagerServerName) != nil {
		t.Fatalf("profile node: validity %s, DNS %v", cert.NotAfter.Sub(cert.NotBefore), cert.DNSNames)
	}

	// cfssl's refusal reaches the caller verbatim.
	ext.Profile = "restricted"
	_, err = ext.Sign(ctx, csr, "node1", api.NodeRoleWorker, "cluster1", 0)
	var refused *ExternalCAError
	if !errors.As(err, &refused) {
		t.Fatalf("Sign with profile restricted = %v, want *ExternalCAError", err)
	}
	if !strings.Contains(err.Error(), "Request does not match policy whitelist") || refused.StatusCode != http.StatusBadRequest {
		t.Fatalf("error %q (HTTP %d) does not carry cfssl's message", err, refused.StatusCode)
	}

	// A CA that signs with another root than the cluster's is refused.
	wrongRoot := &ExternalSigner{URL: base + CFSSLSignPath, Root: newRoot(t)}
	if _, err := wrongRoot.Sign(ctx, csr, "node1", api.NodeRoleWorker, "cluster1", 0); err == nil ||
		!strings.Contains(err.Error(), "is not usable with this cluster's root CA") {
		t.Fatalf("certificate from another root: %v", err)
	}
}

func mustKeyPEM(t *testing.T, priv *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

// TestExternalSignerChecksWhatItGets uses fake CAs for what a real cfssl
// does not do: hang, answer garbage, or sign something else.
func TestExternalSignerChecksWhatItGets(t *testing.T) {
	rca := newRoot(t)
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr := csrFor(t, priv, &x509.CertificateRequest{})
	otherNode, _ := issueNode(t, rca, "node9", api.NodeRoleWorker, "cluster1", time.Hour)

	// release unblocks handlers that hang, so that their server can close
	// even if the client did not give up.
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	defer unblock()
	respond := func(status int, body string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.WriteHeader(status)
			_, _ = io.WriteString(w, body)
		}
	}
	success := func(certPEM []byte) string {
		b, _ := json.Marshal(map[string]any{"success": true, "result": map[string]string{"certificate": string(certPEM)}})
		return string(b)
	}
	cases := []struct {
		name    string
		handler http.HandlerFunc
		check   func(error) bool
	}{
		{"hangs", func(w http.ResponseWriter, r *http.Request) {
			// Reading the body lets the server notice the client leave.
			_, _ = io.Copy(io.Discard, r.Body)
			select {
			case <-r.Context().Done():
			case <-release:
			}
		},
			func(err error) bool { return errors.Is(err, context.DeadlineExceeded) }},
		{"not JSON", respond(http.StatusBadGateway, "<html>bad gateway</html>"),
			func(err error) bool {
				var e *ExternalCAError
				return errors.As(err, &e) && e.StatusCode == http.StatusBadGateway && strings.Contains(err.Error(), "bad gateway")
			}},
		{"another node's certificate", respond(http.StatusOK, success(otherNode)),
			func(err error) bool {
				return err != nil && strings.Contains(err.Error(), "is not for the requested key")
			}},
		{"right key, wrong subject", nil, nil}, // filled below
	}
	// A CA that ignores the subject override: our key, the CSR's names.
	ignoring, err := rca.issue(csr, "admin", api.NodeRoleManager, "cluster1", time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	cases[3].handler = respond(http.StatusOK, success(ignoring))
	cases[3].check = func(err error) bool {
		return err != nil && strings.Contains(err.Error(), "did not set the requested subject")
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.handler)
			defer srv.Close()
			// Unblock hanging handlers before Close waits for them.
			defer unblock()
			defer srv.CloseClientConnections()
			s := &ExternalSigner{URL: srv.URL + CFSSLSignPath, Root: rca, Timeout: 200 * time.Millisecond}
			_, err := s.Sign(context.Background(), csr, "node1", api.NodeRoleWorker, "cluster1", 0)
			if !tc.check(err) {
				t.Fatalf("Sign = %v", err)
			}
		})
	}

	if _, err := NewExternalSigner(api.ExternalCA{URL: "ftp://ca.example"}, rca); err == nil {
		t.Fatal("accepted an ftp URL")
	}
}
