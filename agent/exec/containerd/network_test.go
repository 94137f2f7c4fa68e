package containerd

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/agent/exec/containerd/containerdtest"
	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/identity"
	"github.com/flotilla/flotilla/networking/hostnet"
)

// fakeNetwork gives each task a real, empty network namespace (ip netns)
// and a made-up address; it records its calls.
type fakeNetwork struct {
	t      *testing.T
	prefix string

	mu       sync.Mutex
	attached map[string]*hostnet.Attachment
	detached []string
	failNext error
}

func newFakeNetwork(t *testing.T) *fakeNetwork {
	containerdtest.Require(t, "ip")
	n := &fakeNetwork{t: t, prefix: "flt" + identity.NewID()[:6], attached: map[string]*hostnet.Attachment{}}
	t.Cleanup(func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		for id := range n.attached {
			exec.Command("ip", "netns", "del", n.name(id)).Run()
		}
	})
	return n
}

func (n *fakeNetwork) name(taskID string) string { return n.prefix + "-" + taskID[:8] }

func (n *fakeNetwork) Attach(ctx context.Context, taskID string, ports []*api.PortConfig) (*hostnet.Attachment, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.failNext; err != nil {
		n.failNext = nil
		return nil, err
	}
	if a, ok := n.attached[taskID]; ok {
		return a, nil
	}
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", n.name(taskID)).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add: %v: %s", err, out)
	}
	var published []*api.PortConfig
	for i, p := range ports {
		p = p.Copy()
		if p.PublishedPort == 0 {
			p.PublishedPort = uint32(30000 + i)
		}
		published = append(published, p)
	}
	a := &hostnet.Attachment{
		NetNSPath: "/run/netns/" + n.name(taskID),
		Address:   netip.MustParsePrefix("10.77.0.9/24"),
		Gateway:   netip.MustParseAddr("10.77.0.1"),
		Ports:     published,
	}
	n.attached[taskID] = a
	return a, nil
}

func (n *fakeNetwork) Detach(ctx context.Context, taskID string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.detached = append(n.detached, taskID)
	if _, ok := n.attached[taskID]; !ok {
		return nil
	}
	delete(n.attached, taskID)
	if out, err := exec.CommandContext(ctx, "ip", "netns", "del", n.name(taskID)).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del: %v: %s", err, out)
	}
	return nil
}

// TestTaskJoinsItsNetworkNamespace: with a Network, the container runs in
// the namespace Attach made, with /etc/hosts and /etc/resolv.conf made for
// it; PortStatus reports the published ports; Remove detaches; a Prepare
// that fails after Attach detaches too.
func TestTaskJoinsItsNetworkNamespace(t *testing.T) {
	d := containerdtest.StartDaemon(t)
	en := newEnv(t, d, containerdtest.BusyboxImage(t, containerdtest.ImageOptions{}))
	net := newFakeNetwork(t)
	en.e = en.newExecutor(t, Config{Network: net})
	dir, out := outDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	task := newTask(&api.ContainerSpec{
		Command:  sh("readlink /proc/self/ns/net > /out/netns; cat /etc/hosts > /out/hosts; cat /etc/resolv.conf > /out/resolv; ip -o addr 2>/dev/null | wc -l >> /out/netns"),
		Hostname: "web-1",
		Mounts:   []api.Mount{out},
	})
	task.Endpoint = &api.Endpoint{Ports: []*api.PortConfig{
		{TargetPort: 80, PublishedPort: 8080, PublishMode: api.PublishModeHost},
		{TargetPort: 53, Protocol: api.ProtocolUDP, PublishMode: api.PublishModeHost},
		{TargetPort: 443, PublishedPort: 443, PublishMode: api.PublishModeIngress}, // the mesh's, not ours
	}}
	ctlr := en.controller(t, task)
	task = drive(ctx, t, task, ctlr, api.TaskStateCompleted)
	if task.Status.State != api.TaskStateCompleted {
		t.Fatalf("task: %v %q", task.Status.State, task.Status.Err)
	}

	var st syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+net.name(task.ID), &st); err != nil {
		t.Fatal(err)
	}
	got := lines(readFile(t, filepath.Join(dir, "netns")))
	if len(got) == 0 || got[0] != fmt.Sprintf("net:[%d]", st.Ino) {
		t.Errorf("container's network namespace %q, want the attachment's net:[%d]", got, st.Ino)
	}
	if hosts := readFile(t, filepath.Join(dir, "hosts")); !strings.Contains(hosts, "10.77.0.9\tweb-1\n") {
		t.Errorf("/etc/hosts:\n%s\nwant the task's address and hostname", hosts)
	}
	if resolv := readFile(t, filepath.Join(dir, "resolv")); !strings.Contains(resolv, "nameserver") || strings.Contains(resolv, "nameserver 127.") {
		t.Errorf("/etc/resolv.conf:\n%s\nwant the host's non-loopback nameservers", resolv)
	}
	ps, err := ctlr.PortStatus(ctx)
	if err != nil || ps == nil || len(ps.Ports) != 2 || ps.Ports[0].PublishedPort != 8080 || ps.Ports[1].PublishedPort == 0 {
		t.Errorf("port status %+v, %v: want the two host-mode ports as published", ps, err)
	}

	removeTask(t, ctlr)
	if _, err := os.Stat("/run/netns/" + net.name(task.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("network namespace after Remove: %v, want it gone", err)
	}

	// Attach fails: the task is rejected (or retried if temporary), nothing left.
	net.mu.Lock()
	net.failNext = errors.New("no addresses left")
	net.mu.Unlock()
	failed, _ := en.run(t, &api.ContainerSpec{Command: sh("true")})
	if failed.Status.State != api.TaskStateRejected || !strings.Contains(failed.Status.Err, "no addresses left") {
		t.Errorf("attach failure: %v %q, want REJECTED with the network's error", failed.Status.State, failed.Status.Err)
	}
	// A Prepare that fails after Attach (bad user) detaches.
	bad, _ := en.run(t, &api.ContainerSpec{Command: sh("true"), User: "nosuchuser"})
	if bad.Status.State != api.TaskStateRejected {
		t.Fatalf("bad user: %v %q, want REJECTED", bad.Status.State, bad.Status.Err)
	}
	net.mu.Lock()
	_, still := net.attached[bad.ID]
	net.mu.Unlock()
	if still {
		t.Error("a failed Prepare left the task attached to the network")
	}
	assertNoContainers(t, en)
}
