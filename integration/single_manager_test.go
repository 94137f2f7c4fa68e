package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

func TestSingleManagerLifecycleWithRealBinaries(t *testing.T) {
	dir := t.TempDir()
	d := startSwarmd(t, dir)
	d.waitReady()

	// The node is a READY manager leading its new cluster.
	var nodes []map[string]any
	if err := json.Unmarshal([]byte(d.mustCtl("node", "ls", "--format", "json")), &nodes); err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 1 {
		t.Fatalf("%d nodes, want 1", len(nodes))
	}
	nodeID := nodes[0]["id"].(string)
	if st := field(nodes[0], "status.state"); st != "READY" {
		t.Errorf("node status %v, want READY", st)
	}
	if r := field(nodes[0], "role"); r != "MANAGER" {
		t.Errorf("node role %v, want MANAGER", r)
	}
	if l := field(nodes[0], "managerStatus.leader"); l != true {
		t.Errorf("managerStatus.leader = %v, want true", l)
	}
	if out := d.mustCtl("node", "ls"); !strings.Contains(out, "node-a") || !strings.Contains(out, "Leader") {
		t.Errorf("node ls table lacks hostname or Leader:\n%s", out)
	}

	// A second swarmd on the same state dir is refused.
	second := startSwarmd(t, dir)
	select {
	case <-second.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("second swarmd on the same state dir did not exit")
	}
	if second.exitErr == nil || !strings.Contains(second.out.String(), "in use") {
		t.Errorf("second swarmd: exit %v, output %q; want a refusal saying the state dir is in use", second.exitErr, second.out.String())
	}

	// Create, list, inspect, update through swarmctl.
	d.mustCtl("service", "create", "--name", "web", "--replicas", "3", "--image", "busybox:latest", "--", "sleep", "1d")
	if _, errOut, err := d.ctl("service", "create", "--name", "web", "--image", "busybox:latest"); err == nil || !strings.Contains(errOut, "already exists") {
		t.Errorf("duplicate create: err %v, stderr %q", err, errOut)
	}
	if _, errOut, err := d.ctl("service", "create", "--name", "nope"); err == nil || !strings.Contains(errOut, "image") {
		t.Errorf("create without image: err %v, stderr %q", err, errOut)
	}
	if out := d.mustCtl("service", "ls"); !strings.Contains(out, "web") || !strings.Contains(out, "busybox:latest") {
		t.Errorf("service ls:\n%s", out)
	}
	d.mustCtl("service", "scale", "web=5")
	var svc map[string]any
	if err := json.Unmarshal([]byte(d.mustCtl("service", "inspect", "web")), &svc); err != nil {
		t.Fatal(err)
	}
	if r := field(svc, "spec.mode.replicated.replicas"); r != "5" {
		t.Errorf("replicas after scale = %v, want \"5\"", r)
	}
	if img := field(svc, "spec.task.container.image"); img != "busybox:latest" {
		t.Errorf("image = %v", img)
	}

	// An update from a stale version is refused with advice.
	c := d.client()
	ctx := withTimeout(t)
	got, err := c.GetService(ctx, &api.GetServiceRequest{ServiceID: "web"})
	if err != nil {
		t.Fatal(err)
	}
	spec := got.Service.Spec.Copy()
	spec.Annotations.Labels = map[string]string{"v": "1"}
	if _, err := c.UpdateService(ctx, &api.UpdateServiceRequest{ServiceID: "web", ServiceVersion: got.Service.Meta.Version, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	_, err = c.UpdateService(ctx, &api.UpdateServiceRequest{ServiceID: "web", ServiceVersion: got.Service.Meta.Version, Spec: spec})
	if st, _ := status.FromError(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "read it again and retry") {
		t.Errorf("stale update: %v", err)
	}

	// The cluster's snapshot interval reaches the raft log.
	d.mustCtl("cluster", "update", "--snapshot-interval", "50")
	for i := 0; i < 60; i++ {
		d.mustCtl("service", "create", "--name", fmt.Sprintf("snap-%d", i), "--image", "busybox:latest")
	}
	if snaps, _ := filepath.Glob(filepath.Join(dir, "raft", "snap", "*.snap")); len(snaps) == 0 {
		t.Error("no raft snapshot after 60 writes with --snapshot-interval 50")
	}

	// kill -9 during a stream of creates: every acknowledged create survives.
	acked := createUntilKilled(t, d, c)
	if len(acked) == 0 {
		t.Fatal("no create was acknowledged before the kill")
	}
	d = startSwarmd(t, dir)
	d.waitReady()
	c = d.client()
	ctx = withTimeout(t)
	list, err := c.ListServices(ctx, &api.ListServicesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, s := range list.Services {
		have[s.Spec.Annotations.Name] = true
	}
	for _, name := range append(acked, "web") {
		if !have[name] {
			t.Errorf("acknowledged service %s is missing after kill -9 and restart", name)
		}
	}
	t.Logf("%d creates acknowledged before kill -9, all present after restart (%d services)", len(acked), len(list.Services))

	// Same node identity after restart, and a clean stop on SIGTERM.
	if ids := strings.Fields(d.mustCtl("node", "ls", "-q")); len(ids) != 1 || ids[0] != nodeID {
		t.Errorf("node IDs after restart %v, want [%s]", ids, nodeID)
	}
	d.stop()
	d = startSwarmd(t, dir)
	d.waitReady()
	if out := d.mustCtl("service", "inspect", "web"); !strings.Contains(out, `"v": "1"`) {
		t.Errorf("label written before the clean restart is missing:\n%s", out)
	}
	d.stop()

	// Damage early in the log is refused with the file and offset.
	segs, err := filepath.Glob(filepath.Join(dir, "raft", "wal", "*.wal"))
	if err != nil || len(segs) == 0 {
		t.Fatalf("no WAL segment: %v", err)
	}
	flipByte(t, segs[0], 300)
	d = startSwarmd(t, dir)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("swarmd started on a corrupt log")
	}
	if d.exitErr == nil || !strings.Contains(d.out.String(), "corrupt at byte offset") || !strings.Contains(d.out.String(), filepath.Base(segs[0])) {
		t.Errorf("corrupt log: exit %v, output:\n%s", d.exitErr, d.out.String())
	}
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// createUntilKilled creates services from several goroutines and SIGKILLs
// swarmd in the middle; it returns the names whose create was acknowledged.
func createUntilKilled(t *testing.T, d *swarmd, c api.ControlClient) []string {
	t.Helper()
	ctx := withTimeout(t)
	var (
		mu    sync.Mutex
		acked []string
		wg    sync.WaitGroup
	)
	killAt := 200
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				name := fmt.Sprintf("load-%d-%d", w, i)
				_, err := c.CreateService(ctx, &api.CreateServiceRequest{Spec: &api.ServiceSpec{
					Annotations: api.Annotations{Name: name},
					Task:        api.TaskSpec{Container: &api.ContainerSpec{Image: "busybox:latest"}},
					Mode:        api.ServiceMode{Mode: &api.ServiceMode_Replicated{Replicated: &api.ReplicatedService{Replicas: 1}}},
				}})
				if err != nil {
					return
				}
				mu.Lock()
				acked = append(acked, name)
				n := len(acked)
				mu.Unlock()
				if n == killAt {
					_ = syscall.Kill(d.cmd.Process.Pid, syscall.SIGKILL)
				}
			}
		}(w)
	}
	wg.Wait()
	<-d.exited
	return acked
}

// field reads a dotted path from decoded JSON.
func field(m map[string]any, path string) any {
	var cur any = m
	for _, p := range strings.Split(path, ".") {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = mm[p]
	}
	return cur
}
