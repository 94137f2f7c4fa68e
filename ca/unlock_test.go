package ca

import (
	"bytes"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
)

func TestUnlockKeyPrintedFormRoundTrips(t *testing.T) {
	k := GenerateUnlockKey()
	s := k.String()
	if !strings.HasPrefix(s, "SWMKEY-1-") || len(s) != len("SWMKEY-1-")+43 {
		t.Fatalf("printed key %q", s)
	}
	got, err := ParseUnlockKey("  " + s + "\n")
	if err != nil || !got.Equal(k) {
		t.Fatalf("ParseUnlockKey(%q) = %x, %v", s, got, err)
	}
	if GenerateUnlockKey().Equal(k) {
		t.Fatal("two generated keys are equal")
	}
	for _, bad := range []string{"", "SWMKEY-1-", "SWMKEY-2-" + s[9:], s[:len(s)-1], s + "A", "SWMTKN-1-abc", "SWMKEY-1-" + strings.Repeat("!", 43)} {
		if _, err := ParseUnlockKey(bad); !errors.Is(err, ErrBadUnlockKey) {
			t.Errorf("ParseUnlockKey(%q) = %v, want ErrBadUnlockKey", bad, err)
		}
	}
}

// managerStore is a key store holding a manager's certificate and key, and a data key.
func managerStore(t *testing.T) (dir string, cert, key []byte, dek *DataKey) {
	t.Helper()
	rca := newRoot(t)
	dir = filepath.Join(t.TempDir(), "certificates")
	cert, key = issueNode(t, rca, "m1", api.NodeRoleManager, "c1", time.Hour)
	ks := &KeyStore{Dir: dir}
	if err := ks.SaveNode(cert, key); err != nil {
		t.Fatal(err)
	}
	dek, err := ks.DataKey()
	if err != nil {
		t.Fatal(err)
	}
	again, err := ks.DataKey()
	if err != nil || again.ID != dek.ID || !bytes.Equal(again.Key, dek.Key) {
		t.Fatalf("second DataKey = %+v, %v: a new key each call", again, err)
	}
	if dek.ID != 1 || len(dek.Key) != DataKeySize {
		t.Fatalf("data key %+v", dek)
	}
	return dir, cert, key, dek
}

// loadAll opens dir afresh with k and checks it holds cert, key and dek.
func loadAll(t *testing.T, dir string, k UnlockKey, cert, key []byte, dek *DataKey) *KeyStore {
	t.Helper()
	ks := &KeyStore{Dir: dir, UnlockKey: k}
	gotCert, gotKey, err := ks.LoadNode()
	if err != nil {
		t.Fatalf("LoadNode: %v", err)
	}
	if !bytes.Equal(gotCert, cert) || !bytes.Equal(gotKey, key) {
		t.Fatal("LoadNode returned another certificate or key")
	}
	got, err := ks.DataKey()
	if err != nil || got.ID != dek.ID || !bytes.Equal(got.Key, dek.Key) {
		t.Fatalf("DataKey after LoadNode = %+v, %v; want the stored one", got, err)
	}
	return ks
}

func keyFileHolds(t *testing.T, dir string, secret []byte) bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, NodeKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(secret)
	if block != nil {
		secret = []byte(base64.StdEncoding.EncodeToString(block.Bytes)[:40])
	} else {
		secret = []byte(base64.StdEncoding.EncodeToString(secret))
	}
	return bytes.Contains(b, secret)
}

