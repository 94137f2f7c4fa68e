package ca

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
)

// MinRSAKeyBits is the smallest RSA key the CA signs.
const MinRSAKeyBits = 2048

// GenerateKeyAndCSR makes a new ECDSA P-256 node key and a CSR for it. The
// key never leaves the node; the CSR carries no names, since the CA sets them.
func GenerateKeyAndCSR() (keyPEM, csrPEM []byte, err error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate node key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, priv)
	if err != nil {
		return nil, nil, fmt.Errorf("create certificate request: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		return nil, nil, fmt.Errorf("encode node key: %w", err)
	}
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	csrPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	return keyPEM, csrPEM, nil
}

// ParseCSR decodes a PEM certificate request and checks what the CA requires
// of it: a valid self-signature and an ECDSA P-256/P-384 or RSA >= 2048-bit
// key. Errors wrap ErrInvalidCSR.
func ParseCSR(csrPEM []byte) (*x509.CertificateRequest, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil {
		return nil, fmt.Errorf("%w: no PEM block found", ErrInvalidCSR)
	}
	if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("%w: PEM block is %q, want \"CERTIFICATE REQUEST\"", ErrInvalidCSR, block.Type)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	switch pub := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() && pub.Curve != elliptic.P384() {
			return nil, fmt.Errorf("%w: ECDSA key on curve %s; the CA signs P-256 and P-384 keys only", ErrInvalidCSR, pub.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if bits := pub.N.BitLen(); bits < MinRSAKeyBits {
			return nil, fmt.Errorf("%w: RSA key of %d bits; the CA signs RSA keys of at least %d bits", ErrInvalidCSR, bits, MinRSAKeyBits)
		}
	case ed25519.PublicKey:
		return nil, fmt.Errorf("%w: Ed25519 keys are not accepted; use ECDSA P-256/P-384 or RSA >= %d bits", ErrInvalidCSR, MinRSAKeyBits)
	default:
		return nil, fmt.Errorf("%w: unsupported public key type %T; use ECDSA P-256/P-384 or RSA >= %d bits", ErrInvalidCSR, pub, MinRSAKeyBits)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature does not verify: %v", ErrInvalidCSR, err)
	}
	return csr, nil
}
