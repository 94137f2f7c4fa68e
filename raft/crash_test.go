package raft

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

const crashChildEnv = "FLOTILLA_RAFT_CRASH_CHILD_DIR"

// TestCrashChild is the child process of TestSIGKILLLosesNoAcknowledgedEntry: it proposes from
// several goroutines forever and prints "ack <key>" once Propose returned nil for key.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		t.Skip("child process of TestSIGKILLLosesNoAcknowledgedEntry")
	}
	setSegmentSize(t, 64<<10) // many segment cuts
	cfg := testConfig(t, dir, newKV())
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg.SnapshotInterval, cfg.LogEntriesForSlowFollowers = 100, 20 // and snapshots, compactions
	n, err := New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: New:", err)
		os.Exit(2)
	}
	go func() {
		err := n.Run(context.Background())
		fmt.Fprintln(os.Stderr, "child: Run returned:", err)
		os.Exit(3)
	}()
	waitLeaderReady(t, n)
	var mu sync.Mutex
	for w := range 8 {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(os.Getpid()), uint64(w)))
			for i := 0; ; i++ {
				key := fmt.Sprintf("p%d-w%d-%d", os.Getpid(), w, i)
				if err := n.Propose(context.Background(), cmd("put", key, strings.Repeat("x", 100+rng.IntN(3000)))); err != nil {
					fmt.Fprintln(os.Stderr, "child: Propose:", err)
					os.Exit(4)
				}
				mu.Lock()
				fmt.Fprintf(os.Stdout, "ack %s\n", key)
				mu.Unlock()
			}
		}()
	}
	select {} // until killed
}

func TestSIGKILLLosesNoAcknowledgedEntry(t *testing.T) {
	dir := t.TempDir()
	var acked []string
	for round := range 3 {
		child := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		child.Env = append(os.Environ(), crashChildEnv+"="+dir)
		var stderr strings.Builder
		child.Stderr = &stderr
		out, err := child.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := child.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })

		killAt := 50 + rand.IntN(400)
		sc := bufio.NewScanner(out)
		killed := false
		timer := time.AfterFunc(60*time.Second, func() { _ = child.Process.Kill() })
		roundAcks := 0
		for sc.Scan() { // read to EOF: acks printed before the kill count too
			key, ok := strings.CutPrefix(sc.Text(), "ack ")
			if !ok {
				continue
			}
			acked = append(acked, key)
			if roundAcks++; roundAcks == killAt {
				if err := child.Process.Kill(); err != nil { // SIGKILL, by PID
					t.Fatal(err)
				}
				killed = true
			}
		}
		timer.Stop()
		_ = child.Wait()
		if !killed {
			t.Fatalf("round %d: child exited after %d acks before being killed:\n%s", round, roundAcks, stderr.String())
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("round %d child stderr:\n%s", round, stderr.String())
			}
		})

		sm := newKV()
		r := startNode(t, testConfig(t, dir, sm))
		waitLeaderReady(t, r.n)
		for _, k := range acked {
			if _, ok := sm.get(k); !ok {
				t.Fatalf("round %d: acknowledged key %s lost after SIGKILL (%d acked, state has %d keys)", round, k, len(acked), sm.len())
			}
		}
		sm.check(t)
		t.Logf("round %d: killed after %d acks; %d acknowledged entries all present", round, roundAcks, len(acked))
		if err := r.stop(t); err != nil {
			t.Fatal(err)
		}
	}
}
