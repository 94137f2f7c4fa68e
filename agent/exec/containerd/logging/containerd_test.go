package logging

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/flotilla/flotilla/agent/exec/containerd/containerdtest"
)

// TestContainerOutputLandsInTheFiles runs a real container whose logging
// binary is this test binary (as swarmd is in production): its stdout and
// stderr land in the files, and a follower returns once the task is
// deleted.
func TestContainerOutputLandsInTheFiles(t *testing.T) {
	d := containerdtest.StartDaemon(t)
	const ns = "swarmd"
	client := d.Client(t, ns)
	ctx := namespaces.WithNamespace(context.Background(), ns)
	img := containerdtest.Import(t, client, ns, containerdtest.BusyboxImage(t, containerdtest.ImageOptions{}), "busybox:test")

	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	id := fmt.Sprintf("logging-%x", rnd)
	ctr, err := client.NewContainer(ctx, id, d.WithRuncRoot(),
		containerd.WithNewSnapshot(id, img),
		containerd.WithNewSpec(oci.WithImageConfig(img), oci.WithProcessArgs("sh", "-c",
			"echo hello; echo oops >&2; for i in 1 2 3; do echo line $i; done; head -c 40000 /dev/zero | tr '\\0' x; echo")))
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "logs", id)
	task, err := ctr.NewTask(ctx, cio.BinaryIO(self, ShimArgs(dir, Options{})))
	if err != nil {
		t.Fatal(err)
	}
	exitCh, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}

	followed := make(chan []Entry, 1)
	fctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	go func() {
		var es []Entry
		err := Read(fctx, dir, ReadOptions{Tail: TailAll, Follow: true}, func(e Entry) error {
			es = append(es, e)
			return nil
		})
		if err != nil {
			t.Errorf("follow: %v", err)
		}
		followed <- es
	}()

	if st := <-exitCh; st.ExitCode() != 0 {
		t.Fatalf("container exited %d", st.ExitCode())
	}
	// The logger sees end of file when the shim closes the pipes, at
	// task delete, not at process exit.
	if Closed(dir) {
		t.Log("the logger finished before the task was deleted")
	}
	if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	var es []Entry
	select {
	case es = <-followed:
	case <-fctx.Done():
		t.Fatal("follower did not return after the task was deleted")
	}
	if !Closed(dir) {
		t.Error("no closed marker after the task was deleted")
	}
	var got []string
	for _, e := range es {
		line := string(e.Line)
		if len(line) > 20 {
			line = fmt.Sprintf("%c*%d", line[0], len(line))
		}
		if e.Partial {
			line += "+"
		}
		got = append(got, e.Stream.String()+":"+line)
	}
	joined := strings.Join(got, " ")
	for _, want := range []string{"stdout:hello", "stderr:oops", "stdout:line 1", "stdout:line 3", "stdout:x*16384+", "stdout:x*7232"} {
		if !strings.Contains(joined, want) {
			t.Errorf("log lacks %q: %s", want, joined)
		}
	}
	if again := readAll(t, dir, ReadOptions{Tail: TailAll}); len(again) != len(es) {
		t.Errorf("read %d entries after the end, followed %d", len(again), len(es))
	}
	if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
		t.Fatal(err)
	}
}
