package agent

import (
	"slices"

	"github.com/flotilla/flotilla/api"
)

// managerList chooses the manager to connect to. Candidates are the latest
// list a manager sent (leader first), followed by the configured addresses
// not in it, as a last resort if every listed manager moved away. Picks go
// round robin; a new list restarts from its head, so the next session goes
// straight to the leader rather than through a follower that forwards it.
// Weights are not used: the dispatcher's order already says which manager
// to prefer.
//
// Only the agent's Run goroutine uses it.
type managerList struct {
	seeds []string
	addrs []string
	next  int
}

func newManagerList(seeds []string) *managerList {
	l := &managerList{seeds: dedupe(seeds)}
	l.addrs = l.seeds
	return l
}

// pick returns the next address to try.
func (l *managerList) pick() string {
	addr := l.addrs[l.next%len(l.addrs)]
	l.next = (l.next + 1) % len(l.addrs)
	return addr
}

// update replaces the list with what a manager sent; an empty list (a
// manager that does not know its peers) keeps the current one.
func (l *managerList) update(peers []*api.WeightedPeer) {
	var addrs []string
	for _, p := range peers {
		addrs = append(addrs, p.GetAddr())
	}
	addrs = dedupe(addrs)
	if len(addrs) == 0 {
		return
	}
	for _, s := range l.seeds {
		if !slices.Contains(addrs, s) {
			addrs = append(addrs, s)
		}
	}
	l.addrs, l.next = addrs, 0
}

// prefer makes addr the next pick (a manager said the leader is there),
// adding it to the candidates if it is new.
func (l *managerList) prefer(addr string) {
	i := slices.Index(l.addrs, addr)
	if i < 0 {
		l.addrs = append(slices.Clone(l.addrs), addr)
		i = len(l.addrs) - 1
	}
	l.next = i
}

// all is the current candidate list, for logs.
func (l *managerList) all() []string { return slices.Clone(l.addrs) }

func dedupe(addrs []string) []string {
	var out []string
	for _, a := range addrs {
		if a != "" && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}
