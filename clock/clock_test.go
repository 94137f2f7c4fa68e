package clock_test

import (
	"testing"
	"time"

	"github.com/flotilla/flotilla/clock"
)

var start = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func fired(t clock.Timer) bool {
	select {
	case <-t.C():
		return true
	default:
		return false
	}
}

func TestFakeClockFiresTimersWhenTimePasses(t *testing.T) {
	c := clock.NewFake(start)
	a := c.NewTimer(2 * time.Second)
	b := c.TimerAt(start.Add(time.Second))
	stopped := c.NewTimer(time.Second)
	past := c.TimerAt(start.Add(-time.Second))
	if !fired(past) {
		t.Fatal("a timer for a time already passed did not fire at once")
	}
	if !stopped.Stop() || c.Timers() != 2 {
		t.Fatalf("Stop: %d timers left, want 2", c.Timers())
	}
	c.Advance(999 * time.Millisecond)
	if fired(a) || fired(b) {
		t.Fatal("a timer fired early")
	}
	c.Advance(time.Millisecond)
	if !fired(b) || fired(a) || fired(stopped) {
		t.Fatal("after 1s: want only the 1s timer fired")
	}
	c.Set(start) // never backwards
	if !c.Now().Equal(start.Add(time.Second)) {
		t.Fatalf("Set moved the clock back to %v", c.Now())
	}
	c.Set(start.Add(time.Hour))
	if !fired(a) || c.Timers() != 0 || a.Stop() {
		t.Fatal("after 1h: the 2s timer should have fired and be gone")
	}
}
