package integration

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// waitExit waits for a swarmd that is expected to refuse to start.
func (d *swarmd) waitExit() string {
	d.t.Helper()
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		d.t.Fatalf("swarmd did not exit:\n%s", d.out.String())
	}
	if d.exitErr == nil {
		d.t.Fatalf("swarmd exited 0, want a refusal:\n%s", d.out.String())
	}
	return d.out.String()
}

// filesContaining lists the files under dir that hold s.
func filesContaining(t *testing.T, dir, s string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(s)) {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// waitKeyFileLocked polls the manager's key file until it is (or is not) sealed.
func waitKeyFileLocked(t *testing.T, dir string, locked bool) {
	t.Helper()
	path := filepath.Join(dir, "certificates", "swarm-node.key")
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(path)
		if err == nil && bytes.Contains(b, []byte("FLOTILLA LOCKED KEY")) == locked && bytes.Contains(b, []byte("PRIVATE KEY")) != locked {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("key file %s: locked never became %v", path, locked)
}

var unlockKeyRE = regexp.MustCompile(`SWMKEY-1-[A-Za-z0-9+/]{43}`)

func TestAutolockedManagerRestartsOnlyWithItsUnlockKey(t *testing.T) {
	dir := t.TempDir()
	const secretName = "payroll-frontend-7f3a"
	d := startSwarmd(t, dir)
	d.waitReady()
	d.mustCtl("cluster", "update", "--snapshot-interval", "20")
	d.mustCtl("service", "create", "--name", secretName, "--image", "busybox:latest", "--", "sleep", "1d")
	for i := range 25 { // enough entries for a snapshot
		d.mustCtl("service", "create", "--name", "filler-"+strings.Repeat("x", i%3)+string(rune('a'+i)), "--image", "busybox:latest")
	}
	if _, errOut, err := d.ctl("cluster", "unlock-key"); err == nil || !strings.Contains(errOut, "autolock is off") {
		t.Fatalf("unlock-key with autolock off: %v %q", err, errOut)
	}

	// Encrypted at rest even without autolock: the raft log and snapshots never hold the name.
	raftDir := filepath.Join(dir, "raft")
	if snaps, _ := filepath.Glob(filepath.Join(raftDir, "snap", "*.snap")); len(snaps) == 0 {
		t.Fatal("no snapshot was written: the test would not check snapshots")
	}
	if f := filesContaining(t, raftDir, secretName); len(f) > 0 {
		t.Fatalf("raft files hold the service name in the clear: %v", f)
	}

	// Autolock on: the key is printed once and by unlock-key.
	out := d.mustCtl("cluster", "update", "--autolock=true")
	key := unlockKeyRE.FindString(out)
	if key == "" || !strings.Contains(out, "swarmd --unlock-key "+key) {
		t.Fatalf("cluster update --autolock=true did not print the unlock key:\n%s", out)
	}
	if got := strings.TrimSpace(d.mustCtl("cluster", "unlock-key", "-q")); got != key {
		t.Fatalf("unlock-key -q = %q, want %q", got, key)
	}
	if inspect := d.mustCtl("cluster", "inspect"); strings.Contains(inspect, key[9:]) || strings.Contains(inspect, "unlockKeys") {
		t.Fatalf("cluster inspect shows the unlock key:\n%s", inspect)
	}
	waitKeyFileLocked(t, dir, true)
	d.stop()

	// Without the key, with a wrong one, with a malformed one: refused, saying why.
	if out := startSwarmd(t, dir).waitExit(); !strings.Contains(out, "this manager is locked: start it with --unlock-key SWMKEY-1-... (swarmctl cluster unlock-key on another manager shows it)") {
		t.Fatalf("locked manager without a key:\n%s", out)
	}
	wrong := "SWMKEY-1-" + strings.Repeat("A", 43)
	if out := startSwarmd(t, dir, "--unlock-key", wrong).waitExit(); !strings.Contains(out, "the unlock key does not open this manager's keys") {
		t.Fatalf("locked manager with a wrong key:\n%s", out)
	}
	if out := startSwarmd(t, dir, "--unlock-key", "SWMTKN-1-nope").waitExit(); !strings.Contains(out, "--unlock-key: not an unlock key") {
		t.Fatalf("malformed key:\n%s", out)
	}

	// With the key: same state.
	d = startSwarmd(t, dir, "--unlock-key", key)
	d.waitReady()
	if ls := d.mustCtl("service", "ls", "-q"); strings.Count(ls, "\n") != 26 {
		t.Fatalf("after unlock, service ls -q:\n%s", ls)
	}
	if ls := d.mustCtl("service", "ls"); !strings.Contains(ls, secretName) {
		t.Fatalf("after unlock, the service is missing:\n%s", ls)
	}

	// Rotation: a new key; once the manager re-sealed its keys, only it opens them.
	keyFile := filepath.Join(dir, "certificates", "swarm-node.key")
	before, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	out = d.mustCtl("cluster", "update", "--rotate-unlock-key")
	key2 := unlockKeyRE.FindString(out)
	if key2 == "" || key2 == key || !strings.Contains(out, "rotated manager unlock key") {
		t.Fatalf("rotate-unlock-key printed:\n%s", out)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if now, _ := os.ReadFile(keyFile); len(now) > 0 && !bytes.Equal(now, before) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the manager did not re-seal its keys after the rotation")
		}
	}
	d.stop()
	if out := startSwarmd(t, dir, "--unlock-key", key).waitExit(); !strings.Contains(out, "does not open this manager's keys") {
		t.Fatalf("the rotated-out key:\n%s", out)
	}
	d = startSwarmd(t, dir, "--unlock-key", key2)
	d.waitReady()

	// Autolock off: keys in the clear again, and a restart needs no key.
	if out := d.mustCtl("cluster", "update", "--autolock=false"); strings.Contains(out, "SWMKEY") {
		t.Fatalf("autolock off printed a key:\n%s", out)
	}
	if _, errOut, err := d.ctl("cluster", "unlock-key"); err == nil || !strings.Contains(errOut, "autolock is off") {
		t.Fatalf("unlock-key after autolock off: %v %q", err, errOut)
	}
	waitKeyFileLocked(t, dir, false)
	d.stop()
	d = startSwarmd(t, dir)
	d.waitReady()
	if ls := d.mustCtl("service", "ls"); !strings.Contains(ls, secretName) {
		t.Fatalf("after autolock off and a restart, the service is missing:\n%s", ls)
	}
	d.stop()
	if f := filesContaining(t, raftDir, secretName); len(f) > 0 {
		t.Fatalf("raft files hold the service name in the clear: %v", f)
	}
}
