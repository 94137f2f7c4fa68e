// Package clock is the time source of the components whose logic is timing
// (heartbeats, restart delays, batching windows), real or fake in tests.
package clock

import (
	"sort"
	"sync"
	"time"
)

// Clock tells the time and arms timers. Deadlines are absolute
// (TimerAt), so a loop that reads Now and then arms a timer cannot miss a
// deadline because time moved in between; with a fake clock that matters.
type Clock interface {
	Now() time.Time
	// NewTimer returns a timer that fires once d has passed.
	NewTimer(d time.Duration) Timer
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

// Real is the wall clock (with Go's monotonic readings).
func Real() Clock { return realClock{} }

type realClock struct{}

func (realClock) Now() time.Time                 { return time.Now() }
func (realClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }
func (realClock) TimerAt(t time.Time) Timer      { return realTimer{time.NewTimer(time.Until(t))} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.t.C }
func (t realTimer) Stop() bool          { return t.t.Stop() }

// Fake is a Clock for tests: time stands still until Advance or Set
// moves it, and timers fire (in deadline order) when it passes their deadline.
// It is safe for concurrent use.
type Fake struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

// NewFake returns a fake clock that reads start.
func NewFake(start time.Time) *Fake { return &Fake{now: start} }

// Now returns the fake time.
func (c *Fake) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d and fires the timers that are due.
func (c *Fake) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setLocked(c.now.Add(d))
}

// Set moves the clock to t (never backwards) and fires the timers that are due.
func (c *Fake) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.now) {
		c.setLocked(t)
	}
}

func (c *Fake) setLocked(t time.Time) {
	c.now = t
	sort.SliceStable(c.timers, func(i, j int) bool { return c.timers[i].at.Before(c.timers[j].at) })
	keep := c.timers[:0]
	for _, ft := range c.timers {
		if ft.at.After(t) {
			keep = append(keep, ft)
			continue
		}
		ft.fire(ft.at)
	}
	clear(c.timers[len(keep):])
	c.timers = keep
}

// Timers is the number of timers waiting to fire.
func (c *Fake) Timers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// NewTimer returns a timer that fires when the clock has advanced by d.
func (c *Fake) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.timerAtLocked(c.now.Add(d))
}

// TimerAt returns a timer that fires when the clock reaches t.
func (c *Fake) TimerAt(t time.Time) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.timerAtLocked(t)
}

func (c *Fake) timerAtLocked(t time.Time) *fakeTimer {
	ft := &fakeTimer{c: c, at: t, ch: make(chan time.Time, 1)}
	if !t.After(c.now) {
		ft.fire(c.now)
		return ft
	}
	c.timers = append(c.timers, ft)
	return ft
}

type fakeTimer struct {
	c  *Fake
	at time.Time
	ch chan time.Time
}

// fire never blocks: the channel has room for the one value it ever gets.
func (t *fakeTimer) fire(now time.Time) { t.ch <- now }

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
