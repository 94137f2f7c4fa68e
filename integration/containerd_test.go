package integration

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/flotilla/flotilla/agent/exec/containerd/containerdtest"
	"github.com/flotilla/flotilla/agent/exec/containerd/daemon"
)

// bridgeSeq numbers the task networks of this test binary's nodes, so that
// each has its own bridge, subnet and nftables table.
var bridgeSeq atomic.Int32

// containerdNode is a swarmd with the containerd executor, on the
// harness's containerd, in a namespace and task network of its own.
type containerdNode struct {
	*swarmd
	ns   string
	args []string // swarmd's flags, for restarts
	ctr  *containerd.Client
}

const webIndex = "<h1>Hello from Flotilla</h1>\n"

// startContainerdNode starts swarmd on stateDir with the containerd executor
// on d, namespace ns, a fresh bridge and subnet, and the busybox image
// (with /www/index.html) imported as busybox:latest. The bridge and its
// nftables table are removed when the test ends.
func startContainerdNode(t testing.TB, d *containerdtest.Daemon, stateDir, ns string, extra ...string) *containerdNode {
	t.Helper()
	n := bridgeSeq.Add(1)
	bridge := fmt.Sprintf("flit%d-%d", os.Getpid()%10000, n)
	subnet := fmt.Sprintf("10.217.%d.0/24", (os.Getpid()+int(n))%250)
	c := d.Client(t, ns)
	if _, err := c.GetImage(context.Background(), "docker.io/library/busybox:latest"); err != nil {
		archive := containerdtest.BusyboxImage(t, containerdtest.ImageOptions{Files: map[string]string{"/www/index.html": webIndex}})
		containerdtest.Import(t, c, ns, archive, "docker.io/library/busybox:latest")
	}
	t.Cleanup(func() {
		// A failed test may leave task network namespaces mounted (the
		// node was killed before removing its tasks).
		netns, _ := filepath.Glob(filepath.Join(stateDir, "network", "netns", "*"))
		for _, p := range netns {
			_ = syscall.Unmount(p, syscall.MNT_DETACH)
		}
		_ = exec.Command("ip", "link", "del", bridge).Run()
		_ = exec.Command("nft", "delete", "table", "ip", bridge).Run()
	})
	args := append([]string{"--executor", "containerd", "--containerd-addr", d.Address(),
		"--containerd-namespace", ns, "--bridge-name", bridge, "--bridge-subnet", subnet}, extra...)
	return &containerdNode{swarmd: startSwarmd(t, stateDir, args...), ns: ns, args: args, ctr: c}
}

// taskInfo is what the tests read of a task.
type taskInfo struct {
	ID           string `json:"id"`
	DesiredState string `json:"desiredState"`
	Status       struct {
		State           string `json:"state"`
		Message         string `json:"message"`
		Err             string `json:"err"`
		ContainerStatus struct {
			ContainerID string `json:"containerId"`
			PID         int    `json:"pid"`
			ExitCode    int    `json:"exitCode"`
		} `json:"containerStatus"`
	} `json:"status"`
}

func (n *containerdNode) taskInfos(service string) []taskInfo {
	n.t.Helper()
	var ts []taskInfo
	if err := json.Unmarshal([]byte(n.mustCtl("task", "ls", "--service", service, "--format", "json")), &ts); err != nil {
		n.t.Fatal(err)
	}
	return ts
}

// running returns the service's tasks once want of them are RUNNING with a
// container PID.
func (n *containerdNode) running(service string, want int) []taskInfo {
	n.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last []taskInfo
	for time.Now().Before(deadline) {
		last = last[:0]
		for _, ti := range n.taskInfos(service) {
			if ti.DesiredState == "RUNNING" && ti.Status.State == "RUNNING" && ti.Status.ContainerStatus.PID > 0 {
				last = append(last, ti)
			}
		}
		if len(last) == want {
			return last
		}
		time.Sleep(100 * time.Millisecond)
	}
	n.t.Fatalf("service %s: %d tasks running, want %d: %+v", service, len(last), want, n.taskInfos(service))
	return nil
}

// containers counts the containers in the node's namespace.
func (n *containerdNode) containers() int {
	n.t.Helper()
	cs, err := n.ctr.Containers(context.Background())
	if err != nil {
		n.t.Fatal(err)
	}
	return len(cs)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var lastErr error
	for time.Now().Before(deadline) {
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return string(body)
		}
		lastErr = err
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("GET %s: %v", url, lastErr)
	return ""
}

