// Package identity makes the random IDs of stored objects.
package identity

import (
	"crypto/rand"
	"math/big"
)

// IDLength is the length of an object ID: 25 base-36 characters carry 128 bits.
const IDLength = 25

var maxID = new(big.Int).Lsh(big.NewInt(1), 128)

// NewID returns a random 128-bit ID in lower-case base 36, padded to IDLength.
// Base 36 keeps IDs free of characters that look alike in names and prefixes.
func NewID() string {
	n, err := rand.Int(rand.Reader, maxID)
	if err != nil {
		panic("identity: no randomness: " + err.Error())
	}
	s := n.Text(36)
	for len(s) < IDLength {
		s = "0" + s
	}
	return s
}
