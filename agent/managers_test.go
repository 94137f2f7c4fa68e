package agent

import (
	"slices"
	"testing"

	"github.com/flotilla/flotilla/api"
)

func picks(l *managerList, n int) []string {
	var out []string
	for range n {
		out = append(out, l.pick())
	}
	return out
}

func TestManagerListPicksRoundRobinAndPrefersTheLatestList(t *testing.T) {
	l := newManagerList([]string{"seed1", "", "seed2", "seed1"})
	if got, want := picks(l, 3), []string{"seed1", "seed2", "seed1"}; !slices.Equal(got, want) {
		t.Errorf("picks from the seeds = %v, want %v", got, want)
	}

	// A list from a manager starts from its head (the leader); configured
	// addresses not in it stay at the end as a last resort.
	l.update([]*api.WeightedPeer{{Addr: "leader"}, {Addr: "seed2"}, {Addr: "follower"}})
	if got, want := picks(l, 5), []string{"leader", "seed2", "follower", "seed1", "leader"}; !slices.Equal(got, want) {
		t.Errorf("picks after an update = %v, want %v", got, want)
	}

	// An empty list (a manager that does not know its peers) changes nothing.
	l.update(nil)
	if got, want := picks(l, 1), []string{"seed2"}; !slices.Equal(got, want) {
		t.Errorf("pick after an empty update = %v, want %v", got, want)
	}
}