// Real containers through swarmd and swarmctl: a web service reached on its
// host-mode published port, logs from its tasks, exit codes, adoption of
// running containers by a restarted swarmd, and nothing left once services
// are removed.
func TestContainerdServicesEndToEnd(t *testing.T) {
	d := containerdtest.StartDaemon(t)
	node := startContainerdNode(t, d, t.TempDir(), "it-e2e")
	node.waitReady()
	imageSnaps := node.snapshots()

	port := freePort(t)
	node.mustCtl("service", "create", "--name", "web", "--replicas", "1",
		"--publish", fmt.Sprintf("mode=host,published=%d,target=80", port),
		"--image", "busybox", "--", "httpd", "-f", "-p", "80", "-h", "/www")
	node.mustCtl("service", "create", "--name", "echo", "--replicas", "2", "--image", "busybox",
		"--", "sh", "-c", "echo hello-from-$(hostname); exec sleep 1000")
	node.mustCtl("service", "create", "--name", "fail", "--restart-condition", "none", "--image", "busybox",
		"--", "sh", "-c", "exit 3")

	web := node.running("web", 1)
	if body := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/", port)); body != webIndex {
		t.Fatalf("GET /: %q, want %q", body, webIndex)
	}
	echo := node.running("echo", 2)

	// The failed task reports its exit code.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ts := node.taskInfos("fail")
		if len(ts) == 1 && ts[0].Status.State == "FAILED" {
			if ts[0].Status.ContainerStatus.ExitCode != 3 || !strings.Contains(ts[0].Status.Err, "3") {
				t.Fatalf("failed task: %+v, want exit code 3", ts[0].Status)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("task of fail did not fail: %+v", ts)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Logs from both tasks of echo, with the task's name on each line.
	deadline = time.Now().Add(20 * time.Second)
	for {
		out, _, _ := node.ctl("service", "logs", "echo")
		if strings.Count(out, "hello-from-") == 2 && strings.Contains(out, "echo.1.") && strings.Contains(out, "echo.2.") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("service logs echo:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// swarmd stops; its containers do not. The next swarmd adopts them: same
	// tasks, same processes, no new container.
	before := node.containers()
	node.stop()
	for _, ti := range append(web, echo...) {
		if err := syscall.Kill(ti.Status.ContainerStatus.PID, 0); err != nil {
			t.Fatalf("container of task %s (pid %d) died with swarmd: %v", ti.ID, ti.Status.ContainerStatus.PID, err)
		}
	}
	node.swarmd = startSwarmd(t, node.stateDir, node.args...)
	node.waitReady()
	pids := func(ts []taskInfo) map[string]int {
		m := map[string]int{}
		for _, ti := range ts {
			m[ti.ID] = ti.Status.ContainerStatus.PID
		}
		return m
	}
	if got, want := pids(node.running("web", 1)), pids(web); !maps.Equal(got, want) {
		t.Fatalf("after the restart web runs %v, want the adopted %v", got, want)
	}
	if got, want := pids(node.running("echo", 2)), pids(echo); !maps.Equal(got, want) {
		t.Fatalf("after the restart echo runs %v, want the adopted %v", got, want)
	}
	if after := node.containers(); after != before {
		t.Fatalf("%d containers after the restart, %d before", after, before)
	}
	if body := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/", port)); body != webIndex {
		t.Fatalf("GET / after the restart: %q", body)
	}

	// Removing the services leaves no container, snapshot beyond the image's,
	// or network namespace behind.
	node.mustCtl("service", "rm", "web", "echo", "fail")
	deadline = time.Now().Add(60 * time.Second)
	for {
		netns, _ := filepath.Glob(filepath.Join(node.stateDir, "network", "netns", "*"))
		left := node.containers()
		if left == 0 && len(netns) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("60s after the services were removed: %d containers and network namespaces %v left", left, netns)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if snaps := node.snapshots(); snaps != imageSnaps {
		t.Fatalf("%d snapshots left, want the image's %d", snaps, imageSnaps)
	}
}

// snapshots counts the overlayfs snapshots of the node's namespace.
func (n *containerdNode) snapshots() int {
	n.t.Helper()
	count := 0
	if err := n.ctr.SnapshotService("overlayfs").Walk(context.Background(), func(context.Context, snapshots.Info) error {
		count++
		return nil
	}); err != nil {
		n.t.Fatal(err)
	}
	return count
}

// swarmd runs its own containerd when none answers at --containerd-addr,
// under its state dir; restarts it when it dies, without losing the running
// containers; and stops it when it stops.
func TestSwarmdRunsItsOwnContainerd(t *testing.T) {
	containerdtest.Require(t, "containerd", "runc")
	state := t.TempDir()
	n := bridgeSeq.Add(1)
	bridge := fmt.Sprintf("flio%d-%d", os.Getpid()%10000, n)
	sock := filepath.Join(state, "containerd", "containerd.sock")
	node := startSwarmd(t, state, "--executor", "containerd", "--containerd-addr", filepath.Join(state, "none.sock"),
		"--bridge-name", bridge, "--bridge-subnet", fmt.Sprintf("10.218.%d.0/24", (os.Getpid()+int(n))%250))
	t.Cleanup(func() {
		// On failure: kill what the node left (its containerd, shims and
		// containers), then unmount and remove the network.
		node.kill()
		for _, pid := range pidsMentioning(state) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		mounts, _ := os.ReadFile("/proc/self/mounts")
		for _, line := range strings.Split(string(mounts), "\n") {
			if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], state) {
				_ = syscall.Unmount(f[1], syscall.MNT_DETACH)
			}
		}
		_ = exec.Command("ip", "link", "del", bridge).Run()
		_ = exec.Command("nft", "delete", "table", "ip", bridge).Run()
	})
	node.waitReady()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := daemon.Probe(ctx, sock); err != nil {
		t.Fatalf("swarmd's own containerd does not answer at %s: %v", sock, err)
	}
	c, err := containerd.New(sock, containerd.WithDefaultNamespace("swarmd"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	archive := containerdtest.BusyboxImage(t, containerdtest.ImageOptions{})
	if _, err := containerdtest.ImportArchive(ctx, c, "swarmd", archive, "docker.io/library/busybox:latest"); err != nil {
		t.Fatal(err)
	}
	cn := &containerdNode{swarmd: node, ns: "swarmd", ctr: c}
	node.mustCtl("service", "create", "--name", "sleep", "--stop-grace-period", "1s", "--image", "busybox", "--", "sleep", "1000")
	before := cn.running("sleep", 1)[0]

	// containerd dies: swarmd starts it again; the container lives on and
	// its task stays the same.
	daemons := pidsRunning(state, "containerd")
	if len(daemons) != 1 {
		t.Fatalf("containerd processes of the node: %v, want one", daemons)
	}
	_ = syscall.Kill(daemons[0], syscall.SIGKILL)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if now := pidsRunning(state, "containerd"); len(now) == 1 && now[0] != daemons[0] && daemon.Probe(ctx, sock) == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd not restarted 30s after it was killed:\n%s", node.out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if after := cn.running("sleep", 1)[0]; after.ID != before.ID || after.Status.ContainerStatus.PID != before.Status.ContainerStatus.PID {
		t.Fatalf("after containerd's restart the task is %s (pid %d), was %s (pid %d)", after.ID, after.Status.ContainerStatus.PID,
			before.ID, before.Status.ContainerStatus.PID)
	}

	node.mustCtl("service", "rm", "sleep")
	for deadline := time.Now().Add(time.Minute); cn.containers() > 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the container is still there a minute after service rm")
		}
	}
	node.stop()
	if err := daemon.Probe(ctx, sock); err == nil {
		t.Fatalf("swarmd's own containerd still answers at %s after swarmd stopped", sock)
	}
	// Shims and loggers exit on their own once their container is deleted.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		left := pidsMentioning(state)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes left 10s after swarmd stopped: %v", left)
		}
	}
}

