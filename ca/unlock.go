package ca

import (
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/chacha20poly1305"
)

// Autolock. A manager's node key file (NodeKeyFile) also holds its raft data key (DataKey). With
// autolock off the file is a plain PEM key whose headers carry the data key. With autolock on the
// whole of that plain file is sealed under a key-encryption key (KEK) derived from the cluster's
// unlock key:
//
//	KEK  = HKDF-SHA256(unlock key, salt = 16 random bytes, info = "flotilla node key file v1")
//	file = PEM "FLOTILLA LOCKED KEY" {salt: base64} of nonce | XChaCha20-Poly1305(KEK, plain file)
//
// One file holds both keys, so locking, unlocking or re-keying is one atomic rename: a crash
// leaves the file under the old unlock key or under the new one, never the two keys apart.

// UnlockKeyPrefix starts every unlock key in its printed form.
const UnlockKeyPrefix = "SWMKEY-1-"

// UnlockKeySize is the length of an unlock key's secret.
const UnlockKeySize = 32

// UnlockKey is the secret that opens a locked manager's keys.
type UnlockKey []byte

// GenerateUnlockKey returns a new random unlock key.
func GenerateUnlockKey() UnlockKey {
	k := make(UnlockKey, UnlockKeySize)
	_, _ = rand.Read(k) // crypto/rand never fails; it panics instead
	return k
}

// String is the printed form, SWMKEY-1-<base64>.
func (k UnlockKey) String() string {
	return UnlockKeyPrefix + base64.RawStdEncoding.EncodeToString(k)
}

// Equal reports whether k and o are the same key, in constant time.
func (k UnlockKey) Equal(o UnlockKey) bool {
	return len(k) == len(o) && subtle.ConstantTimeCompare(k, o) == 1
}

// ErrBadUnlockKey is wrapped by ParseUnlockKey's errors.
var ErrBadUnlockKey = errors.New("not an unlock key")

// ParseUnlockKey reads the printed form of an unlock key.
func ParseUnlockKey(s string) (UnlockKey, error) {
	s = strings.TrimSpace(s)
	b64, ok := strings.CutPrefix(s, UnlockKeyPrefix)
	if !ok {
		return nil, fmt.Errorf("%w: it starts with %s (as printed by swarmctl cluster unlock-key)", ErrBadUnlockKey, UnlockKeyPrefix)
	}
	k, err := base64.RawStdEncoding.DecodeString(b64)
	if err != nil || len(k) != UnlockKeySize {
		return nil, fmt.Errorf("%w: %s must be followed by %d base64 characters (as printed by swarmctl cluster unlock-key)",
			ErrBadUnlockKey, UnlockKeyPrefix, base64.RawStdEncoding.EncodedLen(UnlockKeySize))
	}
	return k, nil
}

// ErrLocked: the node key file is locked and no unlock key was given.
var ErrLocked = errors.New("the node key is locked by autolock and no unlock key was given")

// ErrWrongUnlockKey: the unlock key given does not open the node key file.
var ErrWrongUnlockKey = errors.New("the unlock key does not open the node key")

// DataKey is a manager's raft data encryption key (DEK), kept in its node key file.
type DataKey struct {
	ID  uint32
	Key []byte
	// LogEncrypted records that the manager's raft log has been opened
	// encrypted with this key (KeyStore.MarkLogEncrypted): from then on a
	// plaintext log in its place is refused, not encrypted.
	LogEncrypted bool
}

// DataKeySize is the length of DataKey.Key.
const DataKeySize = 32

func newDataKey(id uint32) *DataKey {
	k := &DataKey{ID: id, Key: make([]byte, DataKeySize)}
	_, _ = rand.Read(k.Key)
	return k
}

const (
	lockedKeyType  = "FLOTILLA LOCKED KEY"
	hdrSalt        = "salt"
	hdrDataKey     = "raft-dek"
	hdrDataKeyID   = "raft-dek-id"
	hdrLogEnc      = "raft-log-encrypted"
	kekInfo        = "flotilla node key file v1"
	lockedKeyAD    = "flotilla locked key: " + NodeKeyFile
	kekSaltSize    = 16
	maxKeyFileSize = 64 << 10
)

