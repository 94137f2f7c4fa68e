package dispatcher_test

import (
	"context"
	"testing"
	"time"

	"github.com/gogo/protobuf/types"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/store"
)

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