// pidsMentioning are the processes whose command line mentions s.
func pidsMentioning(s string) []int {
	var out []int
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), s) {
			out = append(out, pid)
		}
	}
	return out
}

// pidsRunning are the processes running the named program whose command
// line mentions s.
func pidsRunning(s, program string) []int {
	var out []int
	for _, pid := range pidsMentioning(s) {
		if comm(pid) == program {
			out = append(out, pid)
		}
	}
	return out
}

// A private image on a registry with basic auth: pulled with the credentials
// `--with-registry-auth` sends from the Docker client's config; without them
// the task is rejected with the registry's own words.
func TestContainerdPullsWithRegistryAuth(t *testing.T) {
	d := containerdtest.StartDaemon(t)
	registry := containerdtest.StartRegistry(t, containerdtest.RegistryOptions{Username: "alice", Password: "s3cret"})
	archive := containerdtest.BusyboxImage(t, containerdtest.ImageOptions{Cmd: []string{"sleep", "1000"}})
	containerdtest.Push(t, archive, registry, "team/app:1", "alice:s3cret")
	dockerConfig := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	if err := os.WriteFile(filepath.Join(dockerConfig, "config.json"), []byte(`{"auths":{"`+registry+`":{"auth":"`+auth+`"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dockerConfig) // swarmctl reads it
	node := startContainerdNode(t, d, t.TempDir(), "it-pull")
	node.waitReady()

	image := registry + "/team/app:1"
	node.mustCtl("service", "create", "--name", "denied", "--restart-condition", "none", "--image", image)
	node.mustCtl("service", "create", "--name", "private", "--with-registry-auth", "--image", image)
	node.running("private", 1)

	deadline := time.Now().Add(30 * time.Second)
	for {
		ts := node.taskInfos("denied")
		if len(ts) > 0 && ts[0].Status.State == "REJECTED" {
			if err := ts[0].Status.Err; !strings.Contains(err, "pull access denied") && !strings.Contains(err, "unauthorized") {
				t.Fatalf("rejected without credentials, but the error does not say so: %q", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("task pulled without credentials was not rejected: %+v", ts)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The credentials never leave the managers.
	if out := node.mustCtl("service", "inspect", "private"); strings.Contains(out, "registryAuth") || strings.Contains(out, auth) {
		t.Fatalf("service inspect shows the registry credentials:\n%s", out)
	}
}
