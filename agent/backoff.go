package agent

import (
	"math/rand/v2"
	"time"
)

// Reconnect backoff. After a failed attempt n (0-based) the agent waits a
// uniformly random time in [0, min(maxBackoff, baseBackoff * 2^n)): "full
// jitter". When a manager restarts, its thousands of agents lose their
// sessions in the same instant; full jitter spreads their reconnects over
// the whole window instead of bunching them at its edges, and the window
// doubles as long as attempts keep failing. The count goes back to zero after
// a session that lasted backoffResetAfter, so a healthy node that loses its
// manager once retries quickly.
const (
	baseBackoff       = 100 * time.Millisecond
	maxBackoff        = 8 * time.Second
	backoffResetAfter = 30 * time.Second
)

// backoff is the wait before reconnecting after failed attempt n.
func backoff(attempt int, rnd *rand.Rand) time.Duration {
	window := maxBackoff
	if attempt >= 0 && attempt < 16 { // baseBackoff<<16 is far over maxBackoff
		window = min(maxBackoff, baseBackoff<<attempt)
	}
	return time.Duration(rnd.Float64() * float64(window))
}

// Heartbeats. The dispatcher answers each heartbeat with the period until the
// next is due. The agent waits a uniformly random fraction in [0.75, 1.0) of
// it: never late (the dispatcher marks a node DOWN after 3 missed periods,
// so up to 25% early costs little), and agents whose sessions started
// together (after a manager restart) drift apart instead of heartbeating in
// lock step. Until the first answer the period is DefaultHeartbeatPeriod;
// the first heartbeat of a session is sent as soon as the session is open,
// which confirms it and learns the period.
const (
	DefaultHeartbeatPeriod = 5 * time.Second
	heartbeatJitterMin     = 0.75
)

// heartbeatWait is the wait before the next heartbeat for period.
func heartbeatWait(period time.Duration, rnd *rand.Rand) time.Duration {
	f := heartbeatJitterMin + (1-heartbeatJitterMin)*rnd.Float64()
	return time.Duration(f * float64(period))
}
