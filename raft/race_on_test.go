//go:build race

package raft

// raceEnabled: the race detector checks every byte a big copy touches, which makes tests that
// move hundreds of MB several times slower; they use less data under it.
const raceEnabled = true
