package dispatcher

import (
	"time"

	"github.com/flotilla/flotilla/clock"
)

// The dispatcher's time source; see package clock.
type (
	Clock     = clock.Clock
	Timer     = clock.Timer
	FakeClock = clock.Fake
)

// RealClock is the wall clock.
func RealClock() Clock { return clock.Real() }

// NewFakeClock returns a fake clock for tests that reads start.
func NewFakeClock(start time.Time) *FakeClock { return clock.NewFake(start) }