func TestLockedKeyFileOpensOnlyWithItsUnlockKey(t *testing.T) {
	dir, cert, key, dek := managerStore(t)
	if !keyFileHolds(t, dir, key) || !keyFileHolds(t, dir, dek.Key) {
		t.Fatal("an unlocked key file does not hold the key and the data key in the clear")
	}
	ks := loadAll(t, dir, nil, cert, key, dek)
	if ks.Locked() {
		t.Fatal("a new key file is locked")
	}

	k1 := GenerateUnlockKey()
	if changed, err := ks.Lock(k1); err != nil || !changed {
		t.Fatalf("Lock = %v, %v", changed, err)
	}
	if changed, err := ks.Lock(k1); err != nil || changed {
		t.Fatalf("Lock with the key in use = %v, %v; want no change", changed, err)
	}
	if keyFileHolds(t, dir, key) || keyFileHolds(t, dir, dek.Key) {
		t.Fatal("the locked key file holds the key or the data key in the clear")
	}
	if st, _ := os.Stat(filepath.Join(dir, NodeKeyFile)); st.Mode().Perm() != 0o600 {
		t.Fatalf("locked key file mode %v", st.Mode().Perm())
	}

	if _, _, err := (&KeyStore{Dir: dir}).LoadNode(); !errors.Is(err, ErrLocked) {
		t.Fatalf("LoadNode without the unlock key = %v, want ErrLocked", err)
	}
	if _, _, err := (&KeyStore{Dir: dir, UnlockKey: GenerateUnlockKey()}).LoadNode(); !errors.Is(err, ErrWrongUnlockKey) {
		t.Fatalf("LoadNode with another unlock key = %v, want ErrWrongUnlockKey", err)
	}
	if _, err := (&KeyStore{Dir: dir}).DataKey(); !errors.Is(err, ErrLocked) {
		t.Fatalf("DataKey of a locked store without the key = %v, want ErrLocked", err)
	}
	ks = loadAll(t, dir, k1, cert, key, dek)
	if !ks.Locked() {
		t.Fatal("Locked() false after loading a locked file")
	}

	// A renewal on a locked node keeps the lock and the data key.
	rca := newRoot(t)
	newCert, newKey := issueNode(t, rca, "m1", api.NodeRoleManager, "c1", time.Hour)
	if err := ks.SaveNode(newCert, newKey); err != nil {
		t.Fatal(err)
	}
	if _, _, err := (&KeyStore{Dir: dir}).LoadNode(); !errors.Is(err, ErrLocked) {
		t.Fatalf("after a renewal, LoadNode without the key = %v, want ErrLocked", err)
	}
	ks = loadAll(t, dir, k1, newCert, newKey, dek)

	// Rotation: only the new key opens it.
	k2 := GenerateUnlockKey()
	if changed, err := ks.Lock(k2); err != nil || !changed {
		t.Fatalf("Lock(k2) = %v, %v", changed, err)
	}
	if _, _, err := (&KeyStore{Dir: dir, UnlockKey: k1}).LoadNode(); !errors.Is(err, ErrWrongUnlockKey) {
		t.Fatalf("LoadNode with the rotated-out key = %v, want ErrWrongUnlockKey", err)
	}
	ks = loadAll(t, dir, k2, newCert, newKey, dek)

	// Autolock off: back in the clear, with the same data key.
	if changed, err := ks.Lock(nil); err != nil || !changed {
		t.Fatalf("Lock(nil) = %v, %v", changed, err)
	}
	ks = loadAll(t, dir, nil, newCert, newKey, dek)
	if ks.Locked() {
		t.Fatal("still locked after Lock(nil)")
	}
	// An unlock key given for an unlocked file is not needed and does no harm.
	loadAll(t, dir, k2, newCert, newKey, dek)

	// The mark that the raft log is encrypted survives locking and renewals.
	if err := ks.MarkLogEncrypted(); err != nil {
		t.Fatal(err)
	}
	if err := ks.MarkLogEncrypted(); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Lock(k1); err != nil {
		t.Fatal(err)
	}
	if err := ks.SaveNode(cert, key); err != nil {
		t.Fatal(err)
	}
	marked := *dek
	marked.LogEncrypted = true
	got := loadAll(t, dir, k1, cert, key, &marked)
	if d, _ := got.DataKey(); !d.LogEncrypted {
		t.Fatal("the log-encrypted mark was lost")
	}
}

func TestLockedKeyStoreCrashDuringRenewalKeepsLockAndDataKey(t *testing.T) {
	for _, step := range []string{"stage key", "stage cert", "rename key"} {
		t.Run("crash after "+step, func(t *testing.T) {
			dir, cert, key, dek := managerStore(t)
			k := GenerateUnlockKey()
			ks := loadAll(t, dir, nil, cert, key, dek)
			if _, err := ks.Lock(k); err != nil {
				t.Fatal(err)
			}
			newCert, newKey := issueNode(t, newRoot(t), "m1", api.NodeRoleManager, "c1", time.Hour)
			ks.failpoint = func(s string) error {
				if s == step {
					return errCrash
				}
				return nil
			}
			if err := ks.SaveNode(newCert, newKey); !errors.Is(err, errCrash) {
				t.Fatalf("SaveNode = %v", err)
			}
			if _, _, err := (&KeyStore{Dir: dir}).LoadNode(); !errors.Is(err, ErrLocked) {
				t.Fatalf("LoadNode without the key after the crash = %v, want ErrLocked", err)
			}
			if step == "stage key" {
				loadAll(t, dir, k, cert, key, dek)
			} else {
				loadAll(t, dir, k, newCert, newKey, dek)
			}
		})
	}
}

func TestSaveNodeOnAFreshKeyStoreKeepsTheDataKey(t *testing.T) {
	// Any KeyStore on the directory, not only the one that loaded it, keeps
	// the data key and the lock when it saves.
	dir, cert, key, dek := managerStore(t)
	newCert, newKey := issueNode(t, newRoot(t), "m1", api.NodeRoleManager, "c1", time.Hour)
	if err := (&KeyStore{Dir: dir}).SaveNode(newCert, newKey); err != nil {
		t.Fatal(err)
	}
	ks := loadAll(t, dir, nil, newCert, newKey, dek)
	k := GenerateUnlockKey()
	if _, err := ks.Lock(k); err != nil {
		t.Fatal(err)
	}
	if err := (&KeyStore{Dir: dir}).SaveNode(cert, key); !errors.Is(err, ErrLocked) {
		t.Fatalf("SaveNode on a locked store without its key = %v, want ErrLocked (it would drop the data key)", err)
	}
	if err := (&KeyStore{Dir: dir, UnlockKey: k}).SaveNode(cert, key); err != nil {
		t.Fatal(err)
	}
	loadAll(t, dir, k, cert, key, dek)
}
