package raft

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"

	"go.etcd.io/raft/v3/raftpb"
	"golang.org/x/crypto/chacha20poly1305"
)

// Encryption at rest. When Config.DataKey is set, the Data of every log entry and of every
// snapshot is sealed on its way to disk and opened on its way back; memory, raft itself and
// the transport only ever see plaintext. Index, term, entry type, HardState and snapshot
// metadata (membership) stay in the clear: etcd's WAL needs them and they say nothing about
// the cluster's contents.
//
// A sealed record is
//
//	magic (2 bytes: F1 0E) | algorithm (1 byte) | key ID (4 bytes, big endian) | nonce | ciphertext+tag
//
// The algorithm is XChaCha20-Poly1305 (algXChaCha20Poly1305): its 192-bit random nonces never
// repeat in practice however many records one key seals, which AES-GCM's 96-bit ones cannot
// promise for a long-lived log. The additional data binds a record to its place in the log (entry
// type, index and term; a snapshot's index and term), so a record moved, replayed or swapped
// with another one fails to open like a modified one. The key ID names the DataKey that sealed
// a record, so a key can be rotated while older records are still on disk.

// DataKey is the data encryption key (DEK) a member's log and snapshots are sealed with.
type DataKey struct {
	// ID names the key in every record it seals.
	ID uint32
	// Key is 32 random bytes (DataKeySize).
	Key []byte
	// LogEncrypted says the member's log is known to be encrypted already: a plaintext log found
	// in its place was put there by someone else and is refused, not encrypted.
	LogEncrypted bool
}

// DataKeySize is the length of DataKey.Key.
const DataKeySize = chacha20poly1305.KeySize

const (
	algXChaCha20Poly1305 = 1
	recordHeaderSize     = 2 + 1 + 4
	recordOverhead       = recordHeaderSize + chacha20poly1305.NonceSizeX + chacha20poly1305.Overhead
)

var recordMagic = [2]byte{0xF1, 0x0E}

// ErrDecrypt is wrapped by every failure to open a sealed record: a wrong or missing key, or data
// changed on disk.
var ErrDecrypt = errors.New("raft: cannot decrypt")

// DecryptError says which record of the log could not be opened, and why.
type DecryptError struct {
	Dir    string // the member's data directory
	Record string // e.g. "entry 42 (term 3)" or "snapshot at index 1000"
	Err    error
}

func (e *DecryptError) Error() string {
	return fmt.Sprintf("raft: %s in %s cannot be decrypted: %v; the log was written with another data key or was changed on disk: "+
		"restore the state dir (its certificates/ and raft/ together) from a backup, or replace this member", e.Record, e.Dir, e.Err)
}

func (e *DecryptError) Unwrap() error { return ErrDecrypt }

// sealer seals records with one DataKey and opens records sealed with it.
type sealer struct {
	id   uint32
	aead cipher.AEAD
}

func newSealer(k *DataKey) (*sealer, error) {
	if len(k.Key) != DataKeySize {
		return nil, fmt.Errorf("raft: data key %d is %d bytes, want %d", k.ID, len(k.Key), DataKeySize)
	}
	aead, err := chacha20poly1305.NewX(k.Key)
	if err != nil {
		return nil, fmt.Errorf("raft: data key %d: %w", k.ID, err)
	}
	return &sealer{id: k.ID, aead: aead}, nil
}

// isSealed reports whether b is framed as a sealed record.
func isSealed(b []byte) bool {
	return len(b) >= recordHeaderSize && b[0] == recordMagic[0] && b[1] == recordMagic[1]
}

func (s *sealer) seal(plain, ad []byte) []byte {
	ns := s.aead.NonceSize()
	out := make([]byte, recordHeaderSize+ns, recordHeaderSize+ns+len(plain)+s.aead.Overhead())
	out[0], out[1], out[2] = recordMagic[0], recordMagic[1], algXChaCha20Poly1305
	binary.BigEndian.PutUint32(out[3:7], s.id)
	nonce := out[recordHeaderSize:]
	_, _ = rand.Read(nonce) // crypto/rand never fails; it panics instead
	return s.aead.Seal(out, nonce, plain, ad)
}

func (s *sealer) open(rec, ad []byte) ([]byte, error) {
	if !isSealed(rec) {
		return nil, errors.New("the record is not encrypted, but this log only holds encrypted records")
	}
	if rec[2] != algXChaCha20Poly1305 {
		return nil, fmt.Errorf("unknown encryption algorithm %d", rec[2])
	}
	if id := binary.BigEndian.Uint32(rec[3:7]); id != s.id {
		return nil, fmt.Errorf("sealed with data key %d, but this member has key %d", id, s.id)
	}
	ns := s.aead.NonceSize()
	if len(rec) < recordHeaderSize+ns+s.aead.Overhead() {
		return nil, errors.New("the record is truncated")
	}
	plain, err := s.aead.Open(nil, rec[recordHeaderSize:recordHeaderSize+ns], rec[recordHeaderSize+ns:], ad)
	if err != nil {
		return nil, errors.New("authentication failed (wrong data key, or the record was modified)")
	}
	if plain == nil {
		plain = []byte{}
	}
	return plain, nil
}

func entryAD(e *raftpb.Entry) []byte {
	b := make([]byte, 0, 32)
	b = append(b, "flotilla raft entry"...)
	b = append(b, byte(e.Type))
	b = binary.BigEndian.AppendUint64(b, e.Index)
	return binary.BigEndian.AppendUint64(b, e.Term)
}

func snapshotAD(md *raftpb.SnapshotMetadata) []byte {
	b := make([]byte, 0, 40)
	b = append(b, "flotilla raft snapshot"...)
	b = binary.BigEndian.AppendUint64(b, md.Index)
	return binary.BigEndian.AppendUint64(b, md.Term)
}

// sealEntries returns copies of ents whose Data is sealed. Empty entries are sealed too, so an
// entry cannot be blanked on disk unnoticed.
func (s *sealer) sealEntries(ents []raftpb.Entry) []raftpb.Entry {
	out := make([]raftpb.Entry, len(ents))
	for i := range ents {
		out[i] = ents[i]
		out[i].Data = s.seal(ents[i].Data, entryAD(&ents[i]))
	}
	return out
}

// openEntries opens the Data of ents in place.
func (s *sealer) openEntries(dir string, ents []raftpb.Entry) error {
	for i := range ents {
		e := &ents[i]
		plain, err := s.open(e.Data, entryAD(e))
		if err != nil {
			return &DecryptError{Dir: dir, Record: fmt.Sprintf("log entry %d (term %d)", e.Index, e.Term), Err: err}
		}
		e.Data = plain
	}
	return nil
}

// sealSnapshot returns a copy of sn whose Data is sealed.
func (s *sealer) sealSnapshot(sn raftpb.Snapshot) raftpb.Snapshot {
	sn.Data = s.seal(sn.Data, snapshotAD(&sn.Metadata))
	return sn
}

// openSnapshot opens sn.Data in place.
func (s *sealer) openSnapshot(dir string, sn *raftpb.Snapshot) error {
	plain, err := s.open(sn.Data, snapshotAD(&sn.Metadata))
	if err != nil {
		return &DecryptError{Dir: dir, Record: fmt.Sprintf("snapshot at index %d (term %d)", sn.Metadata.Index, sn.Metadata.Term), Err: err}
	}
	sn.Data = plain
	return nil
}
