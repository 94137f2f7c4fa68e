package ca

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
)

var errCrash = errors.New("simulated crash")

// TestKeyStoreNeverLoadsAMismatchedPairAfterACrash crashes SaveNode after
// each of its steps and checks that LoadNode then returns the old or the new
// pair, whole, and leaves the directory clean.
func TestKeyStoreNeverLoadsAMismatchedPairAfterACrash(t *testing.T) {
	rca := newRoot(t)
	oldCert, oldKey := issueNode(t, rca, "node1", api.NodeRoleWorker, "c1", time.Hour)
	newCert, newKey := issueNode(t, rca, "node1", api.NodeRoleManager, "c1", time.Hour)

	cases := []struct {
		crashAfter string
		wantNew    bool
	}{
		{"stage key", false},  // only the new key is staged: keep the old pair
		{"stage cert", true},  // the new pair is staged whole: roll forward
		{"rename key", true},  // new key in place, new cert staged: finish
		{"rename cert", true}, // save complete
	}
	for _, tc := range cases {
		t.Run("crash after "+tc.crashAfter, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "certificates")
			ks := &KeyStore{Dir: dir}
			if err := ks.SaveNode(oldCert, oldKey); err != nil {
				t.Fatal(err)
			}
			ks.failpoint = func(step string) error {
				if step == tc.crashAfter {
					return errCrash
				}
				return nil
			}
			if err := ks.SaveNode(newCert, newKey); !errors.Is(err, errCrash) {
				t.Fatalf("SaveNode = %v, want the simulated crash", err)
			}

			// A restarted node opens the directory afresh.
			restarted := &KeyStore{Dir: dir}
			cert, key, err := restarted.LoadNode()
			if err != nil {
				t.Fatalf("LoadNode after a crash: %v", err)
			}
			wantCert, wantKey := oldCert, oldKey
			if tc.wantNew {
				wantCert, wantKey = newCert, newKey
			}
			if !bytes.Equal(cert, wantCert) || !bytes.Equal(key, wantKey) {
				t.Fatalf("LoadNode returned the %s pair, want the %s one", which(cert, newCert), which(wantCert, newCert))
			}
			// Recovery is durable and tidy: the files on disk are the pair,
			// and no staged file is left.
			again, againKey, err := restarted.LoadNode()
			if err != nil || !bytes.Equal(again, cert) || !bytes.Equal(againKey, key) {
				t.Fatalf("second LoadNode: %v", err)
			}
			onDisk, _ := os.ReadFile(filepath.Join(dir, NodeCertFile))
			if !bytes.Equal(onDisk, cert) {
				t.Fatal("the recovered certificate is not the one on disk")
			}
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				if e.Name() != NodeCertFile && e.Name() != NodeKeyFile {
					t.Errorf("left over after recovery: %s", e.Name())
				}
			}
		})
	}
}

func which(cert, newCert []byte) string {
	if bytes.Equal(cert, newCert) {
		return "new"
	}
	return "old"
}

func TestKeyStoreFiles(t *testing.T) {
	rca := newRoot(t)
	dir := filepath.Join(t.TempDir(), "certificates")
	ks := &KeyStore{Dir: dir}

	if _, _, err := ks.LoadNode(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("LoadNode of an empty store = %v, want fs.ErrNotExist", err)
	}
	if _, err := ks.LoadRootCert(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("LoadRootCert of an empty store = %v, want fs.ErrNotExist", err)
	}

	cert, key := issueNode(t, rca, "node1", api.NodeRoleWorker, "c1", time.Hour)
	otherCert, _ := issueNode(t, rca, "node1", api.NodeRoleWorker, "c1", time.Hour)
	if err := ks.SaveNode(otherCert, key); !errors.Is(err, ErrMismatchedKeyPair) {
		t.Fatalf("SaveNode of a mismatched pair = %v, want ErrMismatchedKeyPair", err)
	}
	if err := ks.SaveRootCert(rca.Cert); err != nil {
		t.Fatal(err)
	}
	if err := ks.SaveNode(cert, key); err != nil {
		t.Fatal(err)
	}
	if err := ks.SaveRootKey(rca.Key); err != nil {
		t.Fatal(err)
	}

	wantPerm := map[string]fs.FileMode{
		RootCertFile: 0o644, NodeCertFile: 0o644, NodeKeyFile: 0o600, RootKeyFile: 0o600,
	}
	for name, perm := range wantPerm {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != perm {
			t.Errorf("%s has mode %v, want %v", name, st.Mode().Perm(), perm)
		}
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v, want 0700", st.Mode().Perm())
	}

	gotRoot, err := ks.LoadRootCert()
	if err != nil || !bytes.Equal(gotRoot, rca.Cert) {
		t.Fatalf("LoadRootCert: %v", err)
	}
	gotKey, err := ks.LoadRootKey()
	if err != nil || !bytes.Equal(gotKey, rca.Key) {
		t.Fatalf("LoadRootKey: %v", err)
	}
	if _, err := ParseRootCA(gotRoot, gotKey); err != nil {
		t.Fatal(err)
	}
	if err := ks.RemoveRootKey(); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.LoadRootKey(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("LoadRootKey after RemoveRootKey = %v", err)
	}
	if err := ks.RemoveRootKey(); err != nil {
		t.Fatalf("RemoveRootKey twice: %v", err)
	}

	// A pair broken outside our control is reported, not used.
	if err := os.WriteFile(filepath.Join(dir, NodeCertFile), otherCert, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ks.LoadNode(); !errors.Is(err, ErrMismatchedKeyPair) {
		t.Fatalf("LoadNode of a mismatched pair = %v, want ErrMismatchedKeyPair", err)
	}
	// Temporary files of an interrupted write are cleaned up.
	tmp := filepath.Join(dir, "."+NodeKeyFile+".tmp-123")
	if err := os.WriteFile(tmp, []byte("half a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, _ = ks.LoadNode()
	if _, err := os.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("temporary file survived LoadNode: %v", err)
	}
}
