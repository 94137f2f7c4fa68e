package ca

import (
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"strings"
	"testing"
)

func TestJoinTokenFormat(t *testing.T) {
	rca := newRoot(t)
	tok, err := GenerateJoinToken(rca)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := ParseJoinToken(tok)
	if err != nil {
		t.Fatalf("ParseJoinToken(%q): %v", tok, err)
	}
	if parsed.Version != 1 || parsed.Digest != rca.Digest() || len(parsed.Secret) != secretLen {
		t.Fatalf("parsed %+v, want version 1, digest %s, %d-char secret", parsed, rca.Digest(), secretLen)
	}
	if !strings.HasPrefix(tok, "SWMTKN-1-"+rca.Digest()+"-") || len(tok) != len("SWMTKN-1-")+digestLen+1+secretLen {
		t.Fatalf("token %q does not have the fixed-width SWMTKN-1-<digest>-<secret> shape", tok)
	}
	if parsed.String() != tok {
		t.Fatalf("String() = %q, want %q", parsed.String(), tok)
	}
}

func TestParseJoinTokenRejectsMalformedTokens(t *testing.T) {
	digest := strings.Repeat("a", digestLen)
	secret := strings.Repeat("0", secretLen)
	cases := []struct {
		name, token, wantMsg string
	}{
		{"empty", "", "expected SWMTKN-1-<ca digest>-<secret>"},
		{"wrong prefix", "SWARM-1-" + digest + "-" + secret, "expected SWMTKN-1-<ca digest>-<secret>"},
		{"missing secret", "SWMTKN-1-" + digest, "expected SWMTKN-1-<ca digest>-<secret>"},
		{"extra part", "SWMTKN-1-" + digest + "-" + secret + "-x", "expected SWMTKN-1-<ca digest>-<secret>"},
		{"version 2", "SWMTKN-2-" + digest + "-" + secret, `version "2" is not supported`},
		{"short digest", "SWMTKN-1-" + digest[1:] + "-" + secret, "the CA digest must be 50"},
		{"upper-case digest", "SWMTKN-1-" + strings.ToUpper(digest) + "-" + secret, "the CA digest must be 50"},
		{"short secret", "SWMTKN-1-" + digest + "-" + secret[1:], "the secret must be 25"},
		{"secret not base 36", "SWMTKN-1-" + digest + "-" + secret[1:] + "_", "the secret must be 25"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseJoinToken(tc.token)
			if !errors.Is(err, ErrMalformedJoinToken) {
				t.Fatalf("ParseJoinToken(%q) = %v, want ErrMalformedJoinToken", tc.token, err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("error %q does not say %q", err, tc.wantMsg)
			}
			if !strings.HasPrefix(err.Error(), "malformed join token: expected SWMTKN-1-<ca digest>-<secret>") {
				t.Fatalf("error %q does not start with the expected format", err)
			}
		})
	}
	if _, err := ParseJoinToken("  SWMTKN-1-" + digest + "-" + secret + "\n"); err != nil {
		t.Fatalf("a pasted token with surrounding white space: %v", err)
	}
}

func TestJoinTokenPinsTheRootCA(t *testing.T) {
	ours, theirs := newRoot(t), newRoot(t)
	tok, err := GenerateJoinToken(ours)
	if err != nil {
		t.Fatal(err)
	}
	jt, err := ParseJoinToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	// The digest is over DER: re-wrapping the PEM does not change it.
	rewrapped := append([]byte("# root of the cluster\n"), ours.Cert...)
	cases := []struct {
		name    string
		certPEM []byte
		wantErr error
	}{
		{"our root", ours.Cert, nil},
		{"our root, rewrapped", rewrapped, nil},
		{"another cluster's root", theirs.Cert, ErrRootCAMismatch},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := jt.VerifyRootCA(tc.certPEM)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("VerifyRootCA = %v, want %v", err, tc.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), "the join token does not match this cluster") {
				t.Fatalf("error %q does not tell the operator the token is for another cluster", err)
			}
		})
	}
	if err := jt.VerifyRootCA([]byte("not a certificate")); err == nil || errors.Is(err, ErrRootCAMismatch) {
		t.Fatalf("VerifyRootCA(garbage) = %v, want a parse error", err)
	}
}

func TestRotatedJoinTokenNoLongerMatches(t *testing.T) {
	rca := newRoot(t)
	old, err := GenerateJoinToken(rca)
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := GenerateJoinToken(rca)
	if err != nil {
		t.Fatal(err)
	}
	po, _ := ParseJoinToken(old)
	pr, _ := ParseJoinToken(rotated)
	if po.Digest != pr.Digest || po.Secret == pr.Secret {
		t.Fatalf("rotation should keep the digest and change the secret: %+v vs %+v", po, pr)
	}
	cases := []struct {
		name          string
		given, stored string
		want          bool
	}{
		{"current token", rotated, rotated, true},
		{"rotated-out token", old, rotated, false},
		{"prefix of the token", rotated[:len(rotated)-1], rotated, false},
		{"token with extra byte", rotated + "0", rotated, false},
		{"empty given", "", rotated, false},
		{"nothing stored", "", "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := MatchToken(tc.given, tc.stored); got != tc.want {
				t.Fatalf("MatchToken = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestMatchTokenComparesInConstantTime guards against someone "simplifying"
// MatchToken to ==, which leaks how much of a secret was guessed right.
func TestMatchTokenComparesInConstantTime(t *testing.T) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "token.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var fn *ast.FuncDecl
	for _, d := range f.Decls {
		if fd, ok := d.(*ast.FuncDecl); ok && fd.Name.Name == "MatchToken" {
			fn = fd
		}
	}
	if fn == nil {
		t.Fatal("MatchToken not found in token.go")
	}
	usesSubtle := false
	ast.Inspect(fn.Body, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.SelectorExpr:
			if x, ok := n.X.(*ast.Ident); ok && x.Name == "subtle" && n.Sel.Name == "ConstantTimeCompare" {
				usesSubtle = true
			}
		case *ast.BinaryExpr:
			if n.Op == token.EQL || n.Op == token.NEQ {
				if isIdent(n.X, "given") || isIdent(n.Y, "given") {
					t.Errorf("MatchToken compares the given token with %s at %s", n.Op, fset.Position(n.Pos()))
				}
			}
		}
		return true
	})
	if !usesSubtle {
		t.Fatal("MatchToken does not call subtle.ConstantTimeCompare")
	}
}

func isIdent(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}
