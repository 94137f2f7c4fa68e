// Package storetest makes stores for tests of components that use the store:
// proposals are committed at once, in order, like a one-member raft log
// without a disk (the raft package has its own tests).
package storetest

import (
	"context"
	"sync"

	"github.com/flotilla/flotilla/manager/store"
)

// Proposer commits every proposal at once into its store.
type Proposer struct {
	mu    sync.Mutex
	index uint64
	s     *store.MemoryStore
	// Proposals counts the proposals made.
	Proposals int
}

// Propose applies data as the next log entry.
func (p *Proposer) Propose(_ context.Context, data []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.index++
	p.Proposals++
	return p.s.Apply(p.index, data)
}

// New returns an empty store backed by an in-memory log.
func New() (*store.MemoryStore, *Proposer) {
	p := &Proposer{}
	s := store.New(p)
	p.s = s
	return s, p
}
