package ca

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/flotilla/flotilla/internal/atomicfile"
)

// File names in a KeyStore directory.
const (
	RootCertFile = "swarm-root-ca.crt"
	RootKeyFile  = "swarm-root-ca.key"
	NodeCertFile = "swarm-node.crt"
	NodeKeyFile  = "swarm-node.key"

	stagedSuffix = ".new"
)

// ErrMismatchedKeyPair is wrapped by LoadNode when the directory holds no
// certificate and key that belong together.
var ErrMismatchedKeyPair = errors.New("node certificate and key do not match")

// KeyStore keeps a node's certificates and keys in a directory (0700).
// Keys are written 0600, certificates 0644. Every file is written atomically:
// a temporary file, fsync, rename, fsync of the directory.
//
// The node certificate and key are two files that must stay a pair, and two
// renames cannot be atomic together. SaveNode therefore first stages both as
// swarm-node.key.new and swarm-node.crt.new, then renames the key and then
// the certificate over the old ones. LoadNode finishes an interrupted save:
//
//   - both staged files present and matching: the new pair is complete; move
//     it into place (roll forward);
//   - the key already renamed and the staged certificate matches it: rename
//     the certificate too;
//   - otherwise the current pair is used and stray staged files are removed.
//
// So a crash at any point leaves either the old pair or the new one, never a
// mix.
//
// A manager's node key file also carries its raft data key, and with autolock
// the whole file is sealed with the cluster's unlock key (see unlock.go). The
// KeyStore remembers what the file holds once read (LoadNode, or the first
// save), so later saves keep the data key and the lock: use one KeyStore per
// directory for the life of the node.
type KeyStore struct {
	Dir string
	// Log receives notes on recovered saves; nil means slog.Default().
	Log *slog.Logger
	// UnlockKey opens a locked node key file. Without it LoadNode fails with
	// ErrLocked on a locked file; with a key that does not open the file,
	// with ErrWrongUnlockKey.
	UnlockKey UnlockKey

	mu     sync.Mutex
	loaded bool      // kek and dek reflect the node key file
	kek    UnlockKey // the unlock key the file is sealed with; nil: in the clear
	dek    *DataKey  // the raft data key in the file; nil: none

	// failpoint, when set by tests, is called after each step of SaveNode;
	// an error stops SaveNode there as a crash would.
	failpoint func(step string) error
}

func (ks *KeyStore) path(name string) string { return filepath.Join(ks.Dir, name) }

// SaveRootCert stores the root CA certificate.
func (ks *KeyStore) SaveRootCert(certPEM []byte) error {
	if _, err := parseOneCertPEM(certPEM); err != nil {
		return fmt.Errorf("save root CA certificate: %w", err)
	}
	return ks.write(RootCertFile, certPEM, 0o644)
}

// LoadRootCert reads the root CA certificate; the error wraps fs.ErrNotExist
// when there is none.
func (ks *KeyStore) LoadRootCert() ([]byte, error) {
	return ks.read(RootCertFile)
}

// SaveRootKey stores the root CA key. Only the first manager of a cluster
// keeps it on disk, until the key is in the replicated store.
func (ks *KeyStore) SaveRootKey(keyPEM []byte) error {
	if _, err := parsePrivateKeyPEM(keyPEM); err != nil {
		return fmt.Errorf("save root CA key: %w", err)
	}
	return ks.write(RootKeyFile, keyPEM, 0o600)
}

// LoadRootKey reads the root CA key; the error wraps fs.ErrNotExist when
// there is none.
func (ks *KeyStore) LoadRootKey() ([]byte, error) {
	return ks.read(RootKeyFile)
}

