package ca

import (
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
)

func TestRenewalDelayFallsIn50To80PercentOfValidity(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	notBefore := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	edges := []float64{0, 0.5, 0.9999999999}
	for i := 0; i < 10000; i++ {
		validity := time.Duration(1 + rng.Int64N(int64(365*24*time.Hour)))
		notAfter := notBefore.Add(validity)
		// now anywhere from before issuance to past the end of the window.
		now := notBefore.Add(time.Duration(rng.Float64()*1.2*float64(validity)) - validity/10)
		r := rng.Float64
		if i < len(edges) {
			e := edges[i]
			r = func() float64 { return e }
		}
		d := RenewalDelay(notBefore, notAfter, now, r)
		if d < 0 {
			t.Fatalf("negative delay %s", d)
		}
		lo := notBefore.Add(time.Duration(0.5 * float64(validity)))
		hi := notBefore.Add(time.Duration(0.8 * float64(validity)))
		at := now.Add(d)
		if d == 0 {
			if now.Before(lo) {
				t.Fatalf("delay 0 at %s though the window opens at %s", now, lo)
			}
			continue
		}
		if at.Before(lo) || at.After(hi) {
			t.Fatalf("validity %s, now %s: renewal at %s is outside [%s, %s]", validity, now, at, lo, hi)
		}
	}
}

func TestRenewalDelayIsSpreadOverTheWindow(t *testing.T) {
	notBefore := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	validity := 90 * 24 * time.Hour
	notAfter := notBefore.Add(validity)
	rng := rand.New(rand.NewPCG(3, 4))
	var buckets [3]int
	for i := 0; i < 3000; i++ {
		d := RenewalDelay(notBefore, notAfter, notBefore, rng.Float64)
		frac := (float64(d)/float64(validity) - 0.5) / 0.3
		buckets[min(int(frac*3), 2)]++
	}
	for i, n := range buckets {
		if n < 800 || n > 1200 {
			t.Fatalf("bucket %d of the window got %d of 3000 renewals: %v", i, n, buckets)
		}
	}
	if d := RenewalDelay(notBefore, notAfter, notAfter.Add(time.Hour), nil); d != 0 {
		t.Fatalf("expired certificate: delay %s, want 0", d)
	}
	if d := RenewalDelay(notAfter, notBefore, notBefore, nil); d != 0 {
		t.Fatalf("inverted validity: delay %s, want 0", d)
	}
}

func TestExpiredCertificateIsDetected(t *testing.T) {
	rca := newRoot(t)
	_, csr, err := GenerateKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	certPEM, err := rca.issue(csr, "node1", api.NodeRoleWorker, "c1", now.Add(-48*time.Hour), now.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	id, err := ParseNodeCertificate(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	err = CheckNotExpired(id, now, "/var/lib/swarmd/certificates")
	var expired *ExpiredError
	if !errors.As(err, &expired) {
		t.Fatalf("CheckNotExpired = %v, want *ExpiredError", err)
	}
	for _, want := range []string{"expired at " + id.NotAfter.UTC().Format(time.RFC3339), "remove /var/lib/swarmd/certificates", "--join-token"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not say %q", err, want)
		}
	}

	fresh := NodeIdentity{NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour)}
	cases := []struct {
		name    string
		now     time.Time
		wantErr error
	}{
		{"valid", now, nil},
		{"clock behind", now.Add(-time.Hour), ErrCertificateNotYetValid},
	}
	for _, tc := range cases {
		if err := CheckNotExpired(fresh, tc.now, "/d"); !errors.Is(err, tc.wantErr) {
			t.Fatalf("%s: CheckNotExpired = %v, want %v", tc.name, err, tc.wantErr)
		}
	}
	if err := CheckNotExpired(fresh, fresh.NotAfter, "/d"); !errors.As(err, &expired) {
		t.Fatalf("at NotAfter: %v, want expired", err)
	}
}
