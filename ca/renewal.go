package ca

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Renewal happens at a uniformly random point in this window of a
// certificate's validity, so that nodes joined together do not all renew at
// once.
const (
	RenewalWindowStart = 0.5
	RenewalWindowEnd   = 0.8
)

// RenewalDelay returns how long after now a certificate valid from notBefore
// to notAfter should be renewed: at a uniformly random point between 50% and
// 80% of its validity, or 0 if that point has passed. rnd returns a number in
// [0, 1); nil means math/rand/v2.Float64.
func RenewalDelay(notBefore, notAfter, now time.Time, rnd func() float64) time.Duration {
	if rnd == nil {
		rnd = rand.Float64
	}
	validity := notAfter.Sub(notBefore)
	if validity <= 0 {
		return 0
	}
	frac := RenewalWindowStart + (RenewalWindowEnd-RenewalWindowStart)*rnd()
	at := notBefore.Add(time.Duration(float64(validity) * frac))
	if d := at.Sub(now); d > 0 {
		return d
	}
	return 0
}

// ErrCertificateNotYetValid is wrapped by CheckNotExpired when the clock is
// before the certificate's NotBefore.
var ErrCertificateNotYetValid = errors.New("the certificate of this node is not valid yet")

// ExpiredError says a node's certificate expired, and what to do about it.
type ExpiredError struct {
	NotAfter time.Time
	// CertDir is where the node keeps its certificates (KeyStore.Dir).
	CertDir string
}

func (e *ExpiredError) Error() string {
	return fmt.Sprintf("the certificate of this node expired at %s while it was down: remove %s and rejoin with a join token (swarmd --join-addr <manager address> --join-token <token>)",
		e.NotAfter.UTC().Format(time.RFC3339), e.CertDir)
}

// CheckNotExpired returns an *ExpiredError if id's certificate has expired at
// now, and an error wrapping ErrCertificateNotYetValid if it is not valid
// yet. certDir is named in the error as the directory to remove.
func CheckNotExpired(id NodeIdentity, now time.Time, certDir string) error {
	if !now.Before(id.NotAfter) {
		return &ExpiredError{NotAfter: id.NotAfter, CertDir: certDir}
	}
	if now.Before(id.NotBefore) {
		return fmt.Errorf("%w: valid from %s, the clock says %s; check the clock of this node",
			ErrCertificateNotYetValid, id.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return nil
}