// RemoveRootKey deletes the root CA key file; a missing file is no error.
func (ks *KeyStore) RemoveRootKey() error {
	if err := os.Remove(ks.path(RootKeyFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove root CA key: %w", err)
	}
	return atomicfile.SyncDir(ks.Dir)
}

// SaveNode stores the node certificate and its key as a pair (see KeyStore).
// The key file keeps the data key and the lock it had.
func (ks *KeyStore) SaveNode(certPEM, keyPEM []byte) error {
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return fmt.Errorf("save node certificate: %w: %v", ErrMismatchedKeyPair, err)
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if err := ks.ensureState(); err != nil {
		return fmt.Errorf("save node certificate: %w", err)
	}
	keyFileData, err := encodeKeyFile(keyFile{keyPEM: keyPEM, dek: ks.dek}, ks.kek)
	if err != nil {
		return fmt.Errorf("save node certificate: %w", err)
	}
	steps := []struct {
		name string
		do   func() error
	}{
		{"stage key", func() error { return ks.write(NodeKeyFile+stagedSuffix, keyFileData, 0o600) }},
		{"stage cert", func() error { return ks.write(NodeCertFile+stagedSuffix, certPEM, 0o644) }},
		{"rename key", func() error { return ks.promote(NodeKeyFile) }},
		{"rename cert", func() error { return ks.promote(NodeCertFile) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("save node certificate: %s: %w", s.name, err)
		}
		if ks.failpoint != nil {
			if err := ks.failpoint(s.name); err != nil {
				return err
			}
		}
	}
	return nil
}

// LoadNode reads the node certificate and key, finishing a save that a crash
// interrupted. The error wraps fs.ErrNotExist when the node has none, and
// ErrMismatchedKeyPair when no consistent pair is left.
//
// A locked key file needs ks.UnlockKey: the error wraps ErrLocked without
// it, ErrWrongUnlockKey when it does not open the file.
func (ks *KeyStore) LoadNode() (certPEM, keyPEM []byte, err error) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.removeTemps()
	cert, certErr := ks.read(NodeCertFile)
	keyData, keyErr := ks.read(NodeKeyFile)
	stagedCert, _ := ks.read(NodeCertFile + stagedSuffix)
	stagedKeyData, _ := ks.read(NodeKeyFile + stagedSuffix)
	for _, e := range []error{certErr, keyErr} {
		if e != nil && !errors.Is(e, fs.ErrNotExist) {
			return nil, nil, e
		}
	}
	var key, stagedKey []byte
	var kf, stagedKF keyFile
	var decodeErr error
	if keyData != nil {
		if kf, decodeErr = decodeKeyFile(keyData, ks.UnlockKey); decodeErr == nil {
			key = kf.keyPEM
		} else if errors.Is(decodeErr, ErrLocked) || errors.Is(decodeErr, ErrWrongUnlockKey) {
			return nil, nil, fmt.Errorf("node key in %s: %w", ks.Dir, decodeErr)
		}
	}
	if stagedKeyData != nil {
		// A staged key is sealed like the file it replaces; one that does
		// not open is an incomplete save, discarded below.
		if f, err := decodeKeyFile(stagedKeyData, ks.UnlockKey); err == nil {
			stagedKF, stagedKey = f, f.keyPEM
		}
	}
	log := moduleLogger(ks.Log)
	switch {
	case stagedCert != nil && stagedKey != nil && pairs(stagedCert, stagedKey):
		if err := ks.promote(NodeKeyFile); err != nil {
			return nil, nil, err
		}
		if err := ks.promote(NodeCertFile); err != nil {
			return nil, nil, err
		}
		log.Info("finished an interrupted save of the node certificate", "dir", ks.Dir)
		ks.remember(stagedKF)
		return stagedCert, stagedKey, nil
	case stagedCert != nil && key != nil && pairs(stagedCert, key):
		if err := ks.promote(NodeCertFile); err != nil {
			return nil, nil, err
		}
		log.Info("finished an interrupted save of the node certificate", "dir", ks.Dir)
		ks.remember(kf)
		return stagedCert, key, nil
	case cert != nil && key != nil && pairs(cert, key):
		if stagedCert != nil || stagedKeyData != nil {
			ks.removeStaged()
			log.Info("discarded an incomplete save of the node certificate", "dir", ks.Dir)
		}
		ks.remember(kf)
		return cert, key, nil
	case cert == nil && keyData == nil:
		return nil, nil, fmt.Errorf("no node certificate in %s: %w", ks.Dir, fs.ErrNotExist)
	}
	if decodeErr != nil {
		return nil, nil, fmt.Errorf("node key in %s: %w; remove the directory and rejoin the cluster", ks.Dir, decodeErr)
	}
	return nil, nil, fmt.Errorf("%w in %s: remove the directory and rejoin the cluster", ErrMismatchedKeyPair, ks.Dir)
}

// remember records what the node key file holds; ks.mu is held.
func (ks *KeyStore) remember(f keyFile) {
	ks.loaded, ks.dek, ks.kek = true, f.dek, nil
	if f.locked {
		ks.kek = append(UnlockKey(nil), ks.UnlockKey...)
	}
}

// ensureState reads what the node key file holds if LoadNode has not; a
// missing file holds nothing. ks.mu is held.
func (ks *KeyStore) ensureState() error {
	if ks.loaded {
		return nil
	}
	f, err := ks.readKeyFile()
	if errors.Is(err, fs.ErrNotExist) {
		ks.loaded = true
		return nil
	}
	if err != nil {
		return err
	}
	ks.remember(f)
	return nil
}

// readKeyFile reads and opens the node key file with ks.UnlockKey.
func (ks *KeyStore) readKeyFile() (keyFile, error) {
	data, err := ks.read(NodeKeyFile)
	if err != nil {
		return keyFile{}, err
	}
	f, err := decodeKeyFile(data, ks.UnlockKey)
	if err != nil {
		return keyFile{}, fmt.Errorf("node key in %s: %w", ks.Dir, err)
	}
	return f, nil
}

// rewriteKeyFile replaces the node key file with its key, data key dek,
// sealed with kek (nil: in the clear). ks.mu is held.
func (ks *KeyStore) rewriteKeyFile(dek *DataKey, kek UnlockKey) error {
	data, err := ks.read(NodeKeyFile)
	if err != nil {
		return err
	}
	f, err := decodeKeyFile(data, ks.kek)
	if err != nil {
		return fmt.Errorf("node key in %s: %w", ks.Dir, err)
	}
	f.dek = dek
	out, err := encodeKeyFile(f, kek)
	if err != nil {
		return err
	}
	if err := ks.write(NodeKeyFile, out, 0o600); err != nil {
		return err
	}
	ks.dek, ks.kek = dek, nil
	if kek != nil {
		ks.kek = append(UnlockKey(nil), kek...)
	}
	ks.UnlockKey = ks.kek
	return nil
}

// DataKey returns the raft data key kept with the node key, creating it
// (and rewriting the key file, under its lock) if the node has none yet.
// Only managers have one.
func (ks *KeyStore) DataKey() (*DataKey, error) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if err := ks.ensureState(); err != nil {
		return nil, err
	}
	if ks.dek == nil {
		if err := ks.rewriteKeyFile(newDataKey(1), ks.kek); err != nil {
			return nil, fmt.Errorf("store a new raft data key: %w", err)
		}
		moduleLogger(ks.Log).Info("created this manager's raft data key", "dir", ks.Dir)
	}
	return &DataKey{ID: ks.dek.ID, Key: append([]byte(nil), ks.dek.Key...), LogEncrypted: ks.dek.LogEncrypted}, nil
}

