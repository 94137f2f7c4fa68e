package raft

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
)

// envelopeVersion is the first byte of every normal entry this package writes. A committed entry
// whose envelope cannot be decoded stops the node: applying it blindly could diverge the state.
const envelopeVersion = 1

var errBadEnvelope = errors.New("raft: committed entry has an unknown envelope")

// encodeEnvelope wraps a payload as [version][uvarint proposer ID][uvarint request ID][payload], so
// the node that proposed it can match the committed entry to the waiting Propose call.
func encodeEnvelope(proposer, reqID uint64, payload []byte) []byte {
	b := make([]byte, 0, 1+2*binary.MaxVarintLen64+len(payload))
	b = append(b, envelopeVersion)
	b = binary.AppendUvarint(b, proposer)
	b = binary.AppendUvarint(b, reqID)
	return append(b, payload...)
}

func decodeEnvelope(b []byte) (proposer, reqID uint64, payload []byte, err error) {
	if len(b) == 0 || b[0] != envelopeVersion {
		return 0, 0, nil, errBadEnvelope
	}
	b = b[1:]
	proposer, n := binary.Uvarint(b)
	if n <= 0 {
		return 0, 0, nil, errBadEnvelope
	}
	b = b[n:]
	reqID, n = binary.Uvarint(b)
	if n <= 0 {
		return 0, 0, nil, errBadEnvelope
	}
	return proposer, reqID, b[n:], nil
}

// proposal is one Propose call on its way to the Run loop.
type proposal struct {
	id   uint64
	data []byte // envelope
}

// requestIDs hands out proposal IDs: a random 64-bit base chosen at New plus a counter, so IDs of
// entries written before a restart (replayed from the log) never match a waiter of this process.
type requestIDs struct{ next atomic.Uint64 }

func newRequestIDs() *requestIDs {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics rather than return an error)
	r := &requestIDs{}
	r.next.Store(binary.LittleEndian.Uint64(b[:]))
	return r
}

func (r *requestIDs) new() uint64 { return r.next.Add(1) }

// waiters holds the Propose calls waiting for their entry to be applied, by request ID.
type waiters struct {
	mu sync.Mutex
	m  map[uint64]chan error
}

func newWaiters() *waiters { return &waiters{m: make(map[uint64]chan error)} }

func (w *waiters) register(id uint64) <-chan error {
	ch := make(chan error, 1)
	w.mu.Lock()
	w.m[id] = ch
	w.mu.Unlock()
	return ch
}

func (w *waiters) cancel(id uint64) {
	w.mu.Lock()
	delete(w.m, id)
	w.mu.Unlock()
}

// pending reports whether someone still waits for request id.
func (w *waiters) pending(id uint64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.m[id]
	return ok
}

// trigger delivers the outcome of request id, if someone still waits for it.
func (w *waiters) trigger(id uint64, err error) {
	w.mu.Lock()
	ch, ok := w.m[id]
	delete(w.m, id)
	w.mu.Unlock()
	if ok {
		ch <- err
	}
}

// failAll delivers err to every waiter.
func (w *waiters) failAll(err error) {
	w.mu.Lock()
	m := w.m
	w.m = make(map[uint64]chan error)
	w.mu.Unlock()
	for _, ch := range m {
		ch <- err
	}
}

// watch is a value written by the Run loop and observed by others: Get returns the value and a
// channel closed at the next Set, so a watcher never misses a change.
type watch[T any] struct {
	mu      sync.Mutex
	val     T
	changed chan struct{}
}

func (w *watch[T]) Get() (T, <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.changed == nil {
		w.changed = make(chan struct{})
	}
	return w.val, w.changed
}

func (w *watch[T]) Load() T {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.val
}

func (w *watch[T]) Set(v T) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.val = v
	if w.changed != nil {
		close(w.changed)
		w.changed = nil
	}
}
