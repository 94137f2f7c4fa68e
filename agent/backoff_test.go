package agent

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestBackoffIsFullyJitteredAndCapped(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for _, attempt := range []int{0, 1, 2, 3, 5, 6, 7, 10, 40, 1000, -1} {
		window := maxBackoff
		if attempt >= 0 && attempt < 7 {
			window = baseBackoff << attempt // 100ms .. 6.4s
		}
		var ds []time.Duration
		for range 1000 {
			d := backoff(attempt, rnd)
			if d < 0 || d >= window {
				t.Fatalf("backoff(%d) = %s, want in [0, %s)", attempt, d, window)
			}
			ds = append(ds, d)
		}
		slices.Sort(ds)
		// Full jitter: the waits cover the whole window, not a band at its edge.
		if ds[0] > window/10 || ds[len(ds)-1] < window*9/10 {
			t.Errorf("backoff(%d) spans [%s, %s], want nearly [0, %s)", attempt, ds[0], ds[len(ds)-1], window)
		}
	}
}

func TestBackoffIsDeterministicForASeed(t *testing.T) {
	a, b := rand.New(rand.NewPCG(7, 7)), rand.New(rand.NewPCG(7, 7))
	for attempt := range 20 {
		if x, y := backoff(attempt, a), backoff(attempt, b); x != y {
			t.Fatalf("attempt %d: %s and %s from the same seed", attempt, x, y)
		}
	}
}

func TestHeartbeatWaitIsAJitteredFraction(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	const period = 5 * time.Second
	lo, hi := period, time.Duration(0)
	for range 1000 {
		d := heartbeatWait(period, rnd)
		if d < period*3/4 || d >= period {
			t.Fatalf("heartbeatWait(%s) = %s, want in [%s, %s)", period, d, period*3/4, period)
		}
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo > period*76/100 || hi < period*99/100 {
		t.Errorf("waits span [%s, %s], want nearly [0.75, 1.0) x %s", lo, hi, period)
	}
}
