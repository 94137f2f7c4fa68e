package orchestrator

import (
	"sort"
	"sync"
	"time"
)

// Clock is the loops' time source (restart delays, retry backoff).
// Deadlines are absolute, so reading Now and then arming a timer cannot miss
// one. dispatcher.Clock has the same shape; both can move to one package.
type Clock interface {
	Now() time.Time
	// TimerAt returns a timer that fires once the clock reaches t (at once
	// if it already has).
	TimerAt(t time.Time) Timer
}

// Timer fires once, on C.
type Timer interface {
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it did so.
	Stop() bool
}

// RealClock is the wall clock.
func RealClock() Clock { return realClock{} }

type realClock struct{}

func (realClock) Now() time.Time            { return time.Now() }
func (realClock) TimerAt(t time.Time) Timer { return realTimer{time.NewTimer(time.Until(t))} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.t.C }
func (t realTimer) Stop() bool          { return t.t.Stop() }

// FakeClock is a Clock for tests: time stands still until Advance moves it,
// and timers fire (in deadline order) when it passes their deadline. It is
// safe for concurrent use.
type FakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

// NewFakeClock returns a fake clock that reads start.
func NewFakeClock(start time.Time) *FakeClock { return &FakeClock{now: start} }

// Now returns the fake time.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d and fires the timers that are due.
func (c *FakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	sort.SliceStable(c.timers, func(i, j int) bool { return c.timers[i].at.Before(c.timers[j].at) })
	keep := c.timers[:0]
	for _, ft := range c.timers {
		if ft.at.After(c.now) {
			keep = append(keep, ft)
			continue
		}
		ft.ch <- ft.at
	}
	clear(c.timers[len(keep):])
	c.timers = keep
}

// Timers is the number of timers waiting to fire.
func (c *FakeClock) Timers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// TimerAt returns a timer that fires when the clock reaches t.
func (c *FakeClock) TimerAt(t time.Time) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	ft := &fakeTimer{c: c, at: t, ch: make(chan time.Time, 1)}
	if !t.After(c.now) {
		ft.ch <- c.now
		return ft
	}
	c.timers = append(c.timers, ft)
	return ft
}

type fakeTimer struct {
	c  *FakeClock
	at time.Time
	// ch has room for the one value it ever gets, so firing never blocks.
	ch chan time.Time
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	for i, ft := range t.c.timers {
		if ft == t {
			t.c.timers = append(t.c.timers[:i], t.c.timers[i+1:]...)
			return true
		}
	}
	return false
}
