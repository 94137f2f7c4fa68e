// Package ca holds the cluster's public-key infrastructure: the root CA, node
// certificates, join tokens, the TLS credentials every node uses, the role
// authorization of gRPC calls, certificate renewal timing, on-disk storage of
// keys and certificates, and a client for an external CA speaking the cfssl API.
//
// It is a library: it keeps no cluster state and serves no RPCs. The CA server
// (manager/) and the node bootstrap (node/) are built on top of it.
//
// # Identity
//
// A node's identity is its certificate, signed by the cluster's root CA:
//
//	CN = node ID
//	OU = "swarm-manager" or "swarm-worker" (the role)
//	O  = cluster ID
//	SANs: DNS "swarm-manager" or "swarm-worker", DNS <node ID>
//
// The CA, never the CSR, sets all of these: a node asks for a certificate with
// a CSR that only carries its public key, and the role comes from the join
// token it presented (or, on renewal, from the cluster's record of the node).
// Every certificate is good for both TLS server and client authentication.
// Clients dial managers with the TLS server name "swarm-manager", so only
// manager certificates can serve the control plane.
//
// # Joining
//
// A join token is SWMTKN-1-<digest of the root CA certificate>-<secret>. A
// joining node that has no certificate and no root yet:
//
//  1. dials a manager with BootstrapClientTLSConfig(nil), which does not
//     verify the server, and fetches the root CA certificate;
//  2. checks that certificate with JoinToken.VerifyRootCA: the digest in the
//     token, obtained out of band from an operator, pins the root;
//  3. generates its key and CSR locally with GenerateKeyAndCSR;
//  4. dials again with BootstrapClientTLSConfig(&root), which verifies the
//     manager against the pinned root, and only on that connection sends the
//     CSR together with the token's secret.
//
// Step 1 trusts nothing it receives beyond what step 2 checks: a man in the
// middle can hand out a root, but not one whose digest matches the token, and
// the secret never travels on the unverified connection. This is simpler than
// pinning inside the TLS handshake and just as safe.
//
// # Renewal
//
// A node renews at a random point between 50% and 80% of its certificate's
// validity (RenewalDelay), and swaps the new certificate into its Credentials
// with Update: listeners and open connections keep running, new handshakes
// present the new certificate.
package ca
