package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

// partition cuts every TCP packet to or from port on this machine's
// loopback (a manager's remote API: raft, agents, forwarding) with an
// nftables table of the test's own, removed by heal and at cleanup.
func partition(t *testing.T, port string) (heal func()) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatalf("nft is needed to cut a manager off (make deps): %v", err)
	}
	table := fmt.Sprintf("flt_part_%d", os.Getpid())
	rules := fmt.Sprintf(`table inet %[1]s {
	chain out {
		type filter hook output priority 0; policy accept;
		tcp dport %[2]s drop
		tcp sport %[2]s drop
	}
}`, table, port)
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	healed := false
	heal = func() {
		if !healed {
			healed = true
			_ = exec.Command("nft", "delete", "table", "inet", table).Run()
		}
	}
	t.Cleanup(heal)
	return heal
}

// A leader cut off from the others steps down: a write on it answers
// Unavailable within seconds instead of hanging, while the others elect a
// leader and take writes; healed, it follows and catches up.
func TestPartitionedLeaderStepsDownAndCatchesUp(t *testing.T) {
	ms := startManagers(t, 3)
	m1 := ms[0]
	rows, err := m1.managerRows()
	if err != nil {
		t.Fatal(err)
	}
	var addr string
	for _, r := range rows {
		if r.Desc.Hostname == "m1" {
			addr = r.ManagerStatus.Addr
		}
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("m1's address %q: %v", addr, err)
	}
	heal := partition(t, port)

	// The cut-off leader: its write fails fast, it does not hang.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err = m1.client().CreateService(ctx, &api.CreateServiceRequest{Spec: &api.ServiceSpec{
		Annotations: api.Annotations{Name: "cut-off"},
		Task:        api.TaskSpec{Container: &api.ContainerSpec{Image: "busybox"}},
		Mode:        api.ServiceMode{Mode: &api.ServiceMode_Replicated{Replicated: &api.ReplicatedService{Replicas: 1}}},
	}})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("write on the cut-off leader: %v after %s, want Unavailable", err, time.Since(start).Round(time.Millisecond))
	}
	t.Logf("the cut-off leader answered %q after %s", status.Convert(err).Message(), time.Since(start).Round(time.Millisecond))

	// The others elect a leader and take writes.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, _, err := ms[1].ctl("service", "create", "--name", "majority", "--image", "busybox", "--", "sleep", "1d"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the two connected managers took no write within 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}

	t.Logf("the majority took a write %s after the cut", time.Since(start).Round(time.Millisecond))
	// Healed: m1 follows and sees the write made without it.
	heal()
	healed := time.Now()
	deadline = time.Now().Add(30 * time.Second)
	for {
		out, _, _ := m1.ctl("service", "ls")
		if strings.Contains(out, " majority ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("m1 has not caught up 30s after healing:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("m1 caught up %s after healing", time.Since(healed).Round(time.Millisecond))
	m1.waitManagers("three reachable managers again", 30*time.Second, func(rows map[string]managerRow) bool {
		if len(rows) != 3 {
			return false
		}
		for _, r := range rows {
			if r.ManagerStatus.Reachability != "REACHABLE" {
				return false
			}
		}
		return true
	})
	t.Logf("all reachable %s after healing", time.Since(healed).Round(time.Millisecond))
}