// keyFile is the content of a node key file.
type keyFile struct {
	keyPEM []byte   // the TLS private key, a PEM block without headers
	dek    *DataKey // nil when the node has none (workers)
	locked bool     // the file was sealed with an unlock key
}

// encodeKeyFile is the file for f, sealed with kek when kek is set.
func encodeKeyFile(f keyFile, kek UnlockKey) ([]byte, error) {
	block, _ := pem.Decode(f.keyPEM)
	if block == nil {
		return nil, errors.New("node key is not PEM")
	}
	plain := &pem.Block{Type: block.Type, Bytes: block.Bytes}
	if f.dek != nil {
		plain.Headers = map[string]string{
			hdrDataKey:   base64.StdEncoding.EncodeToString(f.dek.Key),
			hdrDataKeyID: strconv.FormatUint(uint64(f.dek.ID), 10),
		}
		if f.dek.LogEncrypted {
			plain.Headers[hdrLogEnc] = "true"
		}
	}
	clear := pem.EncodeToMemory(plain)
	if kek == nil {
		return clear, nil
	}
	salt := make([]byte, kekSaltSize)
	_, _ = rand.Read(salt)
	aead, err := kekAEAD(kek, salt)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(clear)+aead.Overhead())
	_, _ = rand.Read(nonce)
	sealed := aead.Seal(nonce, nonce, clear, []byte(lockedKeyAD))
	return pem.EncodeToMemory(&pem.Block{
		Type:    lockedKeyType,
		Headers: map[string]string{hdrSalt: base64.StdEncoding.EncodeToString(salt)},
		Bytes:   sealed,
	}), nil
}

func kekAEAD(kek UnlockKey, salt []byte) (cipher.AEAD, error) {
	if len(kek) != UnlockKeySize {
		return nil, fmt.Errorf("%w: wrong length", ErrBadUnlockKey)
	}
	k, err := hkdf.Key(sha256.New, kek, salt, kekInfo, chacha20poly1305.KeySize)
	if err != nil {
		return nil, err
	}
	return chacha20poly1305.NewX(k)
}

// decodeKeyFile reads a node key file, opening it with kek when it is locked. It fails with
// ErrLocked when the file is locked and kek is nil, ErrWrongUnlockKey when kek does not open it.
func decodeKeyFile(data []byte, kek UnlockKey) (keyFile, error) {
	if len(data) > maxKeyFileSize {
		return keyFile{}, fmt.Errorf("node key file is %d bytes: not a key", len(data))
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return keyFile{}, errors.New("node key file holds no PEM block")
	}
	locked := block.Type == lockedKeyType
	if locked {
		if kek == nil {
			return keyFile{}, ErrLocked
		}
		salt, err := base64.StdEncoding.DecodeString(block.Headers[hdrSalt])
		if err != nil || len(salt) != kekSaltSize {
			return keyFile{}, errors.New("locked node key file has a damaged salt header")
		}
		aead, err := kekAEAD(kek, salt)
		if err != nil {
			return keyFile{}, err
		}
		if len(block.Bytes) < aead.NonceSize()+aead.Overhead() {
			return keyFile{}, errors.New("locked node key file is truncated")
		}
		ns := aead.NonceSize()
		clear, err := aead.Open(nil, block.Bytes[:ns], block.Bytes[ns:], []byte(lockedKeyAD))
		if err != nil {
			return keyFile{}, ErrWrongUnlockKey
		}
		if block, _ = pem.Decode(clear); block == nil || block.Type == lockedKeyType {
			return keyFile{}, errors.New("locked node key file holds no key")
		}
	}
	f := keyFile{keyPEM: pem.EncodeToMemory(&pem.Block{Type: block.Type, Bytes: block.Bytes}), locked: locked}
	if enc, ok := block.Headers[hdrDataKey]; ok {
		key, err := base64.StdEncoding.DecodeString(enc)
		id, idErr := strconv.ParseUint(block.Headers[hdrDataKeyID], 10, 32)
		if err != nil || len(key) != DataKeySize || idErr != nil || id == 0 {
			return keyFile{}, errors.New("node key file has a damaged raft data key header")
		}
		f.dek = &DataKey{ID: uint32(id), Key: key, LogEncrypted: block.Headers[hdrLogEnc] == "true"}
	}
	return f, nil
}
