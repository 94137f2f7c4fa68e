package dispatcher_test

import (
	"context"
	"testing"
	"time"

	"github.com/gogo/protobuf/types"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/dispatcher"
	"github.com/flotilla/flotilla/manager/store"
)

func fired(t dispatcher.Timer) bool {
	select {
	case <-t.C():
		return true
	default:
		return false
	}
}

func TestFakeClockFiresTimersWhenTimePasses(t *testing.T) {
	c := dispatcher.NewFakeClock(start)
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

// TestRealClockMarksSilentNodeDown runs the dispatcher on the real clock
// with a short heartbeat period.
func TestRealClockMarksSilentNodeDown(t *testing.T) {
	h := newHarness(t, withRealClock())
	err := h.store.Update(context.Background(), func(tx store.Tx) error {
		cs, err := store.Find[*api.Cluster](tx, store.All())
		if err != nil {
			return err
		}
		cs[0].Spec.Dispatcher.HeartbeatPeriod = types.DurationProto(20 * time.Millisecond)
		if err := tx.Update(cs[0]); err != nil {
			return err
		}
		return tx.Create(&api.Node{ID: "n1"})
	})
	if err != nil {
		t.Fatal(err)
	}
	h.run(t)
	began := time.Now()
	s := h.open(t, "n1", nil)
	if p, err := h.heartbeat("n1", s.id); err != nil || p != 20*time.Millisecond {
		t.Fatalf("heartbeat: %v %v", p, err)
	}
	waitFor(t, "n1 DOWN", func() bool { return h.state(t, "n1") == api.NodeStatusDown })
	if el := time.Since(began); el < 60*time.Millisecond {
		t.Fatalf("marked DOWN after %v, before 3 periods", el)
	}
}
