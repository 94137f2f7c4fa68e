package ca

import (
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
)

const (
	// JoinTokenPrefix starts every join token.
	JoinTokenPrefix = "SWMTKN"
	// JoinTokenVersion is the only token format this package reads and writes.
	JoinTokenVersion = 1

	digestLen = 50 // base-36 digits of a SHA-256
	secretLen = 25 // base-36 digits of 128 bits
)

// ErrMalformedJoinToken is wrapped by every error of ParseJoinToken.
var ErrMalformedJoinToken = errors.New("malformed join token: expected SWMTKN-1-<ca digest>-<secret>")

// ErrRootCAMismatch is wrapped by JoinToken.VerifyRootCA when the root CA a
// node was handed is not the one its token names.
var ErrRootCAMismatch = errors.New("the join token does not match this cluster: the root CA digest differs; get a current token with `swarmctl cluster join-token worker`")

// JoinToken is a parsed join token SWMTKN-<Version>-<Digest>-<Secret>.
type JoinToken struct {
	Version int
	// Digest is RootCA.Digest of the cluster's root CA.
	Digest string
	// Secret is 128 random bits in base 36, 25 characters.
	Secret string
}

// String renders the token.
func (t JoinToken) String() string {
	return fmt.Sprintf("%s-%d-%s-%s", JoinTokenPrefix, t.Version, t.Digest, t.Secret)
}

// GenerateJoinToken makes a new token for rca with a fresh random secret.
// Rotating a token means generating a new one: same digest, new secret.
func GenerateJoinToken(rca RootCA) (string, error) {
	if rca.digest == "" {
		return "", errors.New("generate join token: root CA has no certificate")
	}
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		return "", fmt.Errorf("generate join token: %w", err)
	}
	return JoinToken{Version: JoinTokenVersion, Digest: rca.digest, Secret: base36(secret, secretLen)}.String(), nil
}

// ParseJoinToken checks a token's shape. It does not say whether the secret
// is current: that is MatchToken against the cluster's stored tokens. Errors
// wrap ErrMalformedJoinToken and never quote the secret.
func ParseJoinToken(token string) (JoinToken, error) {
	parts := strings.Split(strings.TrimSpace(token), "-")
	if len(parts) != 4 || parts[0] != JoinTokenPrefix {
		return JoinToken{}, ErrMalformedJoinToken
	}
	if parts[1] != "1" {
		return JoinToken{}, fmt.Errorf("%w: version %q is not supported, only 1", ErrMalformedJoinToken, parts[1])
	}
	if len(parts[2]) != digestLen || !isBase36(parts[2]) {
		return JoinToken{}, fmt.Errorf("%w: the CA digest must be %d lower-case base-36 characters", ErrMalformedJoinToken, digestLen)
	}
	if len(parts[3]) != secretLen || !isBase36(parts[3]) {
		return JoinToken{}, fmt.Errorf("%w: the secret must be %d lower-case base-36 characters", ErrMalformedJoinToken, secretLen)
	}
	return JoinToken{Version: JoinTokenVersion, Digest: parts[2], Secret: parts[3]}, nil
}

// VerifyRootCA checks that certPEM is the root CA this token was made for.
// The error wraps ErrRootCAMismatch.
func (t JoinToken) VerifyRootCA(certPEM []byte) error {
	cert, err := parseOneCertPEM(certPEM)
	if err != nil {
		return fmt.Errorf("verify root CA against join token: %w", err)
	}
	if digestDER(cert.Raw) != t.Digest {
		return ErrRootCAMismatch
	}
	return nil
}

// MatchToken reports whether given equals stored, in time that does not
// depend on where they differ. An empty stored token matches nothing.
func MatchToken(given, stored string) bool {
	if stored == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(given), []byte(stored)) == 1
}

func isBase36(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'z') {
			return false
		}
	}
	return true
}