// MarkLogEncrypted records with the data key that the raft log is encrypted
// with it (see DataKey.LogEncrypted). It does nothing the second time.
func (ks *KeyStore) MarkLogEncrypted() error {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if err := ks.ensureState(); err != nil {
		return err
	}
	if ks.dek == nil {
		return errors.New("no raft data key to mark")
	}
	if ks.dek.LogEncrypted {
		return nil
	}
	dek := *ks.dek
	dek.LogEncrypted = true
	if err := ks.rewriteKeyFile(&dek, ks.kek); err != nil {
		return fmt.Errorf("record that the raft log is encrypted: %w", err)
	}
	return nil
}

// Lock seals the node key file (and the data key in it) with unlock key k,
// or stores it in the clear when k is nil. It reports whether the file
// changed: locking again with the key in use does nothing.
func (ks *KeyStore) Lock(k UnlockKey) (changed bool, err error) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if err := ks.ensureState(); err != nil {
		return false, err
	}
	if (k == nil && ks.kek == nil) || (k != nil && ks.kek != nil && k.Equal(ks.kek)) {
		return false, nil
	}
	if err := ks.rewriteKeyFile(ks.dek, k); err != nil {
		if k == nil {
			return false, fmt.Errorf("unlock the node key: %w", err)
		}
		return false, fmt.Errorf("lock the node key: %w", err)
	}
	return true, nil
}

// Locked reports whether the node key file is sealed with an unlock key.
func (ks *KeyStore) Locked() bool {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.kek != nil
}

func pairs(certPEM, keyPEM []byte) bool {
	_, err := tls.X509KeyPair(certPEM, keyPEM)
	return err == nil
}

func (ks *KeyStore) read(name string) ([]byte, error) {
	b, err := os.ReadFile(ks.path(name))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return b, nil
}

// promote renames name+".new" to name.
func (ks *KeyStore) promote(name string) error {
	if err := os.Rename(ks.path(name+stagedSuffix), ks.path(name)); err != nil {
		return err
	}
	return atomicfile.SyncDir(ks.Dir)
}

func (ks *KeyStore) removeStaged() {
	for _, name := range []string{NodeKeyFile + stagedSuffix, NodeCertFile + stagedSuffix} {
		_ = os.Remove(ks.path(name))
	}
	_ = atomicfile.SyncDir(ks.Dir)
}

// removeTemps deletes temporary files left by a crash inside write.
func (ks *KeyStore) removeTemps() {
	entries, err := os.ReadDir(ks.Dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if atomicfile.IsTemp(e.Name()) {
			_ = os.Remove(ks.path(e.Name()))
		}
	}
}

// write replaces name with data atomically and durably.
func (ks *KeyStore) write(name string, data []byte, perm fs.FileMode) error {
	if err := os.MkdirAll(ks.Dir, 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(ks.path(name), data, perm)
}
