package containerdtest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"golang.org/x/crypto/bcrypt"
)

// RegistryBinary is Debian's distribution v2 registry (docker-registry).
const RegistryBinary = "/usr/bin/docker-registry"

// RegistryOptions configures StartRegistry.
type RegistryOptions struct {
	// Username and Password, if set, turn on basic auth (htpasswd, bcrypt).
	Username, Password string
}

// StartRegistry runs a registry (docker-registry, plain HTTP) on
// 127.0.0.1 on a free port with its storage in a temp dir of t, and returns
// its host:port once /v2/ answers. t.Cleanup stops it by PID.
func StartRegistry(t testing.TB, opts RegistryOptions) string {
	t.Helper()
	Require(t, RegistryBinary)
	dir := t.TempDir()
	hostPort, err := freeLoopbackPort()
	if err != nil {
		t.Fatal(err)
	}
	auth := ""
	if opts.Username != "" {
		hash, err := bcrypt.GenerateFromPassword([]byte(opts.Password), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		htpasswd := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(opts.Username+":"+string(hash)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		auth = fmt.Sprintf("auth:\n  htpasswd:\n    realm: flotilla-test\n    path: %s\n", htpasswd)
	}
	config := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
%s`, filepath.Join(dir, "data"), hostPort, auth)
	configPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "registry.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(RegistryBinary, "serve", configPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", RegistryBinary, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil && len(b) > 0 {
				t.Logf("registry log:\n%s", tail(b, 4<<10))
			}
		}
	})

	deadline := time.Now().Add(10 * time.Second)
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get("http://" + hostPort + "/v2/")
		if err == nil {
			resp.Body.Close()
			// 200 without auth, 401 with: both mean it serves.
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return hostPort
			}
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("registry exited before serving: %s", tail(b, 4<<10))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry at %s did not answer /v2/ in 10s (last: %v)", hostPort, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freeLoopbackPort returns 127.0.0.1:PORT with a port free a moment ago.
func freeLoopbackPort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return "127.0.0.1:" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port), nil
}

// Push copies the image archive at archivePath to the registry at hostPort
// as repoTag ("app/busybox:1") with skopeo; creds is "user:password" or
// empty.
func Push(t testing.TB, archivePath, hostPort, repoTag, creds string) {
	t.Helper()
	Require(t, "skopeo")
	args := []string{"--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"}
	if creds != "" {
		args = append(args, "--dest-creds", creds)
	}
	args = append(args, "oci-archive:"+archivePath, "docker://"+hostPort+"/"+repoTag)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "skopeo", args...)
	// skopeo unpacks the archive into TMPDIR: keep it in the test's dir.
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("skopeo %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Resolver is a resolver for registries on loopback (plain HTTP) with basic
// auth credentials (empty for none), for client.Pull.
func Resolver(username, password string) remotes.Resolver {
	authorizer := docker.NewDockerAuthorizer(docker.WithAuthCreds(func(string) (string, string, error) {
		return username, password, nil
	}))
	return docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(
			docker.WithPlainHTTP(docker.MatchLocalhost),
			docker.WithAuthorizer(authorizer),
		),
	})
}
