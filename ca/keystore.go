package ca

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// File names in a KeyStore directory.
const (
	RootCertFile = "swarm-root-ca.crt"
	RootKeyFile  = "swarm-root-ca.key"
	NodeCertFile = "swarm-node.crt"
	NodeKeyFile  = "swarm-node.key"

	stagedSuffix = ".new"
	tmpMarker    = ".tmp-"
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
type KeyStore struct {
	Dir string
	// Log receives notes on recovered saves; nil means slog.Default().
	Log *slog.Logger

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
	return syncDir(ks.Dir)
}

// SaveNode stores the node certificate and its key as a pair (see KeyStore).
func (ks *KeyStore) SaveNode(certPEM, keyPEM []byte) error {
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return fmt.Errorf("save node certificate: %w: %v", ErrMismatchedKeyPair, err)
	}
	steps := []struct {
		name string
		do   func() error
	}{
		{"stage key", func() error { return ks.write(NodeKeyFile+stagedSuffix, keyPEM, 0o600) }},
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
func (ks *KeyStore) LoadNode() (certPEM, keyPEM []byte, err error) {
	ks.removeTemps()
	cert, certErr := ks.read(NodeCertFile)
	key, keyErr := ks.read(NodeKeyFile)
	stagedCert, _ := ks.read(NodeCertFile + stagedSuffix)
	stagedKey, _ := ks.read(NodeKeyFile + stagedSuffix)
	for _, e := range []error{certErr, keyErr} {
		if e != nil && !errors.Is(e, fs.ErrNotExist) {
			return nil, nil, e
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
		return stagedCert, stagedKey, nil
	case stagedCert != nil && key != nil && pairs(stagedCert, key):
		if err := ks.promote(NodeCertFile); err != nil {
			return nil, nil, err
		}
		log.Info("finished an interrupted save of the node certificate", "dir", ks.Dir)
		return stagedCert, key, nil
	case cert != nil && key != nil && pairs(cert, key):
		if stagedCert != nil || stagedKey != nil {
			ks.removeStaged()
			log.Info("discarded an incomplete save of the node certificate", "dir", ks.Dir)
		}
		return cert, key, nil
	case cert == nil && key == nil:
		return nil, nil, fmt.Errorf("no node certificate in %s: %w", ks.Dir, fs.ErrNotExist)
	}
	return nil, nil, fmt.Errorf("%w in %s: remove the directory and rejoin the cluster", ErrMismatchedKeyPair, ks.Dir)
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
	return syncDir(ks.Dir)
}

func (ks *KeyStore) removeStaged() {
	for _, name := range []string{NodeKeyFile + stagedSuffix, NodeCertFile + stagedSuffix} {
		_ = os.Remove(ks.path(name))
	}
	_ = syncDir(ks.Dir)
}

// removeTemps deletes temporary files left by a crash inside write.
func (ks *KeyStore) removeTemps() {
	entries, err := os.ReadDir(ks.Dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") && strings.Contains(e.Name(), tmpMarker) {
			_ = os.Remove(ks.path(e.Name()))
		}
	}
}

// write replaces name with data atomically and durably.
func (ks *KeyStore) write(name string, data []byte, perm fs.FileMode) error {
	if err := os.MkdirAll(ks.Dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(ks.Dir, "."+name+tmpMarker+"*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Chmod(perm); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := os.Rename(tmp, ks.path(name)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	return syncDir(ks.Dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
